"""The issue's example, as written: playbooks/siak-drill.yaml against real PostgreSQL + files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from drtool.config.models import PostgresSource
from drtool.execute import LocalRunner
from tests.support.drtool_env import assert_no_leftovers, child_pids, data_root, make_env, private_tmp
from tests.support.postgres import pg_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prod_pg():
    yield from pg_server()


def admin(server):  # noqa: ANN001, ANN201
    from drtool.sources.postgres import PostgresDatabase
    return PostgresDatabase(PostgresSource(database="postgres", port=server.port), LocalRunner())


def test_siak_drill_example_passes_and_leaves_nothing(tmp_path, s3_server, bucket, prod_pg):
    db, target = admin(prod_pg), prod_pg.target()
    db.query(target, "CREATE DATABASE siak")
    db.query(target, "CREATE TABLE penduduk (nik text PRIMARY KEY, nama text NOT NULL);"
                     "CREATE TABLE keluarga (no_kk text PRIMARY KEY);"
                     "INSERT INTO penduduk SELECT '1671' || g, 'warga ' || g FROM generate_series(1, 500) g;"
                     "INSERT INTO keluarga SELECT 'KK' || g FROM generate_series(1, 120) g;", database="siak")
    with data_root() as prod_files:
        (prod_files / "scans").mkdir()
        (prod_files / "scans" / "ktp-0001.pdf").write_bytes(b"%PDF-1.4 scan\n" * 500)
        env = make_env(tmp_path / "setup", s3_server, bucket)
        env.policy("siak", [
            {"name": "siak-db", "postgres": {"database": "siak", "port": prod_pg.port}},
            {"name": "scans", "files": {"paths": [str(prod_files / "scans")]}},
        ], targets={"rpo": "1h", "rto": "30m"})
        shutil.copy(REPO / "playbooks" / "siak-drill.yaml", env.root / "playbooks" / "siak-drill.yaml")
        env.backup("siak")
        with private_tmp() as drill_tmp:
            children = child_pids()
            code, report, err = env.run_json("drill", "siak-drill")
            assert code == 0, json.dumps(report, indent=1) + err
            assert_no_leftovers(drill_tmp, children, ports=_ports(report))
    assert report["passed"] and [s["status"] for s in report["steps"]] == ["passed"] * 5
    restore = report["steps"][0]
    names = [p["name"] for p in restore["phases"]]
    assert names[:2] == ["read fingerprint", "start scratch instance"] and len(names) > 2
    assert any(p["bytes"] for p in restore["phases"])
    assert "tables, 620 rows: exactly the counts recorded at backup time" in report["steps"][1]["detail"]
    assert report["steps"][2]["value"] == "500"
    assert report["rto"] == {"target_s": 1800.0, "achieved_s": report["rto"]["achieved_s"], "met": True}
    assert set(report["snapshot"]["sources"]) == {"siak-db", "scans"}


def _ports(report: dict) -> tuple[int, ...]:
    found = re.findall(r"127\.0\.0\.1:(\d+)", " ".join(s["detail"] for s in report["steps"]))
    return tuple(int(p) for p in found)
