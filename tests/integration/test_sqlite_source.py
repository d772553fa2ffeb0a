"""SQLite source with real sqlite files, a real producer process and a concurrent writer."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from drtool.config.models import SqliteSource
from drtool.errors import RestoreRefused, SourceError
from drtool.execute import LocalRunner
from drtool.scratch.sqlite import ScratchSqlite
from drtool.sources.base import DbTarget, compare_fingerprints
from drtool.sources.sqlite import SqliteDatabase
from drtool.sources.sqlite_dump import DIR_PREFIX, table_counts
from tests.support.mariadb import FileStreamReader, save_streams

pytestmark = pytest.mark.integration


def make_db(path: Path, journal: str = "wal") -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.executescript("""
        CREATE TABLE penduduk (id INTEGER PRIMARY KEY, nama TEXT, foto BLOB);
        CREATE TABLE log (id INTEGER PRIMARY KEY, penduduk_id INTEGER);
        CREATE TRIGGER penduduk_ai AFTER INSERT ON penduduk BEGIN
          INSERT INTO log (penduduk_id) VALUES (NEW.id); END;
    """)
    conn.executemany("INSERT INTO penduduk (nama, foto) VALUES (?, ?)",
                     [("Palembang ñ 中文 🔥", bytes(range(256))), ("Budi", None)])
    conn.commit()
    conn.close()


def copy_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*")}


class Writer(threading.Thread):
    """Inserts rows in small transactions until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop, self.rows, self.error = path, threading.Event(), 0, None

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            while not self.stop.is_set():
                with conn:
                    conn.execute("INSERT INTO penduduk (nama, foto) VALUES (?, randomblob(200))", (f"w{self.rows}",))
                self.rows += 1
                time.sleep(0.001)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            conn.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_copy_under_concurrent_writer_is_consistent_and_restores(tmp_path: Path, journal: str) -> None:
    db = tmp_path / "app.sqlite"
    make_db(db, journal)
    before = copy_dirs()
    writer = Writer(db)
    writer.start()
    try:
        while writer.rows < 50:
            time.sleep(0.01)
        src = SqliteDatabase(SqliteSource(path=str(db)), LocalRunner())
        with src.open_dump() as session:
            assert [s.name for s in session.streams] == ["app.sqlite"]
            assert save_streams(session, tmp_path / "snap") == {"app.sqlite": 0}
            fingerprint = session.fingerprint
        rows_at_end = writer.rows
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None
    assert copy_dirs() == before                          # the temp copy is gone
    counts = fingerprint["databases"]["app.sqlite"]
    # The writer went on during the backup, and the trigger kept the tables in step.
    assert 2 < counts["penduduk"] == counts["log"] and rows_at_end > 50

    streamed = tmp_path / "snap" / "app.sqlite"
    assert sqlite3.connect(streamed).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert table_counts(streamed) == counts                # the fingerprint is the streamed copy

    with ScratchSqlite() as scratch:
        result = src.restore(FileStreamReader(tmp_path / "snap"), scratch.target())
        assert result.bytes == streamed.stat().st_size
        restored = src.fingerprint_target(scratch.target(), ["app.sqlite"])
        assert compare_fingerprints(fingerprint, restored) == []
        assert hashlib.sha256(scratch.path.read_bytes()).digest() == hashlib.sha256(streamed.read_bytes()).digest()
        assert src.query(scratch.target(), "SELECT nama FROM penduduk WHERE id = 1") == [["Palembang ñ 中文 🔥"]]
        home = scratch.home
    assert not home.exists()


def test_restore_refuses_non_empty_file_unless_forced(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    make_db(db)
    src = SqliteDatabase(SqliteSource(path=str(db)), LocalRunner())
    with src.open_dump() as session:
        save_streams(session, tmp_path / "snap")
    existing = tmp_path / "target" / "live.sqlite"
    existing.parent.mkdir()
    conn = sqlite3.connect(existing)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    before = existing.read_bytes()
    reader = FileStreamReader(tmp_path / "snap")
    target = DbTarget(kind="sqlite", path=existing)

    with pytest.raises(RestoreRefused, match="not empty"):
        src.restore(reader, target)
    assert existing.read_bytes() == before

    src.restore(reader, target, force=True)
    assert sorted(p.name for p in existing.parent.iterdir()) == ["live.sqlite"]   # no temp leftovers
    assert set(table_counts(existing)) == {"penduduk", "log"}


def test_damaged_or_cut_stream_leaves_target_untouched(tmp_path: Path) -> None:
    src = SqliteDatabase(SqliteSource(path=str(tmp_path / "app.sqlite")), LocalRunner())
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "app.sqlite").write_bytes(b"SQLite format 3\0" + b"\xff" * 5000)
    with ScratchSqlite() as scratch:
        with pytest.raises(SourceError, match="not a usable SQLite database|integrity"):
            src.restore(FileStreamReader(snap), scratch.target())
        assert list(scratch.home.iterdir()) == []

        class CutReader(FileStreamReader):
            # A producer that dies by SIGKILL half-way through its output.
            def open(self, name: str):
                code = ("import os, sys; sys.stdout.buffer.write(b'x' * 100000); sys.stdout.flush(); "
                        "os.kill(os.getpid(), 9)")
                return LocalRunner().start([sys.executable, "-c", code])

        with pytest.raises(SourceError, match="exit -9"):
            src.restore(CutReader(snap), scratch.target())
        assert list(scratch.home.iterdir()) == []


def test_missing_source_file_is_a_source_error_and_leaves_no_copy(tmp_path: Path) -> None:
    before = copy_dirs()
    src = SqliteDatabase(SqliteSource(path=str(tmp_path / "nope.sqlite")), LocalRunner())
    with pytest.raises(SourceError, match="nope.sqlite does not exist"):
        with src.open_dump():
            pass
    assert not (tmp_path / "nope.sqlite").exists()          # not created by opening it
    assert copy_dirs() == before


def test_killed_producer_exits_non_zero(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    make_db(db)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE big (b BLOB)")
    conn.executemany("INSERT INTO big VALUES (randomblob(10000))", [()] * 50)   # > a pipe's 64 KiB
    conn.commit()
    conn.close()
    src = SqliteDatabase(SqliteSource(path=str(db)), LocalRunner())
    with src.open_dump() as session:
        proc = session.streams[0].start()
        time.sleep(0.3)
        assert proc.poll() is None                           # blocked on its full pipe
        proc.kill()
        proc.stdout.read()
        assert proc.wait(10) != 0


def test_one_shot_producer_fails_non_zero_on_missing_file(tmp_path: Path) -> None:
    res = LocalRunner().run([sys.executable, "-m", "drtool.sources.sqlite_dump", str(tmp_path / "x.db")],
                            check=False, timeout=60)
    assert res.returncode != 0 and b"does not exist" in res.stderr and res.stdout == b""


def test_one_shot_producer_writes_a_valid_copy(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    make_db(db)
    res = LocalRunner().run([sys.executable, "-m", "drtool.sources.sqlite_dump", str(db)], timeout=60)
    out = tmp_path / "out.sqlite"
    out.write_bytes(res.stdout)
    assert table_counts(out) == {"log": 2, "penduduk": 2}
