"""One run lifecycle from every entry point: a CLI run records itself locally and offsite,
alerts through every channel (real HTTP and SMTP receivers on loopback), and rewrites the
metrics textfile and status file. Real restic and rclone S3."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drtool.catalog import Catalog
from tests.support.drtool_env import DrtoolEnv, data_root, make_env
from tests.support.receivers import http_receiver, smtp_receiver

pytestmark = pytest.mark.integration

HOOK_TOKEN = "hook-Token-7c1e2a90"


@pytest.fixture()
def receivers():
    with http_receiver() as web, smtp_receiver() as (smtp_port, mails):
        yield web, smtp_port, mails


def _configure(env: DrtoolEnv, web, smtp_port: int, metrics: Path) -> None:
    config = yaml.safe_load(env.config.read_text())
    config["notifications"] = {
        "on_success": True,
        "attempts": 2, "timeout": "5s",
        "webhooks": [{"url": web.url("/hook"), "headers": {"Authorization": {"env": "HOOK_TOKEN"}},
                      "body": '{"text": {{ message | tojson }}, "kind": "{{ event }}"}'}],
        "email": [{"host": "127.0.0.1", "port": smtp_port, "starttls": False, "from": "drtool@example.org",
                   "to": ["admin@example.org"]}],
        "healthchecks": [{"url": web.url("/hc/uuid-1"), "kinds": ["backup", "forget", "check"]}],
        "apprise": [{"url": f"ntfy://127.0.0.1:{web.port}/drtool-alerts", "events": ["backup_failed"]}],
    }
    config["metrics"] = {"textfile": str(metrics)}
    env.config.write_text(yaml.safe_dump(config, sort_keys=False))
    env.env["HOOK_TOKEN"] = HOOK_TOKEN


def _run(env: DrtoolEnv, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drtool", "-c", str(env.config), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env.env, **(extra_env or {})})


def test_failing_cli_backup_alerts_every_channel_with_its_cause(tmp_path, s3_server, bucket, receivers):
    web, smtp_port, mails = receivers
    env = make_env(tmp_path, s3_server, bucket)
    metrics = tmp_path / "textfile" / "drtool.prom"
    _configure(env, web, smtp_port, metrics)
    env.policy("docs", [{"name": "scans", "files": {"paths": [str(tmp_path / "no-such-dir")]}}])
    proc = _run(env, "backup", "docs")
    assert proc.returncode == 1, proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr

    hooks = [r for r in web.requests if r.path == "/hook"]
    kinds = [json.loads(r.body)["kind"] for r in hooks]
    assert kinds == ["backup_failed"]                                 # starts go to healthchecks only
    failed = json.loads(hooks[-1].body)
    assert "does not exist" in failed["text"]
    assert hooks[-1].headers["Authorization"] == HOOK_TOKEN          # header from a secret reference
    pings = [r.path for r in web.requests if r.path.startswith("/hc/")]
    assert pings == ["/hc/uuid-1/start", "/hc/uuid-1/fail"]
    fail_ping = next(r for r in web.requests if r.path == "/hc/uuid-1/fail")
    assert "duration_s=" in fail_ping.text and "does not exist" in fail_ping.text
    ntfy = [json.loads(r.body) for r in web.requests if r.path == "/"]
    assert len(ntfy) == 1 and ntfy[0]["topic"] == "drtool-alerts" and "does not exist" in ntfy[0]["message"]
    assert len(mails) == 1                                            # the failure (starts are not mailed)
    assert any(b"does not exist" in m.content for m in mails)

    # recorded locally (with the deliveries) and offsite, metrics and status file rewritten
    [run] = Catalog(env.state_dir).runs(policy="docs")
    assert run.status == "failed" and "does not exist" in run.error
    assert {d["channel"] for d in run.details["notifications"]} == {"webhook", "email", "healthcheck", "apprise"}
    assert all(d["ok"] for d in run.details["notifications"])
    offsite = s3_server.root / bucket / f"{env.prefix}.drtool" / "runs" / f"{run.id}.json"
    assert json.loads(offsite.read_text())["status"] == "failed"
    text = metrics.read_text()
    assert 'drtool_backup_last_run_success{policy="docs",repository="offsite"} 0.0' in text
    status = json.loads((env.state_dir / "status.json").read_text())
    assert status["policies"]["docs"]["last_runs"]["backup"]["status"] == "failed"
    assert HOOK_TOKEN not in json.dumps(run.to_dict()) + offsite.read_text() + proc.stderr + proc.stdout


def test_successful_runs_of_every_kind_are_recorded_offsite_and_signed(tmp_path, s3_server, bucket, receivers):
    web, smtp_port, _mails = receivers
    with data_root() as prod:
        (prod / "a.txt").write_text("A\n")
        env = make_env(tmp_path, s3_server, bucket)
        metrics = tmp_path / "textfile" / "drtool.prom"
        _configure(env, web, smtp_port, metrics)
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(prod)]}}], retention={"last": 1})
        for args in (("backup", "docs"), ("forget", "docs"), ("check", "docs")):
            proc = _run(env, *args)
            assert proc.returncode == 0, proc.stderr
    pings = [r.path for r in web.requests if r.path.startswith("/hc/")]
    assert pings == ["/hc/uuid-1/start", "/hc/uuid-1"] * 3
    done = next(r for r in web.requests if r.path == "/hc/uuid-1")
    assert "backup_succeeded: duration_s=" in done.text
    runs = {r.kind: r for r in Catalog(env.state_dir).runs(policy="docs")}
    assert set(runs) == {"backup", "forget", "check"} and all(r.ok for r in runs.values())
    records = s3_server.root / bucket / f"{env.prefix}.drtool" / "runs"
    for run in runs.values():
        path = records / f"{run.id}.json"
        assert path.is_file(), f"{run.kind} record not offsite"
        proc = _run(env, "verify-report", str(path))
        assert proc.returncode == 0 and "signature valid" in proc.stdout, proc.stderr
    assert 'drtool_check_last_run_success{policy="docs",repository="offsite"} 1.0' in metrics.read_text()


def test_unexpected_exception_is_recorded_failed_notified_and_reported_in_one_line(tmp_path, s3_server, bucket,
                                                                                   receivers, monkeypatch):
    web, smtp_port, _mails = receivers
    with data_root() as prod:
        (prod / "a.txt").write_text("A\n")
        env = make_env(tmp_path, s3_server, bucket)
        _configure(env, web, smtp_port, tmp_path / "m.prom")
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(prod)]}}])
        from drtool.actions import backup

        def bug(*args, **kwargs):
            raise TypeError("a bug in drtool")

        monkeypatch.setattr(backup, "_with_retries", bug)        # fault injection: a bug inside the run
        code, out, err = env.run("backup", "docs")
    assert code == 1
    assert "internal error" in err and "TypeError: a bug in drtool" in err and "Traceback" not in err
    [run] = Catalog(env.state_dir).runs(policy="docs")
    assert run.status == "failed" and "internal error: TypeError" in run.error
    crash = Path(run.details["crash_report"])
    assert crash.stat().st_mode & 0o777 == 0o600 and "Traceback" in crash.read_text()
    failed = [json.loads(r.body) for r in web.requests if r.path == "/hook"][-1]
    assert failed["kind"] == "backup_failed" and "TypeError" in failed["text"]


def test_secret_missing_at_run_time_is_recorded_and_alerted_with_exit_2(tmp_path, s3_server, bucket, receivers):
    web, smtp_port, _mails = receivers
    env = make_env(tmp_path, s3_server, bucket)
    _configure(env, web, smtp_port, tmp_path / "m.prom")
    env.policy("docs", [{"name": "scans", "files": {"paths": ["/etc/hostname"]}}])
    env.env.pop("DRILL_S3_SECRET")                            # the unit's environment lacks it tonight
    proc = subprocess.run([sys.executable, "-m", "drtool", "-c", str(env.config), "backup", "docs"],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in {**os.environ, **env.env}.items() if k != "DRILL_S3_SECRET"})
    assert proc.returncode == 2, proc.stderr
    assert "DRILL_S3_SECRET is not set" in proc.stderr
    [run] = Catalog(env.state_dir).runs(policy="docs")
    assert run.status == "failed" and run.details["exit_code"] == 2
    failed = [json.loads(r.body) for r in web.requests if r.path == "/hook"][-1]
    assert failed["kind"] == "backup_failed" and "DRILL_S3_SECRET" in failed["text"]


def test_corrupt_catalog_is_moved_aside_and_the_backup_still_runs(tmp_path, s3_server, bucket, receivers):
    web, smtp_port, _mails = receivers
    with data_root() as prod:
        (prod / "a.txt").write_text("A\n")
        env = make_env(tmp_path, s3_server, bucket)
        _configure(env, web, smtp_port, tmp_path / "m.prom")
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(prod)]}}])
        env.state_dir.mkdir(parents=True)
        (env.state_dir / "catalog.db").write_bytes(b"this is not an SQLite database" * 100)
        proc = _run(env, "backup", "docs")
    assert proc.returncode == 0, proc.stderr
    aside = list(env.state_dir.glob("catalog.db.corrupt-*"))
    assert len(aside) == 1
    [run] = Catalog(env.state_dir).runs(policy="docs")
    assert run.ok and run.details["catalog_recovered_from"] == str(aside[0])
    kinds = [json.loads(r.body)["kind"] for r in web.requests if r.path == "/hook"]
    assert "state_failed" in kinds


def test_locked_catalog_still_backs_up_records_offsite_alerts_and_exits_1(tmp_path, s3_server, bucket, receivers):
    web, smtp_port, _mails = receivers
    with data_root() as prod:
        (prod / "a.txt").write_text("A\n")
        env = make_env(tmp_path, s3_server, bucket)
        _configure(env, web, smtp_port, tmp_path / "m.prom")
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(prod)]}}])
        Catalog(env.state_dir)
        holder = sqlite3.connect(env.state_dir / "catalog.db")
        holder.execute("begin exclusive")                     # another process holds the catalog
        try:
            proc = _run(env, "backup", "docs", "--json")
        finally:
            holder.rollback()
            holder.close()
    assert proc.returncode == 1, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["status"] == "success" and "cannot be used" in record["details"]["local_record_error"]
    assert record["details"]["offsite_record"] is True
    offsite = s3_server.root / bucket / f"{env.prefix}.drtool" / "runs" / f"{record['id']}.json"
    assert json.loads(offsite.read_text())["status"] == "success"
    kinds = [json.loads(r.body)["kind"] for r in web.requests if r.path == "/hook"]
    assert "state_failed" in kinds and "backup_succeeded" in kinds
