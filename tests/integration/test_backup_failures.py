"""Failure paths of `drtool backup` through the real CLI: each a clear error, exit 1, nothing lost."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from drtool.locking import PolicyLock
from tests.support.workspace import CANARY_PASSWORD, make_workspace

pytestmark = pytest.mark.integration


@pytest.fixture()
def ws(tmp_path, s3_server, bucket):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("payload")
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(data)]}}])
    return ws


def test_dead_s3_endpoint_is_a_clear_error(ws):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    text = ws.config.read_text().replace(ws.repo_url.split("/")[2], f"127.0.0.1:{dead}")
    ws.config.write_text(text)
    started = time.monotonic()
    proc = ws.drtool("backup", "docs")
    assert proc.returncode == 1
    assert "127.0.0.1" in proc.stderr and ("reach" in proc.stderr or "unreachable" in proc.stderr.lower())
    assert time.monotonic() - started < 60
    runs = json.loads(ws.drtool("runs", "--json").stdout)
    assert runs[0]["status"] == "failed"     # the failure is recorded too


def test_wrong_repository_password(ws):
    ws.drtool("backup", "docs", check=True)
    (ws.root / "repo.pass").write_text("not-the-password")
    proc = ws.drtool("backup", "docs")
    assert proc.returncode == 1
    assert "wrong password" in proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout


def test_secret_file_readable_by_others_is_refused(ws):
    (ws.root / "repo.pass").chmod(0o644)
    proc = ws.drtool("backup", "docs")
    assert proc.returncode == 2 and "chmod 600" in proc.stderr


def test_overlapping_run_is_refused(ws):
    lock = PolicyLock(ws.root / "state", "docs")
    lock.acquire("other-run")
    try:
        proc = ws.drtool("backup", "docs")
    finally:
        lock.release()
    assert proc.returncode == 1
    assert "already running" in proc.stderr and "other-run" in proc.stderr
    assert ws.drtool("backup", "docs").returncode == 0      # the lock is gone once released


def test_password_never_in_any_process_argv(ws):
    seen: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
                    except OSError:
                        pass
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    try:
        ws.drtool("backup", "docs", check=True)
    finally:
        stop.set()
        t.join()
    assert any("restic" in c for c in seen), "the sampler never saw restic run"
    assert not [c for c in seen if CANARY_PASSWORD in c]


def test_a_failed_first_run_stores_no_configuration_bundle(ws, tmp_path):
    # The configuration bundle is stored only once every source succeeded: a failed run leaves
    # its record and nothing else. (Starting its restic early, to overlap the backup, was tried
    # and dropped: its lock made the rollback's forget of a cancelled run wait.)
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(tmp_path / "not-there")]}}])
    proc = ws.drtool("backup", "docs")
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    assert json.loads(ws.restic("snapshots", "--json").stdout) == []
    assert ws.restic("list", "locks").stdout.split() == []          # the interrupted restic left no lock
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(tmp_path / "data")]}}])
    run = json.loads(ws.drtool("backup", "docs", "--json", check=True).stdout.strip().splitlines()[-1])
    assert run["details"]["config_bundle"]["snapshot"]
    assert len(json.loads(ws.restic("snapshots", "--json", "--tag", "kind=config").stdout)) == 1
