"""Cheap completeness checks for dump streams, fed every byte as it passes (pure, no I/O).

    DumpStream(..., check=partial(TrailerCheck, "mariadb-dump of siak", MARIADB_TRAILER))

A dump that exits 0 but is short (a wrapper that swallowed the failure, a cut SSH
session, `dump | head`) must not become a snapshot. What each format offers:

- mariadb-dump / mysqldump write `-- Dump completed on DATE` as their last line
  (comments are on by default; drtool never turns them off);
- pg_dumpall ends with `-- PostgreSQL database cluster dump complete`;
- an SQLite database file says in its header how many pages of what size it has:
  the copy is complete when exactly that many bytes arrived (and as many as the
  snapshot step reported, when it did);
- a pg_dump custom-format archive: drtool/sources/pg_archive.py reads it to its end.

Each check's `finish()` raises StreamIncomplete, which the commit gate turns into a
refused stream ("the dump exited 0 but is not complete").
"""

from __future__ import annotations

from drtool.sources.pg_archive import StreamIncomplete

__all__ = ["MARIADB_TRAILER", "PG_DUMPALL_TRAILER", "SqliteCopyCheck", "StreamIncomplete", "TrailerCheck"]

MARIADB_TRAILER = b"-- Dump completed"
PG_DUMPALL_TRAILER = b"-- PostgreSQL database cluster dump complete"
TAIL_BYTES = 4096
TRAILER_WINDOW = 256                 # the marker must sit at the very end (blank lines and "--" aside)
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER = 100


class TrailerCheck:
    """The stream must end with a line holding `marker` (trailing blank and `--` lines allowed)."""

    def __init__(self, what: str, marker: bytes) -> None:
        self.what = what
        self.marker = marker
        self.size = 0
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self._tail = (self._tail + bytes(data[-TAIL_BYTES:]))[-TAIL_BYTES:]

    def finish(self) -> None:
        end = self._tail.rstrip(b"\n\r\t -")
        if self.size == 0:
            raise StreamIncomplete(f"{self.what}: the dump is empty")
        if self.marker not in end[-TRAILER_WINDOW:]:
            raise StreamIncomplete(f"{self.what}: the dump does not end with its completion line "
                                   f"{self.marker.decode()!r} ({self.size} bytes read)",
                                   hint="the dump was cut short before its end")


class SqliteCopyCheck:
    """The stream is a whole SQLite database file: page size x page count bytes, and as many
    as the snapshot step reported (`expected_size`, when known)."""

    def __init__(self, what: str, expected_size: int | None = None) -> None:
        self.what = what
        self.expected_size = expected_size
        self.size = 0
        self._head = b""

    def feed(self, data: bytes) -> None:
        if len(self._head) < SQLITE_HEADER:
            self._head += bytes(data[:SQLITE_HEADER - len(self._head)])
        self.size += len(data)

    def header_size(self) -> int | None:
        """The database size the header declares, or None when the header does not say."""
        head = self._head
        if len(head) < SQLITE_HEADER or not head.startswith(SQLITE_MAGIC):
            return None
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        pages = int.from_bytes(head[28:32], "big")
        # The in-header page count is valid only when "version-valid-for" equals the change counter.
        if head[92:96] != head[24:28] or pages == 0:
            return None
        return page * pages

    def finish(self) -> None:
        if self.size == 0:
            raise StreamIncomplete(f"{self.what}: the copy is empty")
        if not self._head.startswith(SQLITE_MAGIC[:len(self._head)]) or len(self._head) < len(SQLITE_MAGIC):
            raise StreamIncomplete(f"{self.what}: the stream is not an SQLite database file")
        if len(self._head) < SQLITE_HEADER:
            raise StreamIncomplete(f"{self.what}: only {self.size} bytes arrived, less than an SQLite header")
        declared = self.header_size()
        for expected, source in ((declared, "its header declares"), (self.expected_size, "the copy had")):
            if expected is not None and self.size != expected:
                raise StreamIncomplete(f"{self.what}: {self.size} bytes arrived, {source} {expected}",
                                       hint="the copy was cut short (or changed) on its way")
