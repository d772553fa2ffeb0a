"""Restore part of a source, browse a snapshot, and dry runs -- through the CLI, real restic and S3.

Files by pattern, one PostgreSQL table (with its index, constraint, trigger and sequence) or
schema, one MariaDB table: exactly the asked subset arrives, verified; targets keep their
safety; `--dry-run` reads the repository only and writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drtool.config.models import PostgresSource
from drtool.execute import LocalRunner
from drtool.sources.postgres import PostgresDatabase
from tests.support.drtool_env import data_root, make_env
from tests.support.mariadb import mariadb_server
from tests.support.postgres import pg_server

pytestmark = pytest.mark.integration


def files_in(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def scans(tmp_path_factory, s3_server):  # noqa: ANN001, ANN201
    """One backup of a small scans tree: 2026/10 and 2026/11 months, a note at the top."""
    bucket = "partial-files"
    (s3_server.root / bucket).mkdir(parents=True, exist_ok=True)
    env = make_env(tmp_path_factory.mktemp("files"), s3_server, bucket)
    with data_root() as data:
        for month in ("10", "11"):
            (data / "scans" / "2026" / month / "sub").mkdir(parents=True)
            for i in range(3):
                (data / "scans" / "2026" / month / f"ktp-{month}-{i}.pdf").write_bytes(b"%PDF " * (100 + i))
            (data / "scans" / "2026" / month / "sub" / "deep.pdf").write_bytes(b"deep")
        (data / "scans" / "README").write_text("index\n")
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(data / "scans")]}}])
        env.backup("docs")
        yield env, data / "scans"


def test_restore_files_by_glob_restores_exactly_that_month(scans, tmp_path) -> None:  # noqa: ANN001
    env, root = scans
    out = tmp_path / "out"
    code, result, err = env.run_json("restore", "docs", "--source", "scans", "--path", "scans/2026/11/*",
                                     "--target", str(out))
    assert code == 0, err
    assert result["verified"] is True and result["problems"] == []
    base = out / str(root).lstrip("/")
    assert files_in(base) == {"2026/11/ktp-11-0.pdf", "2026/11/ktp-11-1.pdf", "2026/11/ktp-11-2.pdf",
                              "2026/11/sub/deep.pdf"}
    assert (base / "2026/11/ktp-11-2.pdf").read_bytes() == (root / "2026/11/ktp-11-2.pdf").read_bytes()

    # One file by its absolute path, into another empty directory.
    one = tmp_path / "one"
    code, result, err = env.run_json("restore", "docs", "--source", "scans", "--path",
                                     str(root / "2026/10/ktp-10-1.pdf"), "--target", str(one))
    assert code == 0, err
    assert files_in(one / str(root).lstrip("/")) == {"2026/10/ktp-10-1.pdf"}


def test_partial_files_restore_keeps_target_safety_and_refuses_nonsense(scans, tmp_path) -> None:  # noqa: ANN001
    env, _ = scans
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, out, err = env.run("restore", "docs", "--source", "scans", "--path", "scans/2026/11/*", "--target", str(busy))
    assert code == 2 and "not empty; nothing was written" in err and "Traceback" not in err   # refused: exit 2
    assert files_in(busy) == {"keep.txt"}
    code, out, err = env.run("restore", "docs", "--source", "scans", "--path", "nothing/like/this",
                             "--target", str(tmp_path / "none"))
    assert code == 2 and "no entry of snapshot" in err and not (tmp_path / "none").exists()
    code, out, err = env.run("restore", "docs", "--source", "scans", "--path", "../etc/*", "--target", str(tmp_path / "x"))
    assert code == 2 and "'..'" in err
    code, out, err = env.run("restore", "docs", "--source", "scans", "--table", "t", "--target", str(tmp_path / "x"))
    assert code == 2 and "--table / --schema are for postgres and mariadb sources" in err


def test_drill_restores_one_month_of_files_and_verifies_only_it(scans) -> None:  # noqa: ANN001
    """paths: on a files restore step restores what the patterns select; the verify step compares
    exactly that part with the snapshot (the other month is not a difference)."""
    env, _ = scans
    env.playbook("one-month", {"policy": "docs", "steps": [
        {"name": "restore november", "restore": {"source": "scans", "paths": ["scans/2026/11/*"]}},
        {"name": "check", "verify": {"source": "scans"}},
        {"name": "october absent", "command": ["sh", "-c", 'find "$DRTOOL_RESTORE_DIR" -name ktp-11-0.pdf | grep -q . '
                                                           '&& ! find "$DRTOOL_RESTORE_DIR" -name "ktp-10-*" | grep -q .']},
    ]})
    code, report, err = env.run_json("drill", "one-month")
    assert code == 0, err
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["status"] == "passed" for s in steps.values()), steps
    assert steps["restore november"]["files"] == 4 and steps["restore november"]["paths"] == ["scans/2026/11/*"]
    assert steps["check"]["checked"] >= 4
    env.playbook("no-such-month", {"policy": "docs", "steps": [
        {"name": "restore", "restore": {"source": "scans", "paths": ["scans/1999/*"]}}]})
    code, report, err = env.run_json("drill", "no-such-month")
    assert code != 0 and "no entry of snapshot" in (err + str(report)) and "Traceback" not in err
    env.playbook("climbs-out", {"policy": "docs", "steps": [
        {"name": "restore", "restore": {"source": "scans", "paths": ["../etc/*"]}}]})
    code, report, err = env.run_json("drill", "climbs-out")
    assert code != 0 and "'..' and NUL are not allowed" in (err + str(report)) and "Traceback" not in err


def test_ls_browses_files_with_sizes_and_times(scans) -> None:  # noqa: ANN001
    env, root = scans
    code, listing, err = env.run_json("ls", "docs", "--source", "scans", str(root / "2026" / "11"))
    assert code == 0, err
    shown = {e["path"]: e for e in listing["entries"]}
    assert set(shown) == {str(root / "2026/11"), *(str(root / f"2026/11/ktp-11-{i}.pdf") for i in range(3)),
                          str(root / "2026/11/sub")}
    assert shown[str(root / "2026/11/ktp-11-1.pdf")]["size"] == 505 and shown[str(root / "2026/11")]["type"] == "dir"
    assert all(e["mtime"] for e in listing["entries"])
    code, listing, err = env.run_json("ls", "docs", "--source", "scans", "--recursive", "scans/2026/11")
    assert str(root / "2026/11/sub/deep.pdf") in {e["path"] for e in listing["entries"]}
    code, text, err = env.run("ls", "docs", "--source", "scans", "2026/10/*.pdf")
    assert code == 0 and text.count("ktp-10-") == 3 and "505 B" in text


def test_restore_dry_run_says_what_and_writes_nothing(scans, tmp_path) -> None:  # noqa: ANN001
    env, _ = scans
    target = tmp_path / "would"
    code, plan, err = env.run_json("restore", "docs", "--source", "scans", "--path", "scans/2026/11/*",
                                   "--target", str(target), "--dry-run")
    assert code == 0, err
    assert plan["dry_run"] is True and plan["files"] == 4 and plan["bytes"] == 500 + 505 + 510 + 4
    assert plan["target_state"] == "does not exist: would be created"
    assert any("restic restore --verify" in c for c in plan["checks"])
    assert not target.exists()
    code, text, err = env.run("restore", "docs", "--source", "scans", "--target", str(target), "--dry-run")
    assert code == 0 and "dry run: nothing was restored" in text and "bytes to read" in text
    assert not target.exists()


# ---------------------------------------------------------------- PostgreSQL

PG_SCHEMA = """
CREATE SCHEMA arsip;
CREATE TABLE public.penduduk (id serial PRIMARY KEY, nama text NOT NULL, dibuat timestamptz DEFAULT now());
CREATE INDEX penduduk_nama ON public.penduduk (nama);
CREATE TABLE public.audit (penduduk int REFERENCES public.penduduk (id), what text);
CREATE FUNCTION public.log_it() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO public.audit VALUES (NEW.id, 'insert'); RETURN NEW; END$$;
CREATE TRIGGER penduduk_log AFTER INSERT ON public.penduduk FOR EACH ROW EXECUTE FUNCTION public.log_it();
INSERT INTO public.penduduk (nama) SELECT 'warga ' || g FROM generate_series(1, 120) g;
CREATE TABLE arsip.dokumen (no int PRIMARY KEY, isi text);
INSERT INTO arsip.dokumen SELECT g, 'isi ' || g FROM generate_series(1, 30) g;
"""


@pytest.fixture(scope="module")
def pg_prod():  # noqa: ANN201
    yield from pg_server()


@pytest.fixture(scope="module")
def pg_target():  # noqa: ANN201
    yield from pg_server()


def _admin(server) -> PostgresDatabase:  # noqa: ANN001
    return PostgresDatabase(PostgresSource(database="postgres", port=server.port, bin_dir=server.bin_dir), LocalRunner())


@pytest.fixture(scope="module")
def siak(tmp_path_factory, s3_server, pg_prod):  # noqa: ANN001, ANN201
    bucket = "partial-pg"
    (s3_server.root / bucket).mkdir(parents=True, exist_ok=True)
    admin = _admin(pg_prod)
    admin.query(pg_prod.target(), "CREATE DATABASE siak")
    admin.query(pg_prod.target(), PG_SCHEMA, database="siak")
    env = make_env(tmp_path_factory.mktemp("pg"), s3_server, bucket)
    env.policy("siak", [{"name": "db", "postgres": {"database": "siak", "port": pg_prod.port,
                                                    "bin_dir": pg_prod.bin_dir}}])
    env.backup("siak")
    return env


def test_restore_one_postgres_table_with_what_belongs_to_it(siak, pg_target) -> None:  # noqa: ANN001
    url = f"postgresql://postgres@127.0.0.1:{pg_target.port}/only_penduduk"
    code, result, err = siak.run_json("restore", "siak", "--source", "db", "--table", "penduduk", "--target", url)
    assert code == 0, err
    assert result["tables"] == ["public.penduduk"] and result["verified"] is True
    assert "content of 1 tables equal to the backup" in result["verification"]
    assert any("FK CONSTRAINT public audit" in s for s in result["skipped"])
    q = _admin(pg_target)
    target = pg_target.target()
    target.database = "only_penduduk"
    tables = q.query(target, "SELECT string_agg(n.nspname || '.' || c.relname, ',' ORDER BY 1) FROM pg_class c "
                             "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                             "AND n.nspname NOT IN ('pg_catalog', 'information_schema')")
    assert tables == [["public.penduduk"]]
    # Its index, primary key, trigger (and the function it calls) and serial sequence came along.
    assert q.query(target, "SELECT count(*) FROM pg_indexes WHERE tablename = 'penduduk'") == [["2"]]
    assert q.query(target, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal") == [["penduduk_log"]]
    assert q.query(target, "SELECT nextval('public.penduduk_id_seq')") == [["121"]]

    # The same database again: not empty now, refused without --force, nothing changed.
    code, out, err = siak.run("restore", "siak", "--source", "db", "--table", "penduduk", "--target", url)
    assert code == 2 and "already holds tables; nothing was changed" in err   # refused: exit 2
    code, out, err = siak.run("restore", "siak", "--source", "db", "--table", "nope", "--target", url)
    assert code == 2 and "holds no table 'nope'" in err


def test_restore_one_postgres_schema(siak, pg_target) -> None:  # noqa: ANN001
    url = f"postgresql://postgres@127.0.0.1:{pg_target.port}/only_arsip"
    code, result, err = siak.run_json("restore", "siak", "--source", "db", "--schema", "arsip", "--target", url)
    assert code == 0, err
    assert result["tables"] == ["arsip.dokumen"] and result["verified"] is True
    target = pg_target.target()
    target.database = "only_arsip"
    assert _admin(pg_target).query(target, "SELECT count(*) FROM arsip.dokumen") == [["30"]]
    assert _admin(pg_target).query(target, "SELECT to_regclass('public.penduduk') IS NULL") == [["t"]]


def test_ls_database_lists_streams_and_tables_and_dry_run_names_bytes(siak, pg_target) -> None:  # noqa: ANN001
    code, listing, err = siak.run_json("ls", "siak", "--source", "db")
    assert code == 0, err
    streams = {s["stream"]: s for s in listing["streams"]}
    assert set(streams) == {"siak.pgdump", "globals.sql"} and streams["siak.pgdump"]["bytes"] > 1000
    rows = {f"{t['database']}.{t['table']}": t for t in listing["tables"]}
    assert rows["siak.public.penduduk"]["rows"] == 120 and rows["siak.public.penduduk"]["content_hash"] is True
    assert rows["siak.arsip.dokumen"]["rows"] == 30
    url = f"postgresql://postgres@127.0.0.1:{pg_target.port}/never_made"
    code, plan, err = siak.run_json("restore", "siak", "--source", "db", "--table", "arsip.dokumen",
                                    "--target", url, "--dry-run")
    assert code == 0, err
    assert plan["tables"] == ["arsip.dokumen"] and plan["bytes"] == sum(s["bytes"] for s in streams.values())
    assert plan["streams"]["siak.pgdump"] == streams["siak.pgdump"]["bytes"]
    target = pg_target.target()
    assert _admin(pg_target).query(target, "SELECT count(*) FROM pg_database WHERE datname = 'never_made'",
                                   "postgres") == [["0"]]


# ---------------------------------------------------------------- MariaDB

def test_restore_one_mariadb_table(tmp_path, s3_server, bucket, monkeypatch) -> None:  # noqa: ANN001
    gen = mariadb_server()
    server = next(gen)
    try:
        server.admin_sql("CREATE DATABASE arsip; USE arsip; CREATE TABLE dokumen (id INT PRIMARY KEY, isi TEXT);"
                         "CREATE TABLE `lain tabel` (x INT); CREATE TABLE log (d INT);"
                         "INSERT INTO dokumen SELECT seq, CONCAT('isi ', seq) FROM seq_1_to_40;"
                         "INSERT INTO `lain tabel` VALUES (1), (2);"
                         "CREATE TRIGGER dok_log AFTER INSERT ON dokumen FOR EACH ROW INSERT INTO log VALUES (NEW.id);")
        env = make_env(tmp_path, s3_server, bucket)
        env.env["ARSIP_PW"] = server.password.reveal()
        env.policy("arsip", [{"name": "db", "mariadb": {"database": "arsip", "port": server.port, "user": "root",
                                                        "password": {"env": "ARSIP_PW"}}}])
        env.backup("arsip")
        monkeypatch.setenv("MYSQL_PWD", server.password.reveal())
        url = f"mysql://root@127.0.0.1:{server.port}/arsip_dok"
        code, result, err = env.run_json("restore", "arsip", "--source", "db", "--table", "dokumen", "--target", url)
        assert code == 0, err
        assert result["tables"] == ["dokumen"] and result["verified"] is True
        assert server.admin_sql("SHOW TABLES FROM arsip_dok;") == "dokumen\n"
        assert server.admin_sql("SELECT COUNT(*) FROM arsip_dok.dokumen;") == "40\n"
        assert server.admin_sql("SHOW TRIGGERS FROM arsip_dok;").startswith("dok_log")
        code, result, err = env.run_json("restore", "arsip", "--source", "db", "--table", "lain tabel",
                                         "--target", f"mysql://root@127.0.0.1:{server.port}/arsip_lain")
        assert code == 0, err
        assert server.admin_sql("SELECT COUNT(*) FROM arsip_lain.`lain tabel`;") == "2\n"
    finally:
        gen.close()


def test_drill_dry_run_plans_every_step_and_starts_nothing(siak) -> None:  # noqa: ANN001
    from tests.support.drtool_env import child_pids, private_tmp, servers_under

    siak.playbook("siak-drill", {"policy": "siak", "targets": {"rpo": "1h"}, "steps": [
        {"name": "restore", "restore": {"source": "db"}},
        {"name": "check", "verify": {"source": "db"}},
        {"name": "count", "sql": {"source": "db", "query": "select count(*) from penduduk", "expect": {"equals": "120"}}},
        {"name": "app", "command": ["true"]},
    ]})
    with private_tmp() as tmp:
        before = child_pids()
        code, plan, err = siak.run_json("drill", "siak-drill", "--dry-run")
        assert code == 0, err
        assert list(tmp.iterdir()) == [] and not servers_under(tmp) and child_pids() - before == set()
    steps = {s["name"]: s for s in plan["steps"]}
    assert plan["dry_run"] is True and plan["runnable"] is True
    assert "into a new scratch PostgreSQL server (not started in a dry run)" in steps["restore"]["would"]
    assert steps["restore"]["bytes"] == plan["bytes"] > 1000 and set(steps["restore"]["streams"]) == {
        "siak.pgdump", "globals.sql"}
    assert any(c.startswith("content hashes of 3 tables") for c in steps["check"]["checks"])
    assert "select count(*) from penduduk" in steps["count"]["would"] and steps["app"]["would"] == "run true"
    assert 0 < plan["rpo_if_run_now_s"] < 3600
    code, history, err = siak.run_json("drills")
    assert code == 0 and history == []          # a dry run is not a drill: nothing recorded


def test_drill_restores_one_table_and_verifies_only_it(siak) -> None:  # noqa: ANN001
    """A drill step can restore part of a database (tables:), like `restore --table`; its verify
    step compares those tables only, counts and content, and a name the backup lacks fails the step."""
    siak.playbook("one-table", {"policy": "siak", "steps": [
        {"name": "restore penduduk", "restore": {"source": "db", "tables": ["penduduk"]}},
        {"name": "check", "verify": {"source": "db"}},
        {"name": "count", "sql": {"source": "db", "query": "select count(*) from penduduk", "expect": {"equals": "120"}}},
        {"name": "alone", "sql": {"source": "db", "query": "select to_regclass('arsip.dokumen') is null",
                                  "expect": {"equals": "t"}}},
    ]})
    code, plan, err = siak.run_json("drill", "one-table", "--dry-run")
    assert code == 0, err
    planned = {s["name"]: s for s in plan["steps"]}
    assert planned["restore penduduk"]["tables"] == ["public.penduduk"]
    assert planned["check"]["checks"] == ["row counts and content hashes of the 1 restored tables"]
    code, report, err = siak.run_json("drill", "one-table")
    assert code == 0, err
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["status"] == "passed" for s in steps.values()), steps
    assert steps["restore penduduk"]["tables"] == ["public.penduduk"]
    assert any("FK CONSTRAINT public audit" in s for s in steps["restore penduduk"]["skipped"])
    assert steps["check"]["tables"] == 1 and steps["check"]["rows"] == 120          # not the other 2 tables
    assert "content of 1 tables equal to the backup" in steps["check"]["detail"]

    siak.playbook("no-such-table", {"policy": "siak", "steps": [
        {"name": "restore", "restore": {"source": "db", "tables": ["nope"]}}]})
    code, report, err = siak.run_json("drill", "no-such-table")
    assert code != 0 and "holds no table 'nope'" in (err + str(report)) and "Traceback" not in err
