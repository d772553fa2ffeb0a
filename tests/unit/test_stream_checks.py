"""Completeness checks of dump streams, on real tool output (tests/unit/data, written by
pg_dump 15 / pg_dumpall 15 / mariadb-dump 10.11 / SQLite): the whole stream passes, fed in
any chunk sizes, and every truncation of it is detected.

The fixtures: `siak-pg15-z0.pgdump` is `pg_dump -Fc -Z0` (what drtool runs) of a database
with tables, an empty table, a sequence, a view, an index, a comment and two large
objects (one empty); `-z6` is the same with pg_dump's default compression."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from drtool.sources.pg_archive import CustomArchiveCheck, StreamIncomplete
from drtool.sources.stream_checks import (
    MARIADB_TRAILER,
    PG_DUMPALL_TRAILER,
    SqliteCopyCheck,
    TrailerCheck,
)

DATA = Path(__file__).parent / "data"
ARCHIVES = ["siak-pg15-z0.pgdump", "siak-pg15-z6.pgdump"]


def _feed(check, data: bytes, sizes: int | None = None, seed: int = 0):  # noqa: ANN001, ANN202
    if sizes is None:
        check.feed(data)
        return check
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.randint(1, sizes)
        check.feed(data[pos:pos + n])
        pos += n
    return check


def _complete(check) -> bool:  # noqa: ANN001
    try:
        check.finish()
        return True
    except StreamIncomplete:
        return False


@pytest.mark.parametrize("name", ARCHIVES)
@pytest.mark.parametrize("sizes", [None, 1, 7, 4096, 1 << 20])
def test_whole_pg_archive_passes_in_any_chunking(name: str, sizes: int | None) -> None:
    data = (DATA / name).read_bytes()
    check = _feed(CustomArchiveCheck(), data, sizes)
    check.finish()
    assert check.version == (1, 14, 0) and check.skipped is None
    # `pg_restore --list` of the fixture: 19 entries, data for TABLE DATA bulk, kosong, penduduk and BLOBS.
    assert check.toc_entries == 19 and check.blocks == 4


@pytest.mark.parametrize("name", ARCHIVES)
def test_truncations_of_a_pg_archive_are_detected(name: str) -> None:
    """Every offset in the header, the TOC and the first data blocks and in the last 3 KB;
    every 5th in between (each cut is parsed from the start: quadratic, so not all of them)."""
    data = (DATA / name).read_bytes()
    n = len(data)
    cuts = [*range(0, 6000), *range(6000, n - 3000, 5), *range(n - 3000, n)]
    undetected = [cut for cut in cuts if _complete(_feed(CustomArchiveCheck(), data[:cut]))]
    assert undetected == []


@pytest.mark.parametrize("name", ARCHIVES)
def test_truncations_fed_in_pieces_are_detected(name: str) -> None:
    data = (DATA / name).read_bytes()
    rng = random.Random(5)
    for cut in rng.sample(range(len(data)), 300):
        assert not _complete(_feed(CustomArchiveCheck(), data[:cut], sizes=97, seed=cut)), cut


def test_pg_archive_errors_say_where_it_ended() -> None:
    data = (DATA / "siak-pg15-z0.pgdump").read_bytes()
    messages = {}
    for cut in (0, 3, 200, len(data) - 3):
        check = _feed(CustomArchiveCheck("pg_dump of siak"), data[:cut])
        with pytest.raises(StreamIncomplete) as info:
            check.finish()
        messages[cut] = info.value.message
    assert "empty" in messages[0]
    assert "inside its header" in messages[3]
    assert "table of contents" in messages[200]
    assert "inside a data block" in messages[len(data) - 3] and messages[len(data) - 3].startswith("pg_dump of siak")


def test_pg_archive_with_bytes_after_its_end_or_a_foreign_file_fails() -> None:
    data = (DATA / "siak-pg15-z0.pgdump").read_bytes()
    assert not _complete(_feed(CustomArchiveCheck(), data + b"\x07junk"))
    assert not _complete(_feed(CustomArchiveCheck(), (DATA / "globals-pg15.sql").read_bytes()))


def test_unknown_archive_version_is_not_judged() -> None:
    data = bytearray((DATA / "siak-pg15-z0.pgdump").read_bytes())
    data[6] = 99                                               # version 1.99: a future pg_dump
    check = _feed(CustomArchiveCheck(), bytes(data[:1000]))
    check.finish()                                             # never vetoes what it cannot read
    assert check.skipped == "archive version 1.99 is not known to this check"


# ------------------------------------------------------------------ text trailers

@pytest.mark.parametrize("name, marker", [("siak-mariadb.sql", MARIADB_TRAILER),
                                          ("globals-pg15.sql", PG_DUMPALL_TRAILER)])
def test_text_dump_trailer(name: str, marker: bytes) -> None:
    data = (DATA / name).read_bytes()
    for sizes in (None, 1, 13):
        _feed(TrailerCheck(name, marker), data, sizes).finish()
    undetected = [cut for cut in range(len(data)) if _complete(_feed(TrailerCheck(name, marker), data[:cut]))]
    # Only a cut after the marker itself passes: what is missing then is the rest of the comment
    # line ("on DATE") and the blank/"--" lines; every statement of the dump arrived.
    assert undetected == list(range(data.rindex(marker) + len(marker), len(data)))


def test_trailer_check_messages() -> None:
    with pytest.raises(StreamIncomplete, match="empty"):
        TrailerCheck("mariadb-dump of siak", MARIADB_TRAILER).finish()
    check = _feed(TrailerCheck("mariadb-dump of siak", MARIADB_TRAILER), b"-- MariaDB dump\nINSERT INTO t VALUES (1);\n")
    with pytest.raises(StreamIncomplete, match="does not end with its completion line '-- Dump completed'"):
        check.finish()


# ------------------------------------------------------------------ SQLite copies

@pytest.fixture()
def sqlite_file(tmp_path: Path) -> bytes:
    path = tmp_path / "queue.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table q (id integer primary key, body text)")
        db.executemany("insert into q (body) values (?)", [("x" * 300,)] * 200)
    db.close()
    return path.read_bytes()


def test_whole_sqlite_copy_passes(sqlite_file: bytes) -> None:
    for sizes in (None, 1, 50, 4096):
        _feed(SqliteCopyCheck("copy", len(sqlite_file)), sqlite_file, sizes).finish()
        _feed(SqliteCopyCheck("copy"), sqlite_file, sizes).finish()     # header alone


def test_every_truncation_of_an_sqlite_copy_is_detected(sqlite_file: bytes) -> None:
    cuts = list(range(0, 200)) + list(range(200, len(sqlite_file), 61))
    assert [c for c in cuts if _complete(_feed(SqliteCopyCheck("copy"), sqlite_file[:c]))] == []
    assert [c for c in cuts if _complete(_feed(SqliteCopyCheck("copy", len(sqlite_file)), sqlite_file[:c]))] == []


def test_sqlite_copy_of_other_size_or_kind_fails(sqlite_file: bytes) -> None:
    with pytest.raises(StreamIncomplete, match="the copy had"):
        _feed(SqliteCopyCheck("copy", len(sqlite_file) + 4096), sqlite_file).finish()
    with pytest.raises(StreamIncomplete, match="not an SQLite database"):
        _feed(SqliteCopyCheck("copy"), b"PGDMP" + bytes(200)).finish()
