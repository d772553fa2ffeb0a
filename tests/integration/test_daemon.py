"""The real daemon (a `drtool daemon` process) against real S3 and restic, with schedules of seconds.

One daemon, two phases:

1. backups of two policies every 2 s, retention every 3 s and a files drill every 4 s, all on one
   repository, plus a policy that is never backed up (the watchdog must notice it): wait until
   each job has run, the drill's verdict is in the metrics textfile and the breach reached the
   webhook;
2. SIGHUP reloads a configuration whose only schedule is a new policy's backup of a 256 GiB
   sparse file (restic is busy for minutes, uploading almost nothing); SIGTERM once restic is
   reading it: after a 1 s grace the daemon cancels it, leaves no snapshot of it and a
   "cancelled" run record, and exits 0.
"""

from __future__ import annotations

import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from drtool.catalog import Catalog, RunRecord
from tests.support.drtool_env import data_root
from tests.support.hung import hung_process_report
from tests.support.services import free_port
from tests.support.workspace import CANARY_PASSWORD, Workspace, make_workspace

pytestmark = pytest.mark.integration

SPARSE_BYTES = 256 << 30      # sparse: no disk used; restic needs minutes to read its zeros


def fetch(url: str) -> str:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8", "replace")
    except OSError:
        return ""


def overlaps(a: RunRecord, b: RunRecord) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


@pytest.fixture()
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP receiver: (url, bodies received)."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


@pytest.fixture()
def prod() -> Iterator[Path]:
    with data_root() as base:      # not under /tmp: see data_root (a files drill verifies modes)
        yield base


def wait_until(what: str, condition: Callable[[], bool], proc: subprocess.Popen, log_path: Path,
               timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, (f"timed out waiting for {what}:\n{log_path.read_text()}\n"
                                             f"{hung_process_report(proc.pid)}")
        time.sleep(0.2)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def restic_reading(daemon_pid: int | None, path: Path) -> int:
    """Bytes read so far by a restic child of the daemon (any restic: None) backing up `path` (0: none)."""
    pids = descendants(daemon_pid) if daemon_pid else [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if cmdline and cmdline[0].endswith(b"restic") and str(path).encode() in cmdline:
            return int(io["rchar"])
    return 0


def others_finished(log_path: Path, catalog: Catalog) -> bool:
    """Has every job the daemon started (but the bulk backup) left its run record?"""
    started = Counter(re.findall(r"starting (\S+) \(slot", log_path.read_text()))
    started.pop("backup:bulk", None)
    done = Counter(f"{r.kind}:{r.details.get('playbook') if r.kind == 'drill' else r.policy}"
                   for r in catalog.runs(limit=500) if r.trigger == "schedule" and r.status != "running")
    return all(done[job] >= n for job, n in started.items())


def set_config(ws: Workspace, **changes: object) -> dict:
    cfg = yaml.safe_load(ws.config.read_text())
    cfg.update(changes)
    ws.config.write_text(yaml.safe_dump(cfg))
    return cfg


def test_daemon_runs_jobs_then_stops_cleanly_on_sigterm(tmp_path: Path, s3_server, bucket,  # noqa: ANN001
                                                        webhook, prod) -> None:
    if not __import__("shutil").which("restic"):
        pytest.skip("restic is not installed")
    hook_url, hooks = webhook
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    for name in ("alpha", "beta", "stale"):
        (prod / name).mkdir()
        (prod / name / "records.txt").write_text(f"{name}\n" * 1000)
    alpha_sources = [{"name": "files", "files": {"paths": [str(prod / "alpha")]}}]
    ws.policy("alpha", alpha_sources, schedule="every 2s", forget_schedule="every 3s", retention={"last": 2},
              targets={"rpo": "1h"})
    beta_sources = [{"name": "files", "files": {"paths": [str(prod / "beta")]}}]
    ws.policy("beta", beta_sources, schedule="every 2s")
    ws.policy("stale", [{"name": "files", "files": {"paths": [str(prod / "stale")]}}], targets={"rpo": "1h"})
    drill = {"policy": "alpha", "schedule": "every 4s", "targets": {"rto": "10m"}, "steps": [
        {"name": "restore files", "restore": {"source": "files"}},
        {"name": "files match backup", "verify": {"source": "files"}}]}
    ws.playbook("alpha-drill", drill)
    metrics = tmp_path / "metrics" / "drtool.prom"
    cfg = set_config(ws, max_concurrent_jobs=2, timezone="Asia/Jakarta", metrics={"textfile": str(metrics)},
                     notifications={"webhooks": [{"url": hook_url}]})

    # Create the repository first (a manual run): the daemon starts from a catalog with history,
    # and the drill has a snapshot to restore from its first slot on.
    ws.drtool("backup", "alpha", check=True, timeout=120)
    env = {**ws.env, "DRTOOL_DAEMON_GRACE": "1", "DRTOOL_WATCHDOG_SECONDS": "5"}
    log_path = tmp_path / "daemon.log"
    pages_port = free_port()
    with open(log_path, "w") as log:        # the child has its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "drtool", "-v", "-c", str(ws.config), "daemon",
                                 "--http", f"127.0.0.1:{pages_port}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    catalog = Catalog(Path(cfg["state_dir"]))
    bulk = tmp_path / "bulk"
    try:
        def phase_one_done() -> bool:
            done = [r for r in catalog.runs(limit=500) if r.trigger == "schedule"]
            backups = [r.policy for r in done if r.kind == "backup"]
            text = metrics.read_text() if metrics.exists() else ""
            return (backups.count("alpha") >= 2 and backups.count("beta") >= 2
                    and any(r.kind == "forget" for r in done) and any(r.kind == "drill" for r in done)
                    and 'drtool_drill_passed{playbook="alpha-drill",policy="alpha"}' in text
                    and any(h["event"] == "rpo_breach" for h in hooks))
        wait_until("backups, forget, drill, metrics and the watchdog", phase_one_done, proc, log_path, 90)  # forget runs ~35 s in under load
        # The dashboard is served on loopback and rebuilt after the jobs: the drill is on its page.
        wait_until("the dashboard page of alpha with its drill",
                   lambda: "alpha-drill" in fetch(f"http://127.0.0.1:{pages_port}/policy-alpha.html"),
                   proc, log_path, 20)
        # One log line per finished job: outcome, duration, bytes, run id.
        assert re.search(r"backup:alpha success in \d+\.\ds, \d+ bytes added, run \S+", log_path.read_text())

        # Phase 2: a reload drops the forget and drill schedules and brings a long backup;
        # SIGTERM while restic reads it.
        bulk.mkdir()
        with open(bulk / "disk.img", "wb") as sparse:
            sparse.truncate(SPARSE_BYTES)
        ws.policy("bulk", [{"name": "disk", "files": {"paths": [str(bulk)]}}], schedule="every 2s")
        ws.policy("alpha", alpha_sources, retention={"last": 2}, targets={"rpo": "1h"})
        ws.policy("beta", beta_sources)
        ws.playbook("alpha-drill", {k: v for k, v in drill.items() if k != "schedule"})
        proc.send_signal(signal.SIGHUP)
        # Only the bulk backup runs at SIGTERM: every other job that started has finished (a cancel
        # landing while restic is already committing is an engine race of its own, not the subject
        # here), and restic has read 64 MiB of the big file, so it is well inside it.
        wait_until("restic to read the bulk file, other jobs done",
                   lambda: restic_reading(proc.pid, bulk) > 64 << 20 and others_finished(log_path, catalog),
                   proc, log_path, 90)      # once (CI under load) a backup of alpha had not ended after 30 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    daemon_log = log_path.read_text()
    runs = catalog.runs(limit=500)
    assert [r.kind for r in runs if r.trigger != "schedule"] == ["backup"]
    assert not [r for r in runs if r.status == "running"]
    _before, reloaded, after = daemon_log.partition("configuration reloaded: 1 scheduled job(s)")
    assert reloaded and re.findall(r"starting (\S+) \(slot", after) == ["backup:bulk"], daemon_log

    # SIGTERM: the bulk backup was cancelled after the grace period and left nothing behind.
    bulk_runs = [r for r in runs if r.policy == "bulk"]
    assert [(r.status, r.snapshots) for r in bulk_runs] == [("cancelled", [])], daemon_log
    assert "grace period over: cancelling backup:bulk" in daemon_log
    assert restic_reading(None, bulk) == 0                            # restic was stopped, not orphaned
    assert all(r.status in ("success", "cancelled") for r in runs), [(r.kind, r.policy, r.status, r.error)
                                                                    for r in runs]

    # Runs landed in the catalog; nothing overlapped that must not: runs of one policy never
    # (backup/backup, backup/drill, backup/forget), and forget never beside anything on the repository.
    backups = {p: [r for r in runs if r.policy == p and r.kind == "backup" and r.status == "success"]
               for p in ("alpha", "beta")}
    assert len(backups["alpha"]) >= 3 and len(backups["beta"]) >= 2, daemon_log
    forgets = [r for r in runs if r.kind == "forget"]
    assert forgets
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.policy == b.policy or "forget" in (a.kind, b.kind):
                assert not overlaps(a, b), f"{a.kind} {a.policy} {a.id} overlaps {b.kind} {b.policy} {b.id}"

    # No partial snapshot: every snapshot in the repository belongs to a successful run.
    snaps = json.loads(ws.restic("snapshots", "--json").stdout or "[]")
    good = {r.id for r in runs if r.status == "success"}
    run_tags = {t.split("=", 1)[1] for s in snaps for t in s.get("tags", []) if t.startswith("run=")}
    assert snaps and run_tags <= good
    assert not [s for s in snaps if "policy=bulk" in s.get("tags", [])]

    # The scheduled drill restored and verified, and its verdict reached the metrics textfile.
    drills = [r for r in runs if r.kind == "drill"]
    assert drills and all(r.status == "success" and r.details["playbook"] == "alpha-drill" for r in drills)
    text = metrics.read_text()
    assert 'drtool_drill_passed{playbook="alpha-drill",policy="alpha"} 1' in text
    assert 'drtool_drill_rto_target_seconds{playbook="alpha-drill",policy="alpha"} 600' in text
    assert 'drtool_drill_rto_achieved_seconds{playbook="alpha-drill",policy="alpha"} ' in text
    assert text.count("drtool_backup_last_run_success{") == 3                   # alpha, beta, bulk
    assert 'drtool_backup_last_run_success{policy="bulk",repository="offsite"} 0' in text
    assert 'drtool_rpo_breached{policy="alpha",repository="offsite"} 0' in text

    # Notifications: the watchdog's breach once (not once per round), the cancellation, no failure.
    events = [h["event"] for h in hooks]
    assert [h["policy"] for h in hooks if h["event"] == "rpo_breach"] == ["stale"], hooks
    assert "backup_cancelled" in events and not {"backup_failed", "drill_failed", "forget_failed"} & set(events)
    assert CANARY_PASSWORD not in daemon_log and CANARY_PASSWORD not in json.dumps(hooks)
