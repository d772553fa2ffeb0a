"""The pg_dump completeness check on archives a real pg_dump -Fc -Z0 writes, shaped to hit the
places where its fast path (find a table block's end, a run of five zero bytes, instead of
walking every row) could be fooled: a first row of exactly 256 bytes (its chunk header's zeros
follow the block header's, a run as long as a block end if the search started too early), a
16 MiB row (a chunk header with four zeros in a row) in the middle of a block, an empty table,
control characters and bytea full of zero bytes (hex in COPY text), and a large object whose
bytes are mostly zeros (a binary block, walked chunk by chunk).

Every block end is located by bisection (the shortest prefix after which the check counts
k blocks), and every cut near a block's start or end must be judged incomplete."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from drtool.scratch.postgres import ScratchPostgres
from drtool.sources.pg_archive import CustomArchiveCheck, StreamIncomplete
from tests.support.postgres import pg_server

pytestmark = pytest.mark.integration

BIG_ROW = 1 << 24                       # a COPY line of 16 MiB: chunk header 00 00 00 00 01

SCHEMA_SQL = """
CREATE TABLE first256 (id int, v text);
INSERT INTO first256 VALUES (1, repeat('a', 253));          -- '1' TAB 253 x a LF = 256 bytes
INSERT INTO first256 SELECT g, 'row ' || g FROM generate_series(2, 300) g;
CREATE TABLE empty (x int);
CREATE TABLE odd (id int, b bytea, t text);
INSERT INTO odd SELECT g, decode(repeat('00', 300), 'hex'), chr(1) || chr(2) || chr(127) || g
FROM generate_series(1, 200) g;
SELECT lo_from_bytea(0, decode(repeat('00', 70000) || 'ff', 'hex'));
"""
BIG_SQL = f"""
CREATE TABLE big (id int, v text);
INSERT INTO big VALUES (1, 'small first row');
INSERT INTO big VALUES (2, repeat('b', {BIG_ROW} - 3));     -- '2' TAB ... LF = 16 MiB
INSERT INTO big VALUES (3, 'after the big one');
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[ScratchPostgres]:
    yield from pg_server()


@pytest.fixture(scope="module")
def archive(pg: ScratchPostgres) -> bytes:
    pg.sql("CREATE DATABASE shapes")
    pg.sql(SCHEMA_SQL, database="shapes")
    return _dump(pg, "shapes")


@pytest.fixture(scope="module")
def big_archive(pg: ScratchPostgres) -> bytes:
    pg.sql("CREATE DATABASE bigrow")
    pg.sql(BIG_SQL, database="bigrow")
    return _dump(pg, "bigrow")


def _dump(pg: ScratchPostgres, database: str) -> bytes:
    assert pg.bin_dir is not None and pg.port is not None
    argv = [str(Path(pg.bin_dir) / "pg_dump"), "-Fc", "-Z0", "-h", "127.0.0.1", "-p", str(pg.port),
            "-U", "postgres", f"--dbname={database}"]
    env = {"PGPASSWORD": pg.password.reveal()} if pg.password else None
    return subprocess.run(argv, check=True, capture_output=True, env=env).stdout


def _check(data: bytes, piece: int = 1 << 20, seed: int | None = None) -> CustomArchiveCheck:
    check = CustomArchiveCheck("shapes")
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.randint(1, piece) if seed is not None else piece
        check.feed(data[pos:pos + n])
        pos += n
    return check


def _complete(data: bytes, **kw: int) -> bool:
    try:
        _check(data, **kw).finish()
        return True
    except StreamIncomplete:
        return False


def _block_ends(data: bytes, blocks: int) -> list[int]:
    """Offset just after each data block: the shortest prefix after which `blocks` reaches k."""
    ends = []
    for k in range(1, blocks + 1):
        lo, hi = ends[-1] if ends else 0, len(data)
        while lo < hi:
            mid = (lo + hi) // 2
            if _check(data[:mid]).blocks >= k:
                hi = mid
            else:
                lo = mid + 1
        ends.append(lo)
    return ends


def test_the_whole_archive_passes_in_any_pieces(archive: bytes) -> None:
    for piece, seed in [(1 << 20, None), (65536, None), (5, None), (4093, 1), (97, 2)]:
        check = _check(archive, piece=piece, seed=seed)
        check.finish()
        # first256, odd, empty (its block is only the end mark) and the large objects
        assert check.blocks == 4, (piece, seed)


def test_every_cut_near_a_block_start_or_end_is_incomplete(archive: bytes) -> None:
    ends = _block_ends(archive, 4)
    assert ends[-1] == len(archive)             # a piped archive ends with its last block
    starts = [_data_start(archive), *ends[:-1]]
    cuts: set[int] = set()
    for end in ends:
        cuts.update(range(max(end - 300, 0), end))
    for start in starts:
        cuts.update(range(start - 50 if start == starts[0] else start + 1, min(start + 600, len(archive))))
    cuts.update(random.Random(7).sample(range(len(archive)), 200))
    cuts -= set(ends[:-1])                      # a cut exactly between blocks: the missing ones say so
    undetected = [cut for cut in sorted(cuts) if _complete(archive[:cut])]
    assert undetected == []
    between = [end for end in ends[:-1] if _complete(archive[:end])]
    assert between == []                        # ...and they do


def test_cuts_fed_in_small_pieces_are_incomplete(archive: bytes) -> None:
    ends = _block_ends(archive, 4)
    rng = random.Random(11)
    cuts = [*rng.sample(range(len(archive)), 40), *(end - 1 for end in ends), *(end - 5 for end in ends)]
    assert [cut for cut in cuts if _complete(archive[:cut], piece=4093, seed=cut)] == []


def test_a_cut_inside_the_16_mib_row_or_at_its_header_is_incomplete(big_archive: bytes) -> None:
    archive = big_archive
    _check(archive).finish()
    header = archive.find(b"\x00\x00\x00\x00\x01" + b"2\tbbbb")   # sign byte + 2^24 little-endian
    assert header > 0
    for cut in [*range(header - 3, header + 12), header + BIG_ROW // 2, header + 5 + BIG_ROW - 1]:
        assert not _complete(archive[:cut]), cut


def _data_start(archive: bytes) -> int:
    """Where the first data block starts: the shortest prefix whose check is past the TOC."""
    lo, hi = 0, len(archive)
    while lo < hi:
        mid = (lo + hi) // 2
        if _check(archive[:mid])._stage == "data":    # noqa: SLF001 - the test locates the section
            hi = mid
        else:
            lo = mid + 1
    return lo
