"""The real daemon (a `drtool daemon` process) against real S3 and restic, with schedules of seconds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drtool.catalog import Catalog
from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration


def overlaps(a, b) -> bool:  # noqa: ANN001 - RunRecords
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_daemon_runs_jobs_then_stops_cleanly_on_sigterm(tmp_path: Path, s3_server, bucket) -> None:  # noqa: ANN001
    if not __import__("shutil").which("restic"):
        pytest.skip("restic is not installed")
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    for name in ("alpha", "beta"):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        (data / "records.txt").write_text(f"{name}\n" * 1000)
        ws.policy(name, [{"name": "files", "files": {"paths": [str(data)]}}], schedule="every 2s",
                  **({"forget_schedule": "every 3s", "retention": {"last": 2}} if name == "alpha" else {}))
    cfg = json.loads(json.dumps(__import__("yaml").safe_load(ws.config.read_text())))
    cfg["max_concurrent_jobs"] = 2
    cfg["timezone"] = "Asia/Jakarta"
    cfg["metrics"] = {"textfile": str(tmp_path / "metrics" / "drtool.prom")}
    ws.config.write_text(__import__("yaml").safe_dump(cfg))

    # Create the repository first (a manual run): the daemon then starts from a catalog with history.
    ws.drtool("backup", "beta", check=True, timeout=120)
    env = {**ws.env, "DRTOOL_DAEMON_GRACE": "20"}
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "drtool", "-v", "-c", str(ws.config), "daemon"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        catalog = Catalog(Path(cfg["state_dir"]))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # wait for a few completed runs of each job
            done = [r for r in catalog.runs(limit=200) if r.status != "running"]
            if all(sum(r.policy == p and r.kind == "backup" for r in done) >= 2 for p in ("alpha", "beta")) \
                    and any(r.kind == "forget" for r in done):
                break
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "daemon.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    runs = catalog.runs(limit=500)
    daemon_log = (tmp_path / "daemon.log").read_text()
    assert sum(r.trigger != "schedule" for r in runs) == 1
    assert all(r.status in ("success", "cancelled") for r in runs), [(r.kind, r.status, r.error) for r in runs]
    backups = {p: [r for r in runs if r.policy == p and r.kind == "backup"] for p in ("alpha", "beta")}
    assert all(len(v) >= 2 for v in backups.values()), daemon_log
    # Nothing overlapped: one run per policy at a time; forget never beside a backup of its repository.
    for records in backups.values():
        assert not any(overlaps(a, b) for i, a in enumerate(records) for b in records[i + 1:])
    forgets = [r for r in runs if r.kind == "forget"]
    all_backups = backups["alpha"] + backups["beta"]
    assert forgets and not any(overlaps(f, b) for f in forgets for b in all_backups)
    # No partial snapshot: every snapshot in the repository belongs to a successful run.
    snaps = json.loads(ws.restic("snapshots", "--json").stdout or "[]")
    good = {r.id for r in runs if r.status == "success"}
    run_tags = {t.split("=", 1)[1] for s in snaps for t in s.get("tags", []) if t.startswith("run=")}
    assert snaps and run_tags <= good
    assert (tmp_path / "metrics" / "drtool.prom").read_text().count('drtool_backup_last_run_success{') == 2
    assert "canary-Repo-Pw" not in daemon_log
