"""Content hashes in fingerprints, against real PostgreSQL, MariaDB and SQLite.

What must hold: a restore reproduces every table's hash exactly (whatever the servers'
time zones, the physical row order, or column order that pg_dump changes for inheritance
children); a change of values with the same row count is named; and a fingerprint
without hashes still verifies by counts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from drtool.config.models import MariadbSource, SqliteSource
from drtool.execute import LocalRunner
from drtool.scratch.mariadb import ScratchMariadb
from drtool.scratch.postgres import ScratchPostgres
from drtool.sources.base import DbTarget, compare_fingerprints, content_methods, verify_restored
from drtool.sources.mariadb import MariadbDatabase
from drtool.sources.postgres import PostgresDatabase
from drtool.sources.sqlite import SqliteDatabase
from tests.integration.test_postgres_source import DirReader, dump_to, source_for
from tests.support.mariadb import mariadb_server
from tests.support.postgres import pg_server

pytestmark = pytest.mark.integration

# Types whose text form depends on session settings (timestamptz, interval, float, bytea,
# money, regclass), a column named like the row alias, a dropped column, an inheritance
# child whose columns pg_dump recreates in another order, a partitioned table.
PG_SCHEMA = """
ALTER DATABASE tricky SET TimeZone = 'Asia/Jakarta';
ALTER DATABASE tricky SET DateStyle = 'SQL, DMY';
ALTER DATABASE tricky SET extra_float_digits = 0;
CREATE TABLE public.t (id int PRIMARY KEY, r text, ts timestamptz, f float8, n numeric, b bytea, m money,
                       iv interval, j jsonb, a int[], rc regclass, gone int);
ALTER TABLE public.t DROP COLUMN gone;
INSERT INTO public.t SELECT g, 'r' || g, timestamptz '2026-11-17 08:00:00+07' + g * interval '1 hour',
       g / 3.0, g * 1.5, decode(md5(g::text), 'hex'), g, g * interval '90 minutes', jsonb_build_object('k', g),
       ARRAY[g, g + 1], 'public.t' FROM generate_series(1, 300) g;
CREATE TABLE public.parent (a int);
CREATE TABLE public.child (c text) INHERITS (public.parent);
ALTER TABLE public.parent ADD COLUMN b int;
INSERT INTO public.parent VALUES (1, 2);
INSERT INTO public.child (a, c, b) SELECT g, 'c' || g, g FROM generate_series(1, 40) g;
CREATE TABLE public.part (k int, v text) PARTITION BY RANGE (k);
CREATE TABLE public.part_lo PARTITION OF public.part FOR VALUES FROM (0) TO (100);
CREATE TABLE public.part_hi PARTITION OF public.part FOR VALUES FROM (100) TO (1000);
INSERT INTO public.part SELECT g, 'v' || g FROM generate_series(1, 500) g;
SELECT lo_from_bytea(0, 'a large object');
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[ScratchPostgres]:
    yield from pg_server()


@pytest.fixture(scope="module")
def pg_restore_server() -> Iterator[ScratchPostgres]:
    yield from pg_server()


@pytest.fixture(scope="module")
def pg_dumped(pg: ScratchPostgres, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    admin = source_for(pg, "postgres")
    admin.query(pg.target(), "CREATE DATABASE tricky")
    admin.query(pg.target(), PG_SCHEMA, database="tricky")
    out = tmp_path_factory.mktemp("dump")
    return dump_to(source_for(pg, "tricky", globals_=False), out), out


def test_postgres_hashes_cover_tables_and_say_which_method(pg_dumped: tuple[dict, Path]) -> None:
    fingerprint, _ = pg_dumped
    content = fingerprint["content"]["tricky"]
    assert content["method"] == "pg-hashrecord-sum-v1"       # a UTF8 database on PostgreSQL 15
    # Partitioned parents are hashed through their partitions; large objects are counted only.
    assert sorted(content["tables"]) == ["public.child", "public.parent", "public.part_hi", "public.part_lo",
                                         "public.t"]
    assert fingerprint["databases"]["tricky"]["public.part"] == 500
    assert fingerprint["databases"]["tricky"]["public.parent"] == 41      # counts include children
    assert fingerprint["databases"]["tricky"]["(large objects)"] == 1
    assert len(set(content["tables"].values())) == 5


def test_postgres_restore_reproduces_every_hash_and_names_an_altered_table(
        pg: ScratchPostgres, pg_dumped: tuple[dict, Path], pg_restore_server: ScratchPostgres) -> None:
    fingerprint, out = pg_dumped
    src = source_for(pg, "tricky", globals_=False)
    target = pg_restore_server.target()
    src.restore(DirReader(out), target, strategy="stream")

    check = verify_restored(src, target, ["tricky"], fingerprint)
    assert check.problems == [] and check.hashed_tables == 5
    assert "content of 5 tables equal to the backup" in check.summary()

    # Same number of rows, one value changed in place: the counts cannot see it, the hash does.
    src.query(target, "UPDATE public.t SET n = n + 1 WHERE id = 7", "tricky")
    check = verify_restored(src, target, ["tricky"], fingerprint)
    assert len(check.problems) == 1
    assert check.problems[0].startswith("tricky.public.t: content differs from the backup (same 300 rows")
    # Asked for counts only, the same restore passes: that is all counts can prove.
    assert verify_restored(src, target, ["tricky"], fingerprint, content=False).problems == []


# Record hashing (hash_record_extended) where every column hashes its value; the text form for an
# enum (hashed by its label's OID, which a restore changes) and for a nondeterministic collation
# (which would hash 'Ana' like 'ANA').
RECORD_SCHEMA = """
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE public.plain (id int8 PRIMARY KEY, s int2, i int4, t text, v varchar(20), c char(4), b bool,
                           n numeric, f float8, d date, ts timestamp, tz timestamptz, u uuid, j jsonb,
                           by bytea, gone int);
ALTER TABLE public.plain DROP COLUMN gone;
INSERT INTO public.plain SELECT g, g % 100, g, 't' || g, 'v' || g, 'c', g % 2 = 0, g * 1.25, g / 7.0,
       date '2026-01-01' + g, timestamp '2026-01-01' + g * interval '1 min', timestamptz '2026-01-01 00:00+07',
       md5(g::text)::uuid, jsonb_build_object('g', g), decode(md5(g::text), 'hex') FROM generate_series(1, 400) g;
CREATE TABLE public.moods (id int, m mood);
INSERT INTO public.moods SELECT g, CASE WHEN g % 2 = 0 THEN 'ok' ELSE 'sad' END::mood FROM generate_series(1, 50) g;
CREATE TABLE public.names (id int, name text COLLATE ci);
INSERT INTO public.names SELECT g, 'Ana' || g FROM generate_series(1, 50) g;
"""


def test_record_hashes_roundtrip_where_types_allow_and_catch_what_they_must(
        pg: ScratchPostgres, pg_restore_server: ScratchPostgres, tmp_path: Path) -> None:
    from drtool.sources.postgres.client import open_session
    from drtool.sources.postgres.commands import HASH_RECORD, ContentTable, content_tables_sql
    from drtool.sources.postgres.dump import source_endpoint

    admin = source_for(pg, "postgres")
    admin.query(pg.target(), "CREATE DATABASE records")
    admin.query(pg.target(), RECORD_SCHEMA, database="records")
    src = source_for(pg, "records", globals_=False)
    session = open_session(LocalRunner(), source_endpoint(src.spec), "records")
    try:
        tables = {t.key: t for t in (ContentTable(*row) for row in json.loads(
            session.value(content_tables_sql(HASH_RECORD))))}
    finally:
        session.close()
    assert {k: t.record_hashable for k, t in tables.items()} == {
        "public.plain": True, "public.moods": False, "public.names": False}

    fingerprint = dump_to(src, tmp_path)
    assert fingerprint["content"]["records"]["method"] == HASH_RECORD
    target = DbTarget(**{**pg_restore_server.target().__dict__, "database": "records"})
    src.restore(DirReader(tmp_path), target, strategy="stream")
    check = verify_restored(src, target, ["records"], fingerprint)
    assert check.problems == [] and check.hashed_tables == 3       # enum OIDs differ: the text form agrees

    src.query(target, "UPDATE public.plain SET n = n + 0.01 WHERE id = 9; "
                      "UPDATE public.names SET name = 'ANA7' WHERE id = 7", "records")
    problems = verify_restored(src, target, ["records"], fingerprint).problems
    assert [p.split(":")[0] for p in problems] == ["records.public.names", "records.public.plain"]


def test_fingerprint_without_hashes_still_verifies_by_counts(
        pg: ScratchPostgres, pg_dumped: tuple[dict, Path], pg_restore_server: ScratchPostgres) -> None:
    fingerprint, out = pg_dumped
    old = {k: v for k, v in fingerprint.items() if k != "content"}    # as written before hashes existed
    src = source_for(pg, "tricky", globals_=False)
    target = DbTarget(**{**pg_restore_server.target().__dict__, "database": "tricky_old"})
    src.restore(DirReader(out), target, strategy="stream")
    src.query(target, "UPDATE public.t SET n = n + 1 WHERE id = 7", "tricky_old")
    check = verify_restored(src, target, ["tricky_old"], old)
    assert check.problems == [] and check.hashed_tables == 0
    assert "no content hashes in this backup's fingerprint (counts only)" in check.summary()
    src.query(target, "DELETE FROM public.t WHERE id = 8", "tricky_old")
    assert verify_restored(src, target, ["tricky_old"], old).problems == [
        "tricky_old.public.t: 299 rows restored, 300 at backup"]


def test_postgres_content_hash_off_records_counts_only(pg: ScratchPostgres, pg_dumped: tuple[dict, Path],
                                                       tmp_path: Path) -> None:
    from drtool.config.models import PostgresSource

    spec = PostgresSource(database="tricky", host="127.0.0.1", port=pg.port, user="postgres",
                          bin_dir=pg.bin_dir, globals=False, content_hash=False)
    fingerprint = dump_to(PostgresDatabase(spec, LocalRunner()), tmp_path)
    assert "content" not in fingerprint
    assert fingerprint["databases"] == pg_dumped[0]["databases"]


# ---------------------------------------------------------------- MariaDB

@pytest.fixture(scope="module")
def maria() -> Iterator[ScratchMariadb]:
    yield from mariadb_server()


def test_mariadb_hashes_roundtrip_and_name_an_altered_table(maria: ScratchMariadb, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    maria.admin_sql("SET GLOBAL time_zone = '+07:00';"
                    "CREATE DATABASE hashme; USE hashme; CREATE TABLE hashme.t (id INT PRIMARY KEY, ts TIMESTAMP(3), "
                    "d DOUBLE, `when` DATETIME, b BLOB, x VARCHAR(20) CHARACTER SET latin1, n INT);"
                    "INSERT INTO hashme.t SELECT seq, FROM_UNIXTIME(1700000000 + seq), seq / 7, "
                    "'2026-11-17 08:00:00', UNHEX(MD5(seq)), CONCAT('x', seq), IF(seq % 5 = 0, NULL, seq) "
                    "FROM seq_1_to_200;"
                    "CREATE TABLE hashme.empty (a INT);")
    monkeypatch.setenv("TEST_MARIADB_PW", maria.password.reveal())
    spec = MariadbSource(database="hashme", host="127.0.0.1", port=maria.port, user="root",
                         password={"env": "TEST_MARIADB_PW"})
    src = MariadbDatabase(spec, LocalRunner())
    with src.open_dump() as session:
        [stream] = session.streams
        proc = stream.start()
        (tmp_path / stream.name).write_bytes(proc.stdout.read())
        assert proc.wait(60) == 0
        fingerprint = session.fingerprint
    assert fingerprint["content"]["hashme"]["method"] == "mariadb-md5-sum-v1"
    assert sorted(fingerprint["content"]["hashme"]["tables"]) == ["empty", "t"]
    assert fingerprint["content"]["hashme"]["tables"]["empty"] == "0"

    target = maria.target(database="hashme_copy")
    src.restore(DirReader(tmp_path), target)
    maria.admin_sql("SET GLOBAL time_zone = '-05:00';")     # the restore side writes times differently
    check = verify_restored(src, target, ["hashme_copy"], fingerprint)
    assert check.problems == [] and check.hashed_tables == 2

    maria.admin_sql("UPDATE hashme_copy.t SET x = 'changed' WHERE id = 3;")
    check = verify_restored(src, target, ["hashme_copy"], fingerprint)
    assert [p.split(" (")[0] for p in check.problems] == ["hashme_copy.t: content differs from the backup"]


# ---------------------------------------------------------------- SQLite

def test_sqlite_hashes_roundtrip_keep_types_apart_and_name_an_altered_table(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE q (id INTEGER PRIMARY KEY, v, note TEXT);"
                       "INSERT INTO q (v, note) VALUES (1, 'a'), ('1', 'b'), (x'31', 'c'), (1.5, NULL);"
                       "CREATE TABLE other (x);")
    conn.execute("INSERT INTO other VALUES (CAST(X'FF00' AS TEXT))")     # TEXT that is not UTF-8
    conn.commit()
    conn.close()
    src = SqliteDatabase(SqliteSource(path=str(db)), LocalRunner())
    with src.open_dump() as session:
        [stream] = session.streams
        proc = stream.start()
        (tmp_path / "snap").mkdir()
        (tmp_path / "snap" / stream.name).write_bytes(proc.stdout.read())
        assert proc.wait(60) == 0
        fingerprint = session.fingerprint
    assert fingerprint["content"]["app.sqlite"]["method"] == "sqlite-blake2b-sum-v1"

    restored = tmp_path / "restored.sqlite"
    target = DbTarget(kind="sqlite", host=None, path=restored)
    src.restore(DirReader(tmp_path / "snap"), target)
    check = verify_restored(src, target, ["app.sqlite"], fingerprint)
    assert check.problems == [] and check.hashed_tables == 2

    # The integer 1 becomes the text '1': same count, same "value" to a loose eye, other content.
    conn = sqlite3.connect(restored)
    conn.execute("UPDATE q SET v = '1' WHERE id = 1")
    conn.commit()
    conn.close()
    methods = content_methods(fingerprint)
    problems = compare_fingerprints(fingerprint, src.fingerprint_target(target, ["app.sqlite"], methods))
    assert [p.split(" (")[0] for p in problems] == ["app.sqlite.q: content differs from the backup"]
