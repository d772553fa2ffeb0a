"""Full drills for MariaDB and SQLite sources: scratch instance, verify, sql, command env."""

from __future__ import annotations

import json
import re
import sqlite3
import sys

import pytest

from tests.support.drtool_env import assert_no_leftovers, child_pids, data_root, make_env, private_tmp
from tests.support.mariadb import mariadb_server


@pytest.fixture(scope="module")
def prod_maria():
    yield from mariadb_server()


def test_mariadb_drill_passes_and_tears_down(tmp_path, s3_server, bucket, prod_maria):
    prod_maria.admin_sql("CREATE DATABASE siak; USE siak;"
                         "CREATE TABLE penduduk (nik varchar(20) PRIMARY KEY, nama text) ENGINE=InnoDB;"
                         "INSERT INTO penduduk VALUES ('16710001','Ani'),('16710002','Budi'),('16710003','Citra');")
    env = make_env(tmp_path / "setup", s3_server, bucket)
    env.env["PROD_MARIA_PW"] = prod_maria.password.reveal()
    env.policy("siak-maria", [{"name": "siak-db", "mariadb": {
        "database": "siak", "port": prod_maria.port, "password": {"env": "PROD_MARIA_PW"}}}])
    check = "import os, sys; sys.exit(0 if os.environ.get('DRTOOL_MARIADB_PORT') and os.environ.get('MYSQL_PWD') else 4)"
    env.playbook("maria-drill", {"policy": "siak-maria", "targets": {"rto": "10m"}, "steps": [
        {"name": "restore database", "restore": {"source": "siak-db"}},
        {"name": "database matches backup", "verify": {"source": "siak-db"}},
        {"name": "residents present", "sql": {"source": "siak-db", "query": "select count(*) from penduduk",
                                              "expect": {"equals": 3}}},
        {"name": "instance reachable", "command": [sys.executable, "-c", check]},
    ]})
    env.backup("siak-maria")
    with private_tmp() as drill_tmp:
        children = child_pids()
        code, report, err = env.run_json("drill", "maria-drill")
        assert code == 0, json.dumps(report, indent=1) + err
        ports = tuple(int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", report["steps"][0]["detail"]))
        assert_no_leftovers(drill_tmp, children, ports=ports)
    assert [s["status"] for s in report["steps"]] == ["passed"] * 4
    assert "1 tables, 3 rows" in report["steps"][1]["detail"]
    assert prod_maria.password.reveal() not in json.dumps(report)


def test_sqlite_drill_passes(tmp_path, s3_server, bucket):
    with data_root() as prod:
        db = sqlite3.connect(prod / "siak.sqlite")
        db.execute("create table penduduk (nik text primary key, nama text)")
        db.executemany("insert into penduduk values (?, ?)", [("1", "Ani"), ("2", "Budi")])
        db.commit()
        db.close()
        env = make_env(tmp_path / "setup", s3_server, bucket)
        env.policy("siak-lite", [{"name": "siak-db", "sqlite": {"path": str(prod / "siak.sqlite")}}])
        env.playbook("lite-drill", {"policy": "siak-lite", "steps": [
            {"name": "restore database", "restore": {"source": "siak-db"}},
            {"name": "database matches backup", "verify": {"source": "siak-db"}},
            {"name": "names", "sql": {"source": "siak-db", "query": "select nama from penduduk order by nik",
                                      "expect": {"equals": "Ani"}}},
        ]})
        env.backup("siak-lite")
        with private_tmp() as drill_tmp:
            children = child_pids()
            code, report, err = env.run_json("drill", "lite-drill")
            assert code == 0, json.dumps(report, indent=1) + err
            assert_no_leftovers(drill_tmp, children)
    assert [s["status"] for s in report["steps"]] == ["passed"] * 3
