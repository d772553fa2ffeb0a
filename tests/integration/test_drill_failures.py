"""Drills that must fail: each names what failed and exits 1; a bad playbook exits 2.

Real restic + rclone S3 + SQLite; no database server needed, so these stay quick.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time

import pytest

from tests.support.drtool_env import (
    assert_no_leftovers, child_pids, data_root, make_env, private_tmp)


@pytest.fixture(scope="module")
def prod():
    with data_root() as base:
        (base / "scans").mkdir()
        (base / "scans" / "ktp.txt").write_text("NIK 1671\n" * 100)
        db = sqlite3.connect(base / "siak.sqlite")
        db.execute("create table penduduk (nik text primary key, nama text)")
        db.executemany("insert into penduduk values (?, ?)", [(f"1671{i:04d}", f"warga {i}") for i in range(25)])
        db.commit()
        db.close()
        yield base


@pytest.fixture(scope="module")
def env(tmp_path_factory, s3_server, prod):
    bucket = f"drill-failures-{os.getpid() % 1000}"
    (s3_server.root / bucket).mkdir()
    env = make_env(tmp_path_factory.mktemp("drill-failures"), s3_server, bucket)
    env.policy("siak", [{"name": "siak-db", "sqlite": {"path": str(prod / "siak.sqlite")}},
                        {"name": "scans", "files": {"paths": [str(prod / "scans")]}}])
    env.backup("siak")
    return env


@pytest.fixture()
def drill_tmp():
    with private_tmp() as base:
        yield base


RESTORE_DB = {"name": "restore database", "restore": {"source": "siak-db"}}


def drill(env, name: str, doc: dict) -> tuple[int, dict, str]:
    env.playbook(name, {"policy": "siak", **doc})
    return env.run_json("drill", name)


def test_wrong_sql_expectation_fails_naming_the_step(env, drill_tmp):
    children = child_pids()
    code, report, err = drill(env, "wrong-sql", {"steps": [
        RESTORE_DB,
        {"name": "database matches backup", "verify": {"source": "siak-db"}},
        {"name": "residents present", "sql": {"source": "siak-db", "query": "select count(*) from penduduk",
                                              "expect": {"equals": 999}}},
        {"name": "after", "verify": {"source": "siak-db"}},
    ]})
    assert code == 1 and report["passed"] is False
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert statuses == {"restore database": "passed", "database matches backup": "passed",
                        "residents present": "failed", "after": "skipped"}
    sql_step = report["steps"][2]
    assert sql_step["detail"].startswith("got '25', expected 999") and sql_step["value"] == "25"
    assert "residents present" in err
    assert_no_leftovers(drill_tmp, children)


def test_on_failure_continue_runs_the_later_steps(env, drill_tmp):
    code, report, _ = drill(env, "continue", {"steps": [
        RESTORE_DB,
        {"name": "too many", "on_failure": "continue",
         "sql": {"source": "siak-db", "query": "select count(*) from penduduk", "expect": {"max": 3}}},
        {"name": "names look right", "sql": {"source": "siak-db", "query": "select nama from penduduk limit 1",
                                             "expect": {"regex": "^warga"}}},
    ]})
    assert code == 1
    assert [s["status"] for s in report["steps"]] == ["passed", "failed", "passed"]


def test_rto_target_too_small_is_a_breach(env, drill_tmp):
    code, report, err = drill(env, "rto-breach", {"targets": {"rto": "0.01s"}, "steps": [
        RESTORE_DB, {"name": "database matches backup", "verify": {"source": "siak-db"}}]})
    assert code == 1
    assert all(s["status"] == "passed" for s in report["steps"])
    assert report["rto"]["met"] is False and report["rto"]["achieved_s"] > 0.01
    assert any(f.startswith("RTO breached") for f in report["failures"]) and "RTO breached" in err


def test_step_timeout_stops_its_processes_and_skips_the_rest(env, drill_tmp):
    children = child_pids()
    started = time.monotonic()
    code, report, _ = drill(env, "timeout", {"steps": [
        RESTORE_DB,
        {"name": "slow check", "timeout": "1s", "command": [sys.executable, "-c", "import time; time.sleep(60)"]},
        {"name": "never runs", "verify": {"source": "siak-db"}},
    ]})
    assert code == 1
    slow = report["steps"][1]
    assert slow["status"] == "timed_out" and 1.0 <= slow["duration_s"] < 10
    # the command and the supervisor it runs under (drtool/supervise.py)
    assert "stopped 2 of its processes" in slow["detail"]
    assert report["steps"][2]["status"] == "skipped" and "slow check" in report["steps"][2]["detail"]
    assert time.monotonic() - started < 55
    assert_no_leftovers(drill_tmp, children)


def test_rpo_breach_when_the_snapshot_is_older_than_the_target(env, drill_tmp):
    time.sleep(1.2)   # the module's backup is now older than 1s
    code, report, err = drill(env, "rpo-breach", {"targets": {"rpo": "1s"}, "steps": [RESTORE_DB]})
    assert code == 1 and report["steps"][0]["status"] == "passed"
    assert report["rpo"]["met"] is False and report["rpo"]["achieved_s"] > 1
    assert "RPO breached" in err
    code, rows, _ = env.run_json("status")
    assert rows[0]["last_drill"]["passed"] is False
    assert code == 1 and "drill-failed" in rows[0]["problems"]      # status exits non-zero on a breach


def test_bad_playbook_exits_2_with_file_and_line(env, tmp_path):
    bad = tmp_path / "bad-drill.yaml"
    bad.write_text("name: bad-drill\npolicy: siak\nsteps:\n  - name: restore\n    restore: {source: siak-db, int: scratch}\n")
    proc = env.run_subprocess("drill", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:5:" in proc.stderr and "unknown key" in proc.stderr
    wrong_source = tmp_path / "wrong-source.yaml"
    wrong_source.write_text("name: ws\npolicy: siak\nsteps:\n  - name: r\n    restore: {source: nope}\n")
    code, _out, err = env.run("drill", str(wrong_source))
    assert code == 2 and f"{wrong_source}:5:" in err and "no source 'nope'" in err


def test_ctrl_c_tears_down_and_records_the_drill(env, drill_tmp):
    env.playbook("interrupted", {"policy": "siak", "steps": [
        {"name": "restore scans", "restore": {"source": "scans"}},
        {"name": "long check", "command": [sys.executable, "-c", "import time; time.sleep(120)"]},
    ]})
    proc = env.start_subprocess("drill", "interrupted")
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("drtool-drill-scans") for p in drill_tmp.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not list(drill_tmp.iterdir())
    from drtool.catalog import Catalog
    record = Catalog(env.state_dir).last_run("siak", "drill")
    assert record.status == "cancelled" and "interrupted" in (record.error or "")


def test_changed_data_in_the_bucket_fails_the_restore(tmp_path, s3_server, bucket, drill_tmp):
    with data_root() as base:
        (base / "scans").mkdir()
        (base / "scans" / "kk.bin").write_bytes(os.urandom(30_000))
        env = make_env(tmp_path / "setup", s3_server, bucket)
        env.policy("siak", [{"name": "scans", "files": {"paths": [str(base / "scans")]}}])
        env.backup("siak")
    packs = [p for p in (env.repo_dir / "data").rglob("*") if p.is_file()]
    assert packs
    for pack in packs:                       # flip one byte in the middle of every pack
        raw = bytearray(pack.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        pack.write_bytes(bytes(raw))
    children = child_pids()
    code, report, err = drill(env, "tampered", {"steps": [
        {"name": "restore scans", "restore": {"source": "scans"}},
        {"name": "scans match backup", "verify": {"source": "scans"}}]})
    assert code == 1, json.dumps(report, indent=1)
    assert report["steps"][0]["status"] == "failed", report["steps"]
    assert "restore scans" in err
    assert_no_leftovers(drill_tmp, children)
