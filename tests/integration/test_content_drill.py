"""Drills and restores prove content, through the real CLI, restic, S3 and PostgreSQL.

A restore whose rows were changed in place (same counts) fails its verify step naming the
table; the wrong night's data, checked against the newer night's fingerprint, fails too,
where counts alone pass.
"""

from __future__ import annotations

import sys

import pytest

from drtool.config.models import PostgresSource
from drtool.execute import LocalRunner
from drtool.sources.postgres import PostgresDatabase
from tests.support.drtool_env import make_env
from tests.support.postgres import pg_server

pytestmark = pytest.mark.integration

# A command step that changes one value of the restored scratch database, as a bad restore
# (wrong encoding, a scrambled column) would; the count stays 200.
TAMPER = ("import os, subprocess; subprocess.run([os.path.join(os.environ['PG_BIN'], 'psql'), '-h', '127.0.0.1', "
          "'-p', os.environ['DRTOOL_PG_PORT'], '-U', os.environ['DRTOOL_PG_USER'], '-d', "
          "os.environ['DRTOOL_DATABASE_SIAK_DB'], '-c', \"UPDATE penduduk SET nama = 'tertukar' WHERE nik = '16717'\"],"
          " check=True)")


@pytest.fixture(scope="module")
def prod_pg():
    yield from pg_server()


@pytest.fixture(scope="module")
def restore_pg():
    yield from pg_server()


def admin(server) -> PostgresDatabase:  # noqa: ANN001
    return PostgresDatabase(PostgresSource(database="postgres", port=server.port, bin_dir=server.bin_dir),
                            LocalRunner())


def seed(server, db: str) -> None:  # noqa: ANN001
    a = admin(server)
    a.query(server.target(), f"CREATE DATABASE {db}")
    a.query(server.target(), "CREATE TABLE penduduk (nik text PRIMARY KEY, nama text NOT NULL);"
                             "CREATE TABLE keluarga (no_kk text PRIMARY KEY);"
                             "INSERT INTO penduduk SELECT '1671' || g, 'warga ' || g FROM generate_series(1, 200) g;"
                             "INSERT INTO keluarga SELECT 'KK' || g FROM generate_series(1, 30) g;", database=db)


def test_drill_verify_fails_naming_the_table_whose_content_changed(tmp_path, s3_server, bucket, prod_pg,
                                                                   monkeypatch) -> None:
    seed(prod_pg, "siak")
    env = make_env(tmp_path, s3_server, bucket)
    env.policy("siak", [{"name": "siak-db", "postgres": {"database": "siak", "port": prod_pg.port,
                                                         "bin_dir": prod_pg.bin_dir}}])
    env.playbook("content", {"policy": "siak", "steps": [
        {"name": "restore", "restore": {"source": "siak-db"}},
        {"name": "proves content", "verify": {"source": "siak-db"}},
        # a command gets DRTOOL_* and its own env:, never drtool's environment
        {"name": "tamper", "command": {"argv": [sys.executable, "-c", TAMPER], "env": {"PG_BIN": prod_pg.bin_dir}}},
        {"name": "counts only", "verify": {"source": "siak-db", "content": False}, "on_failure": "continue"},
        {"name": "catches it", "verify": {"source": "siak-db"}, "on_failure": "continue"},
    ]})
    env.backup("siak")
    code, report, err = env.run_json("drill", "content")

    assert code == 1, err
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["proves content"]["status"] == "passed"
    assert "content of 2 tables equal to the backup" in steps["proves content"]["detail"]
    assert steps["tamper"]["status"] == "passed"
    assert steps["counts only"]["status"] == "passed"           # what counts alone would have said
    assert steps["catches it"]["status"] == "failed"
    assert ("1 differences from the backup fingerprint, first: siak.public.penduduk: content differs "
            "from the backup (same 200 rows") in steps["catches it"]["detail"]
    assert report["passed"] is False


def test_the_wrong_nights_set_fails_against_the_newer_fingerprint(tmp_path, s3_server, bucket, prod_pg,
                                                                  restore_pg, monkeypatch) -> None:
    from drtool.actions.common import open_repo
    from drtool.actions.restore import read_fingerprint
    from drtool.actions.select import snapshot_sets
    from drtool.sources.base import verify_restored

    seed(prod_pg, "arsip")
    env = make_env(tmp_path, s3_server, bucket)
    env.policy("arsip", [{"name": "db", "postgres": {"database": "arsip", "port": prod_pg.port,
                                                     "bin_dir": prod_pg.bin_dir, "globals": False}}])
    env.backup("arsip")                                                  # night 1
    admin(prod_pg).query(prod_pg.target(), "UPDATE penduduk SET nama = upper(nama) WHERE nik < '16715'",
                         database="arsip")
    env.backup("arsip")                                                  # night 2: same counts

    for key, value in env.env.items():
        monkeypatch.setenv(key, value)
    settings = env.settings()
    policy = settings.policy("arsip")
    handle = open_repo(settings, policy.repository)
    older, newer = snapshot_sets(handle.restic, policy, policy.source("db"), host="drill-test")
    url = f"postgresql://postgres@127.0.0.1:{restore_pg.port}/night1"
    # The real CLI restores night 1 and verifies it against its own fingerprint: it holds.
    code, out, err = env.run_json("restore", "arsip", "--source", "db", "--snapshot", older.run_id, "--target", url)
    assert code == 0, err
    assert out["verified"] is True and "content of 2 tables equal" in out["verification"]

    # Taken for night 2 (the newest), the same restore must fail, naming the table; counts cannot tell.
    newest = read_fingerprint(handle, newer)
    assert newest["databases"] == read_fingerprint(handle, older)["databases"]
    db = PostgresDatabase(policy.source("db").spec, LocalRunner())
    target = restore_pg.target()
    target.database = "night1"
    check = verify_restored(db, target, ["night1"], newest)
    assert [p.split(" (")[0] for p in check.problems] == ["night1.public.penduduk: content differs from the backup"]
    assert verify_restored(db, target, ["night1"], newest, content=False).problems == []
