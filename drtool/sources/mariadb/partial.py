"""Restore some tables of a MariaDB dump: keep only their sections of the mariadb-dump stream.

mariadb-dump writes each table as two sections, each opened by a comment line:
`-- Table structure for table `T`` (DROP/CREATE TABLE) and `-- Dumping data for table `T``
(LOCK TABLES, INSERTs, UNLOCK TABLES, then the table's triggers). The preamble before the
first section sets the session up (character set, time zone, FOREIGN_KEY_CHECKS=0) and is
kept; every other section (other tables, views, routines, events) is dropped. A foreign key
to a table not restored is created anyway (checks are off while loading), as mariadb-dump's
own output allows. Views, routines and events are not part of a table restore.

Only the first piece of each line is looked at: INSERT lines can be as long as a row, so
the stream is read in bounded pieces and a line's later pieces follow its first one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import IO

from drtool.sources.mariadb.commands import quote_ident

_HEADER = re.compile(rb"-- (Table structure for table|Dumping data for table|Temporary table structure for view|"
                     rb"Final view structure for view|Dumping events for database|Dumping routines for database) "
                     rb"(.*)")
_TABLE_SECTIONS = (b"Table structure for table", b"Dumping data for table")
PIECE = 1 << 16


class SectionFilter:
    """Decides, line by line, what of a mariadb-dump stream restores only `tables`."""

    def __init__(self, tables: Iterable[str]) -> None:
        self.wanted = {quote_ident(t).encode(): t for t in tables}
        self.found: set[str] = set()
        self._state = "preamble"

    def keep(self, first_piece: bytes) -> bool:
        match = _HEADER.fullmatch(first_piece.rstrip(b"\r\n"))
        if match is not None:
            kind, name = match.groups()
            if kind in _TABLE_SECTIONS and name in self.wanted:
                self._state = "keep"
                self.found.add(self.wanted[name])
            else:
                self._state = "drop"
        return self._state != "drop"


def relay_sections(src: IO[bytes], dst: IO[bytes], section_filter: SectionFilter) -> int:
    """Copy the kept lines of `src` into `dst`; returns the bytes read from `src`."""
    read = 0
    at_line_start, keeping = True, True
    while piece := src.readline(PIECE):
        read += len(piece)
        if at_line_start:
            keeping = section_filter.keep(piece)
        if keeping:
            dst.write(piece)
        at_line_start = piece.endswith(b"\n")
    return read
