"""PostgresDatabase against real PostgreSQL servers (two ScratchPostgres instances)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drtool.config.models import PostgresSource
from drtool.errors import RestoreRefused, SourceError
from drtool.execute import LocalProcess, LocalRunner
from drtool.scratch.common import free_port
from drtool.scratch.postgres import ScratchPostgres
from drtool.secrets import Secret
from drtool.sources.base import DbTarget, compare_fingerprints
from drtool.sources.postgres import PostgresDatabase
from drtool.sources.psql import PsqlSession, conn_args, libpq_env, psql_argv
from tests.support.postgres import pg_server

pytestmark = pytest.mark.integration

SCHEMA_SQL = """
CREATE ROLE registrar;
CREATE SCHEMA arsip;
CREATE SEQUENCE public.nik_seq START 1000;
CREATE TABLE public.penduduk (
    id bigint PRIMARY KEY DEFAULT nextval('public.nik_seq'),
    nama text NOT NULL,
    foto bytea,
    lahir date
);
CREATE INDEX penduduk_nama_idx ON public.penduduk (nama);
INSERT INTO public.penduduk (nama, foto, lahir)
SELECT 'Warga ' || g || ' Ñoño 日本語 ' || chr(10) || 'baris dua', decode(md5(g::text), 'hex'), date '1980-01-01' + g
FROM generate_series(1, 500) g;
CREATE TABLE arsip."Kartu Keluarga" (no text PRIMARY KEY, anggota int[]);
INSERT INTO arsip."Kartu Keluarga" SELECT 'KK-' || g, ARRAY[g, g + 1] FROM generate_series(1, 50) g;
ALTER TABLE arsip."Kartu Keluarga" OWNER TO registrar;
CREATE TABLE public.kosong (x int);
CREATE VIEW public.dewasa AS SELECT id, nama FROM public.penduduk WHERE lahir < date '1981-01-01';
SELECT lo_from_bytea(0, convert_to('scan of the old paper register', 'UTF8'));
CREATE TABLE public.antrian (id serial PRIMARY KEY, t timestamptz DEFAULT now());
"""

CHECKSUM_SQL = """
SELECT 'penduduk', md5(string_agg(p::text, '|' ORDER BY id)) FROM public.penduduk p
UNION ALL SELECT 'kk', md5(string_agg(k::text, '|' ORDER BY no)) FROM arsip."Kartu Keluarga" k
UNION ALL SELECT 'view', md5(string_agg(d::text, '|' ORDER BY id)) FROM public.dewasa d
UNION ALL SELECT 'lo', string_agg(md5(lo_get(oid)), ',' ORDER BY oid) FROM pg_largeobject_metadata
UNION ALL SELECT 'seq', last_value::text FROM public.nik_seq
UNION ALL SELECT 'owner', tableowner FROM pg_tables WHERE tablename = 'Kartu Keluarga'
UNION ALL SELECT 'index', indexname FROM pg_indexes WHERE indexname = 'penduduk_nama_idx'
"""


class DirReader:
    """StreamReader over files in a directory: stands in for `restic dump` in these tests."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())

    def open(self, name: str) -> LocalProcess:
        return LocalRunner().start(["cat", str(self.root / name)])

    def save(self, name: str, dest: Path) -> int:
        shutil.copyfile(self.root / name, dest)
        return dest.stat().st_size

    def size(self, name: str) -> int | None:
        return (self.root / name).stat().st_size


def source_for(server: ScratchPostgres, *dbs: str, password_env: str | None = None,
               globals_: bool = True) -> PostgresDatabase:
    spec = PostgresSource(databases=list(dbs), host="127.0.0.1", port=server.port, user="postgres",
                          bin_dir=server.bin_dir, globals=globals_,
                          password={"env": password_env} if password_env else None)
    return PostgresDatabase(spec, LocalRunner())


def dump_to(src: PostgresDatabase, out: Path, between: float = 0.0) -> dict:
    """What the engine does: run every stream and keep its bytes; returns the fingerprint."""
    out.mkdir(parents=True, exist_ok=True)
    with src.open_dump() as session:
        time.sleep(between)
        for stream in session.streams:
            proc = stream.start()
            with open(out / stream.name, "wb") as fh:
                shutil.copyfileobj(proc.stdout, fh)
            assert proc.wait(60) == 0, proc.stderr_tail()
        return session.fingerprint


@pytest.fixture(scope="module")
def prod() -> Iterator[ScratchPostgres]:
    yield from pg_server()


@pytest.fixture(scope="module")
def populated(prod: ScratchPostgres) -> ScratchPostgres:
    admin = source_for(prod, "postgres")
    target = prod.target()
    admin.query(target, "CREATE DATABASE siak")
    admin.query(target, "CREATE DATABASE kota")
    admin.query(target, SCHEMA_SQL, database="siak")
    admin.query(target, "CREATE TABLE jalan (nama text); INSERT INTO jalan VALUES ('Jl. Merdeka')", database="kota")
    return prod


@pytest.fixture(scope="module")
def scratch_server() -> Iterator[ScratchPostgres]:
    yield from pg_server()


@pytest.fixture()
def scratch(scratch_server: ScratchPostgres) -> Iterator[ScratchPostgres]:
    """The restore target, emptied after each test (cheaper than a new cluster each time)."""
    yield scratch_server
    admin = source_for(scratch_server, "postgres")
    target = scratch_server.target()
    for (db,) in admin.query(target, "SELECT datname FROM pg_database WHERE datname NOT IN "
                                     "('postgres', 'template0', 'template1')", "postgres"):
        admin.query(target, f'DROP DATABASE "{db}" WITH (FORCE)', "postgres")
    for (role,) in admin.query(target, "SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' "
                                       "AND rolname <> 'postgres'", "postgres"):
        admin.query(target, f'DROP ROLE "{role}"', "postgres")


@pytest.fixture(scope="module")
def dumped(populated: ScratchPostgres, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dump")
    return dump_to(source_for(populated, "siak", "kota"), out), out


def test_open_dump_fingerprint_counts_every_table(dumped: tuple[dict, Path]) -> None:
    fingerprint, out = dumped
    assert fingerprint["kind"] == "postgres"
    assert fingerprint["server_version_num"] >= 150000
    assert fingerprint["databases"]["siak"] == {
        "public.penduduk": 500, "arsip.Kartu Keluarga": 50, "public.kosong": 0,
        "public.antrian": 0, "(large objects)": 1,
    }
    assert fingerprint["databases"]["kota"] == {"public.jalan": 1, "(large objects)": 0}
    assert sorted(p.name for p in out.iterdir()) == ["globals.sql", "kota.pgdump", "siak.pgdump"]
    assert (out / "siak.pgdump").read_bytes()[:5] == b"PGDMP"
    assert b"CREATE ROLE registrar" in (out / "globals.sql").read_bytes()


@pytest.mark.parametrize("strategy", ["stream", "overlap"])
def test_restore_roundtrip_matches_fingerprint_and_content(
    populated: ScratchPostgres, dumped: tuple[dict, Path], scratch: ScratchPostgres, strategy: str,
) -> None:
    fingerprint, out = dumped
    src = source_for(populated, "siak", "kota")
    result = src.restore(DirReader(out), scratch.target(), strategy=strategy)  # type: ignore[arg-type]

    assert sorted(result.databases) == ["kota", "siak"]
    restored = src.fingerprint_target(scratch.target(), ["siak", "kota"])
    assert compare_fingerprints(fingerprint, restored) == []
    assert src.query(scratch.target(), CHECKSUM_SQL, "siak") == src.query(populated.target(), CHECKSUM_SQL, "siak")
    names = [p.name for p in result.phases]
    per_db = {"overlap": ["download+decrypt+load (overlapped)", "index build"],
              "stream": ["download+load+index build (streamed)"]}[strategy]
    assert names == ["globals", *per_db, *per_db]
    assert all(p.duration_s >= 0 for p in result.phases) and result.bytes > 0


def _wal_written(server: ScratchPostgres, fn) -> int:  # noqa: ANN001
    admin, target = source_for(server, "postgres"), server.target()
    before = admin.query(target, "SELECT pg_current_wal_lsn()", "postgres")[0][0]
    fn()
    return int(admin.query(target, f"SELECT pg_current_wal_lsn() - '{before}'::pg_lsn", "postgres")[0][0])


@pytest.mark.parametrize(("strategy", "logged"), [("overlap", False), ("stream", True)])
def test_a_load_into_a_minimal_wal_scratch_instance_is_not_wal_logged(
    populated: ScratchPostgres, tmp_path: Path, scratch: ScratchPostgres, strategy: str, logged: bool,
) -> None:
    # The overlap strategy loads pre-data + data in one transaction when the server runs with
    # wal_level=minimal (drtool's scratch instances do): PostgreSQL then writes no WAL for the
    # rows, only for the catalog. The streamed load (one pg_restore, no transaction) logs them.
    admin = source_for(populated, "postgres")
    admin.query(populated.target(), "CREATE DATABASE bulk")
    try:
        admin.query(populated.target(), "CREATE TABLE rows AS SELECT g AS id, repeat(md5(g::text), 4) AS v "
                                        "FROM generate_series(1, 150000) g", database="bulk")   # ~25 MB
        src = source_for(populated, "bulk", globals_=False)
        dump_to(src, tmp_path)
    finally:
        admin.query(populated.target(), "DROP DATABASE bulk")
    target = scratch.target()
    assert admin.query(target, "SHOW wal_level", "postgres") == [["minimal"]]
    # CREATE DATABASE itself logs template0 (~7.5 MB on PostgreSQL 15) either way.
    created = _wal_written(scratch, lambda: admin.query(target, "CREATE DATABASE probe TEMPLATE template0"))
    wal = _wal_written(scratch, lambda: src.restore(DirReader(tmp_path), target, strategy=strategy)) - created
    assert src.query(target, "SELECT count(*) FROM rows", "bulk") == [["150000"]]
    if logged:
        assert wal > 10 * 2**20, wal            # the rows: ~15 MB of WAL
    else:
        assert wal < 2 * 2**20, wal


class UnsizedReader(DirReader):
    def size(self, name: str) -> int | None:
        return None


@pytest.mark.parametrize(("reader_cls", "phases"), [
    (DirReader, ["download+decrypt+load (overlapped)", "index build"]),
    (UnsizedReader, ["download+load+index build (streamed)"]),
])
def test_auto_restore_single_database_under_another_name(
    populated: ScratchPostgres, tmp_path: Path, scratch: ScratchPostgres, reader_cls: type, phases: list[str],
) -> None:
    src = source_for(populated, "kota", globals_=False)
    fingerprint = dump_to(src, tmp_path)
    target = scratch.target()
    target.database = "kota_drill"
    result = src.restore(reader_cls(tmp_path), target)
    # auto: overlap when the dump's size is known to fit on disk, else streamed.
    assert [p.name for p in result.phases] == phases
    restored = src.fingerprint_target(scratch.target(), ["kota_drill"])
    assert restored["databases"]["kota_drill"] == fingerprint["databases"]["kota"]


def test_restore_refuses_non_empty_database_and_changes_nothing(
    populated: ScratchPostgres, dumped: tuple[dict, Path], scratch: ScratchPostgres,
) -> None:
    _, out = dumped
    src = source_for(populated, "siak", "kota")
    target = scratch.target()
    src.query(target, "CREATE DATABASE siak", "postgres")
    src.query(target, "CREATE TABLE penting (x int); INSERT INTO penting VALUES (42)", "siak")

    with pytest.raises(RestoreRefused, match="siak.*already holds tables"):
        src.restore(DirReader(out), target)
    assert src.query(target, "SELECT x FROM penting", "siak") == [["42"]]
    assert src.query(target, "SELECT count(*) FROM pg_database WHERE datname = 'kota'", "postgres") == [["0"]]

    src.restore(DirReader(out), target, force=True, strategy="stream")
    assert src.query(target, "SELECT count(*) FROM public.penduduk", "siak") == [["500"]]
    assert src.query(target, "SELECT to_regclass('penting') IS NULL", "siak") == [["t"]]


def test_concurrent_writer_fingerprint_equals_restored_dump(
    populated: ScratchPostgres, tmp_path: Path, scratch: ScratchPostgres,
) -> None:
    src = source_for(populated, "siak", globals_=False)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            src.query(populated.target(), "INSERT INTO public.antrian DEFAULT VALUES", "siak")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        # Rows keep arriving between the counted snapshot and the dumps starting.
        fingerprint = dump_to(src, tmp_path, between=0.5)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    counted = fingerprint["databases"]["siak"]["public.antrian"]
    now = int(src.query(populated.target(), "SELECT count(*) FROM public.antrian", "siak")[0][0])
    assert 0 < counted < now, "the writer must have written before and after the snapshot"

    src.restore(DirReader(tmp_path), scratch.target())
    restored = src.fingerprint_target(scratch.target(), ["siak"])
    assert compare_fingerprints(fingerprint, restored) == []


def test_wrong_password_raises_source_error_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for server in pg_server(password=Secret("right-horse-battery-7")):
        monkeypatch.setenv("PG_TEST_PASSWORD", "wrong-staple-9137")
        src = source_for(server, "postgres", password_env="PG_TEST_PASSWORD")
        with pytest.raises(SourceError) as info, src.open_dump():
            pass
        text = str(info.value)
        assert "password authentication failed" in text and "wrong password" in text
        assert "wrong-staple-9137" not in text

        monkeypatch.setenv("PG_TEST_PASSWORD", "right-horse-battery-7")
        with src.open_dump() as session:
            assert "postgres" in session.fingerprint["databases"]


def test_server_down_raises_source_error_with_hint() -> None:
    spec = PostgresSource(database="siak", host="127.0.0.1", port=free_port())
    with pytest.raises(SourceError, match="(?s)Connection refused.*server running"):
        with PostgresDatabase(spec, LocalRunner()).open_dump():
            pass


def test_query_returns_text_rows_and_reports_sql_errors(populated: ScratchPostgres) -> None:
    src = source_for(populated, "siak")
    rows = src.query(populated.target(), "SELECT 'a' || chr(10) || 'b', NULL, 3 UNION ALL SELECT 'c|d', 'e', 4",
                     "siak")
    assert rows == [["a\nb", "", "3"], ["c|d", "e", "4"]]
    assert src.query(populated.target(), "SELECT 1 WHERE false", "siak") == []
    with pytest.raises(SourceError, match="no_such_table"):
        src.query(populated.target(), "SELECT * FROM no_such_table", "siak")


def test_killed_pg_dump_reports_failure(populated: ScratchPostgres) -> None:
    src = source_for(populated, "siak", globals_=False)
    src.query(populated.target(), "CREATE TABLE IF NOT EXISTS bulk AS SELECT g, repeat(md5(g::text), 20) AS pad "
              "FROM generate_series(1, 20000) g", "siak")
    try:
        with src.open_dump() as session:
            proc = session.streams[0].start()
            assert proc.stdout.read(4096)[:5] == b"PGDMP"
            proc.kill()
            proc.stdout.read()
            assert proc.wait(10) < 0
    finally:
        src.query(populated.target(), "DROP TABLE bulk", "siak")


def test_restore_from_truncated_dump_raises(populated: ScratchPostgres, dumped: tuple[dict, Path],
                                            scratch: ScratchPostgres, tmp_path: Path) -> None:
    _, out = dumped
    data = (out / "siak.pgdump").read_bytes()
    (tmp_path / "siak.pgdump").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="pg_restore into .*failed"):
        source_for(populated, "siak").restore(DirReader(tmp_path), scratch.target(), strategy="stream")


def test_restore_reader_failing_midway_raises(populated: ScratchPostgres, dumped: tuple[dict, Path],
                                              scratch: ScratchPostgres) -> None:
    _, out = dumped

    class FailingReader(DirReader):
        """Like restic dump dying halfway: half the bytes, then a non-zero exit."""

        def open(self, name: str) -> LocalProcess:
            if not name.endswith(".pgdump"):
                return super().open(name)
            code = "import sys; d = open(sys.argv[1], 'rb').read(); sys.stdout.buffer.write(d[: len(d) // 2]); sys.exit(5)"
            return LocalRunner().start([sys.executable, "-c", code, str(self.root / name)])

    with pytest.raises(SourceError, match=r"(?s)reading kota.pgdump from the snapshot failed \(exit code 5\).*partly restored"):
        source_for(populated, "siak").restore(FailingReader(out), scratch.target(), strategy="stream")


def test_overlap_restore_checks_free_space(populated: ScratchPostgres, dumped: tuple[dict, Path],
                                            scratch: ScratchPostgres) -> None:
    _, out = dumped

    class HugeReader(DirReader):
        def size(self, name: str) -> int | None:
            return 1 << 60

    with pytest.raises(SourceError, match="not enough free space"):
        source_for(populated, "siak").restore(HugeReader(out), scratch.target(), strategy="overlap")


def test_fingerprint_target_missing_database_raises(scratch: ScratchPostgres) -> None:
    src = PostgresDatabase(PostgresSource(database="x"), LocalRunner())
    target = DbTarget(kind="postgres", host="127.0.0.1", port=scratch.port, user="postgres", bin_dir=scratch.bin_dir)
    with pytest.raises(SourceError, match="does not exist"):
        src.fingerprint_target(target, ["no_such_db"])


def test_psql_session_that_dies_raises_with_stderr_tail(populated: ScratchPostgres) -> None:
    ep_target = populated.target()
    src = source_for(populated, "siak")
    session = PsqlSession(LocalRunner(), psql_argv(populated.bin_dir, conn_args("127.0.0.1", populated.port,
                                                                                "postgres"), "siak"),
                          libpq_env(None), "postgres postgres@127.0.0.1/siak")
    try:
        pid = session.value("SELECT pg_backend_pid()")
        src.query(ep_target, f"SELECT pg_terminate_backend({pid})", "postgres")
        with pytest.raises(SourceError, match="(?s)session ended.*terminat"):
            session.query("SELECT 1")
    finally:
        session.close()
