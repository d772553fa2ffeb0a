"""MariaDB source against real mariadbd servers: dump, restore, fingerprint, failures."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from drtool.config.models import MariadbSource
from drtool.errors import RestoreRefused, SourceError
from drtool.execute import LocalRunner
from drtool.scratch.common import free_port
from drtool.scratch.mariadb import ScratchMariadb
from drtool.sources.base import compare_fingerprints
from drtool.sources.mariadb import MariadbDatabase
from tests.support.mariadb import FileStreamReader, mariadb_server, save_streams

pytestmark = pytest.mark.integration

UNICODE = "Palembang — Dukcapil ñ 中文 🔥 'quote' \\back\ttab"
BLOB_HEX = bytes(range(256)).hex()

SCHEMA = f"""
CREATE DATABASE siak;
CREATE TABLE siak.penduduk (
  id INT PRIMARY KEY AUTO_INCREMENT, nama VARCHAR(200) CHARACTER SET utf8mb4, foto BLOB
) ENGINE=InnoDB;
CREATE TABLE siak.audit (id INT PRIMARY KEY AUTO_INCREMENT, penduduk_id INT) ENGINE=InnoDB;
CREATE TABLE siak.`odd name` (x INT) ENGINE=InnoDB;
CREATE TRIGGER siak.penduduk_ai AFTER INSERT ON siak.penduduk
  FOR EACH ROW INSERT INTO siak.audit (penduduk_id) VALUES (NEW.id);
CREATE FUNCTION siak.double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
INSERT INTO siak.penduduk (nama, foto) VALUES
  ('{UNICODE.replace(chr(92), chr(92) * 2).replace("'", chr(92) + "'")}', UNHEX('{BLOB_HEX}')),
  ('Budi', NULL), ('Siti', UNHEX('00FF00'));
INSERT INTO siak.`odd name` VALUES (1), (2), (3), (4);
CREATE DATABASE arsip;
CREATE TABLE arsip.dokumen (id INT PRIMARY KEY, isi TEXT) ENGINE=InnoDB;
INSERT INTO arsip.dokumen VALUES (1, 'satu'), (2, 'dua');
"""


@pytest.fixture(scope="module")
def prod():
    yield from mariadb_server()


@pytest.fixture(scope="module")
def spare():
    yield from mariadb_server()


@pytest.fixture(scope="module")
def seeded(prod: ScratchMariadb) -> ScratchMariadb:
    prod.admin_sql(SCHEMA)
    return prod


def source_for(server: ScratchMariadb, monkeypatch: pytest.MonkeyPatch, databases: list[str],
               password: str | None = None) -> MariadbDatabase:
    monkeypatch.setenv("TEST_MARIADB_PW", password or server.password.reveal())
    spec = MariadbSource(databases=databases, host="127.0.0.1", port=server.port, user="root",
                         password={"env": "TEST_MARIADB_PW"})
    return MariadbDatabase(spec, LocalRunner())


def checksums(server: ScratchMariadb, db: str) -> str:
    return server.admin_sql(f"CHECKSUM TABLE {db}.penduduk, {db}.audit, {db}.`odd name` EXTENDED;")


def drop(server: ScratchMariadb, *dbs: str) -> None:
    server.admin_sql("".join(f"DROP DATABASE IF EXISTS `{db}`;" for db in dbs))


def test_dump_and_restore_roundtrip_keeps_rows_text_blobs_trigger_routine(
        seeded: ScratchMariadb, spare: ScratchMariadb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_for(seeded, monkeypatch, ["siak", "arsip"])
    with src.open_dump() as session:
        fingerprint = session.fingerprint
        assert [s.name for s in session.streams] == ["siak.sql", "arsip.sql"]
        assert save_streams(session, tmp_path / "snap") == {"siak.sql": 0, "arsip.sql": 0}
    assert {k: v for k, v in fingerprint.items() if k != "content"} == {"kind": "mariadb", "databases": {
        "siak": {"audit": 3, "odd name": 4, "penduduk": 3}, "arsip": {"dokumen": 2}}}
    # content_hash is on by default: one hash per table, taken in the dumps' snapshot.
    assert {db: sorted(c["tables"]) for db, c in fingerprint["content"].items()} == {
        "siak": ["audit", "odd name", "penduduk"], "arsip": ["dokumen"]}

    drop(spare, "siak", "arsip")
    result = src.restore(FileStreamReader(tmp_path / "snap"), spare.target())
    assert sorted(result.databases) == ["arsip", "siak"]
    assert result.bytes == sum(p.stat().st_size for p in (tmp_path / "snap").iterdir())
    assert {p.name for p in result.phases} >= {"load siak", "load arsip"}

    assert compare_fingerprints(fingerprint, src.fingerprint_target(spare.target(), ["siak", "arsip"])) == []
    # The content hashes come out the same after the restore (unicode text, blobs, odd names).
    methods = {db: c["method"] for db, c in fingerprint["content"].items()}
    restored = src.fingerprint_target(spare.target(), ["siak", "arsip"], methods)
    assert restored["content"] == fingerprint["content"]
    assert compare_fingerprints(fingerprint, restored) == []
    assert checksums(spare, "siak") == checksums(seeded, "siak")
    assert src.query(spare.target(), "SELECT nama FROM penduduk WHERE id = 1", "siak") == [[UNICODE]]
    assert src.query(spare.target(), "SELECT HEX(foto) FROM penduduk WHERE id = 1", "siak") == [[BLOB_HEX.upper()]]
    # The trigger and the routine came back and work.
    assert src.query(spare.target(), "SELECT siak.double_it(21)") == [["42"]]
    src.query(spare.target(), "INSERT INTO penduduk (nama) VALUES ('baru')", "siak")
    assert src.query(spare.target(), "SELECT COUNT(*) FROM audit", "siak") == [["4"]]


def test_restore_refuses_non_empty_target_unless_forced(
        seeded: ScratchMariadb, spare: ScratchMariadb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_for(seeded, monkeypatch, ["arsip"])
    with src.open_dump() as session:
        save_streams(session, tmp_path)
    drop(spare, "arsip")
    spare.admin_sql("CREATE DATABASE arsip; CREATE TABLE arsip.keep (x INT); INSERT INTO arsip.keep VALUES (7);")
    reader = FileStreamReader(tmp_path)

    with pytest.raises(RestoreRefused, match="arsip.*not empty"):
        src.restore(reader, spare.target())
    assert spare.admin_sql("SELECT x FROM arsip.keep;") == "7\n"   # nothing changed

    src.restore(reader, spare.target(), force=True)
    assert spare.admin_sql("SHOW TABLES FROM arsip;") == "dokumen\n"


def test_restore_into_empty_existing_db_and_under_another_name(
        seeded: ScratchMariadb, spare: ScratchMariadb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_for(seeded, monkeypatch, ["arsip"])
    with src.open_dump() as session:
        fingerprint = session.fingerprint
        save_streams(session, tmp_path)
    drop(spare, "arsip_drill")
    spare.admin_sql("CREATE DATABASE arsip_drill;")     # empty: allowed without force
    target = spare.target(database="arsip_drill")
    result = src.restore(FileStreamReader(tmp_path), target)
    assert result.databases == ["arsip_drill"]
    got = src.fingerprint_target(target, ["arsip"])
    assert got == {"kind": "mariadb", "databases": {"arsip_drill": {"dokumen": 2}}}
    assert got["databases"]["arsip_drill"] == fingerprint["databases"]["arsip"]


def _writer(server: ScratchMariadb, stop: threading.Event, table: str) -> subprocess.Popen:
    """A client inserting rows, one autocommit statement at a time, until stopped."""
    proc = subprocess.Popen(["mariadb", "--no-defaults", f"--socket={server.socket}", "-uroot", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def feed() -> None:
        i = 0
        while not stop.is_set():
            proc.stdin.write(f"INSERT INTO {table} (v) VALUES ({i});\n".encode())
            proc.stdin.flush()
            i += 1
            time.sleep(0.002)
        proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()
    return proc


def test_fingerprint_matches_dump_under_concurrent_writes_and_lock_is_released_early(
        seeded: ScratchMariadb, spare: ScratchMariadb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The padding is more than a pipe holds: the unread dump stays running, so the
    # early unlock must come from seeing its snapshot, not from its exit.
    seeded.admin_sql("CREATE DATABASE busy; CREATE TABLE busy.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;"
                     "CREATE TABLE busy.pad (s TEXT) ENGINE=InnoDB;"
                     "INSERT INTO busy.pad SELECT REPEAT('p', 1000) FROM busy.seq_1_to_500;")
    stop = threading.Event()
    writer = _writer(seeded, stop, "busy.t")
    try:
        time.sleep(0.3)
        src = source_for(seeded, monkeypatch, ["busy"])
        with src.open_dump() as session:
            proc = session.streams[0].start()
            assert proc.poll() is None
            # InnoDB only: the read lock is gone once the dump has its snapshot,
            # so a write completes while the dump has not even been read yet.
            seeded.admin_sql("SET SESSION lock_wait_timeout = 5; INSERT INTO busy.t (v) VALUES (-1);", timeout=10)
            data = proc.stdout.read()
            assert proc.wait(30) == 0
            (tmp_path / "busy.sql").write_bytes(data)
            fingerprint = session.fingerprint
        time.sleep(0.2)
    finally:
        stop.set()
        writer.wait(10)
    assert writer.returncode == 0, writer.stderr.read()
    now = int(seeded.admin_sql("SELECT COUNT(*) FROM busy.t;"))
    assert now > fingerprint["databases"]["busy"]["t"] > 0   # writes went on before and after

    drop(spare, "busy")
    src.restore(FileStreamReader(tmp_path), spare.target())
    assert compare_fingerprints(fingerprint, src.fingerprint_target(spare.target(), ["busy"])) == []


def test_myisam_tables_keep_the_read_lock_until_the_session_ends(
        seeded: ScratchMariadb, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded.admin_sql("CREATE DATABASE legacy; CREATE TABLE legacy.m (v INT) ENGINE=MyISAM; INSERT INTO legacy.m VALUES (1);")
    src = source_for(seeded, monkeypatch, ["legacy"])
    insert = "SET SESSION lock_wait_timeout = 1; INSERT INTO legacy.m VALUES (2);"
    with src.open_dump() as session:
        proc = session.streams[0].start()
        proc.stdout.read()
        assert proc.wait(30) == 0
        with pytest.raises(Exception, match="Lock wait timeout"):
            seeded.admin_sql(insert, timeout=20)
    seeded.admin_sql(insert, timeout=20)
    assert seeded.admin_sql("SELECT COUNT(*) FROM legacy.m;") == "2\n"


def test_wrong_password_is_a_source_error_without_the_password(
        seeded: ScratchMariadb, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_for(seeded, monkeypatch, ["siak"], password="not-the-password-4711")
    with pytest.raises(SourceError) as info, src.open_dump():
        pass
    text = str(info.value)
    assert "Access denied" in text and "check the user and password" in text
    assert "not-the-password-4711" not in text
    assert seeded.password.reveal() not in text


def test_server_down_is_a_source_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MARIADB_PW", "whatever-pw")
    spec = MariadbSource(database="siak", port=free_port(), password={"env": "TEST_MARIADB_PW"})
    with pytest.raises(SourceError, match="reachable"):
        with MariadbDatabase(spec, LocalRunner()).open_dump():
            pass


def test_missing_database_is_named(seeded: ScratchMariadb, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_for(seeded, monkeypatch, ["siak", "nope"])
    with pytest.raises(SourceError, match="database nope does not exist"):
        with src.open_dump():
            pass


def test_killed_dump_producer_exits_non_zero(seeded: ScratchMariadb, monkeypatch: pytest.MonkeyPatch) -> None:
    # ~500 KB: more than a pipe holds, so the unread dump is still running when killed.
    seeded.admin_sql("CREATE DATABASE big; CREATE TABLE big.t (s TEXT) ENGINE=InnoDB;"
                     "INSERT INTO big.t SELECT REPEAT('x', 1000) FROM big.seq_1_to_500;")
    src = source_for(seeded, monkeypatch, ["big"])
    with src.open_dump() as session:
        proc = session.streams[0].start()
        time.sleep(0.2)
        assert proc.poll() is None
        proc.kill()
        proc.stdout.read()
        assert proc.wait(10) != 0


def test_failed_load_and_failed_reader_raise_with_stderr(
        spare: ScratchMariadb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source_for(spare, monkeypatch, ["broken"])
    (tmp_path / "broken.sql").write_text("CREATE TABLE t (x INT);\nTHIS IS NOT SQL;\n")
    drop(spare, "broken")
    with pytest.raises(SourceError, match="(?s)loading broken.sql.*syntax"):
        src.restore(FileStreamReader(tmp_path), spare.target())

    class FailingReader(FileStreamReader):
        def open(self, name: str):
            return LocalRunner().start(["cat", str(self.root / "missing-file")])

    drop(spare, "broken")
    with pytest.raises(SourceError, match="reading stream broken.sql"):
        src.restore(FailingReader(tmp_path), spare.target())


def test_password_never_in_process_argv(seeded: ScratchMariadb, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded.admin_sql("CREATE DATABASE pad; CREATE TABLE pad.t (s TEXT) ENGINE=InnoDB;"
                     "INSERT INTO pad.t SELECT REPEAT('p', 1000) FROM pad.seq_1_to_500;")
    src = source_for(seeded, monkeypatch, ["pad"])
    secret = seeded.password.reveal().encode()
    with src.open_dump() as session:
        proc = session.streams[0].start()          # blocked on its full pipe: still alive
        clients = clients_of(seeded.port)
        assert proc.pid in clients and len(clients) >= 2      # the dump and the lock session
        for pid in clients:
            assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
        proc.kill()
        proc.wait(10)


def clients_of(port: int) -> list[int]:
    """Pids of processes whose argv names this server port."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"--port={port}".encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
