"""drtool itself killed mid-backup (a stream and a files source), the daemon stopped mid-backup,
two runs of one policy at once, and restic locks left by dead processes here and on another
host (with `drtool unlock`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import (
    HOST,
    Site,
    assert_latest_is_good,
    assert_no_leak,
    assert_no_orphans,
    assert_no_partial,
    assert_nothing_usable,
    assert_one_clear_error,
    assert_recorded,
    files_site,
    next_run_succeeds,
    pg_site,
    stop_after,
    wait_for_child,
)

pytestmark = pytest.mark.integration


def _interrupted_then_swept(site: Site, started, policy: str, db_sources: list[str],  # noqa: ANN001
                            cut: str | None) -> None:
    """After drtool died: its children died with it, nothing of the run can be restored, and the
    next backup marks the run interrupted (locally and offsite, with an alert), removes what the
    dead run left, and succeeds.

    `cut` is the stream that was cut (None: a files source, one restic tree snapshot). Another
    stream of the same source (globals.sql) may have committed on its own before drtool died:
    its set has no fingerprint.json, so the runbook never pins it, and the next run removes it."""
    started.kill()
    assert_no_orphans(site)
    killed = site.last_run(policy)
    assert killed["status"] == "running"            # what the dead process left; the next run decides
    if cut is None:
        assert_no_partial(site, killed["id"])
    else:
        assert_nothing_usable(site, killed["id"], cut)
    assert_latest_is_good(site, policy, db_sources, only=cut)
    assert site.locks(), "restic was SIGKILLed holding its lock: one is expected here"
    next_run_succeeds(site, policy, db_sources)     # also: no lock left afterwards
    swept = next(r for r in site.runs(policy) if r["id"] == killed["id"])
    assert_recorded(site, swept, "interrupted", "drtool stopped before the run finished")
    assert_no_partial(site, killed["id"])           # the debris is gone
    assert_no_leak(site)


def test_drtool_killed_mid_stream(make_site, pg_server, receiver) -> None:  # noqa: ANN001
    site = pg_site(make_site, pg_server, receiver)
    next_run_succeeds(site, "siak", ["siak-db"])
    site.pause_next_dump()
    started = site.start("backup", "siak")
    pg_dump = site.paused_dump(started.pid)
    stop_after(pg_dump, 6 << 20, owner=started)     # 6 of 16 MB streamed into restic, then drtool dies
    _interrupted_then_swept(site, started, "siak", ["siak-db"], cut=f"{site.pg_db}.pgdump")


def test_drtool_killed_mid_files_backup(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver, size=24 << 20)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    (site.data / "akta" / "scan.bin").write_bytes(os.urandom(24 << 20))     # new content to read
    started = site.start("backup", "docs")
    restic = wait_for_child(started.pid, "restic", alive=lambda: started.proc.poll() is None)
    while "backup" not in Path(f"/proc/{restic}/cmdline").read_text():      # the probe comes first
        restic = wait_for_child(started.pid, "restic")
    stop_after(restic, 8 << 20, "rchar", owner=started)
    _interrupted_then_swept(site, started, "docs", [], cut=None)


def test_daemon_stopped_mid_backup(make_site, pg_server, receiver) -> None:  # noqa: ANN001
    site = pg_site(make_site, pg_server, receiver)
    next_run_succeeds(site, "siak", ["siak-db"])
    site.policy("siak", [{"name": "siak-db", "postgres": {"database": site.pg_db, "port": pg_server.port,
                                                         "bin_dir": site.pg_bin}}], schedule="every 2s")
    site.pause_next_dump()
    daemon = site.start("-v", "daemon", extra_env={"DRTOOL_DAEMON_GRACE": "0", "DRTOOL_WATCHDOG_SECONDS": "600"})
    pg_dump = site.paused_dump(daemon.pid, timeout=90)
    stop_after(pg_dump, 6 << 20, owner=daemon)      # mid-stream when the stop comes
    daemon.proc.send_signal(signal.SIGTERM)
    done = daemon.wait(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    site.policy("siak", [{"name": "siak-db", "postgres": {"database": site.pg_db, "port": pg_server.port,
                                                         "bin_dir": pg_server.bin_dir}}])
    cancelled = site.last_run("siak")
    assert cancelled["details"].get("process") and cancelled["status"] == "cancelled"
    assert_recorded(site, cancelled, "cancelled", "cancel")
    assert_no_partial(site, cancelled["id"])
    assert_latest_is_good(site, "siak", ["siak-db"])
    assert_no_orphans(site)
    next_run_succeeds(site, "siak", ["siak-db"])
    assert_no_leak(site)


def test_second_run_of_a_policy_is_refused_and_the_first_unharmed(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver, size=24 << 20)
    first = site.start("backup", "docs")
    wait_for_child(first.pid, "restic")
    second = site.drtool("backup", "docs")
    assert_one_clear_error(second, r"policy 'docs' is already running \(pid \d+, run \S+-backup-")
    done = first.wait()
    assert done.returncode == 0, done.stderr
    runs = site.runs("docs")
    assert [r["status"] for r in runs] == ["success"]   # the refused run never started: nothing to record
    assert site.offsite(runs[0]["id"])["status"] == "success"
    assert site.locks() == []
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


# ------------------------------------------------------------------ restic locks

def leave_lock(site: Site, *, other_host: str | None = None, exclusive: bool = False) -> str:
    """A restic lock whose process was SIGKILLed (here, or on `other_host`): returns its file name.

    Shared: `restic backup --stdin` waiting on its stdin. Exclusive: `restic check` through the
    site's proxy slowed down, killed once its lock is on the server."""
    with lock_holder(site, other_host=other_host, exclusive=exclusive) as (proc, name):
        proc.kill()
        proc.wait()
        return name


@contextlib.contextmanager
def lock_holder(site: Site, *, other_host: str | None = None,
                exclusive: bool = False) -> Iterator[tuple[subprocess.Popen, str]]:
    """A live restic process holding a lock of the site's repository, and the lock's file name;
    killed on exit if still running."""
    locks_dir = site.repo_dir / "locks"
    before = set(os.listdir(locks_dir)) if locks_dir.exists() else set()
    url = site.proxy.repo_url(site.bucket, site.prefix) if exclusive else site.direct_url
    argv = ["restic", "--no-cache", "check"] if exclusive else \
        ["restic", "--no-cache", "backup", "--host", "elsewhere", "--stdin", "--stdin-filename", "x"]
    if other_host:
        argv = ["unshare", "--uts", "sh", "-c", f'hostname {other_host} && exec "$@"', "sh", *argv]
    env = {**site.env, "RESTIC_REPOSITORY": url, "RESTIC_PASSWORD": _password(site),
           "AWS_ACCESS_KEY_ID": site.s3.access_key, "AWS_SECRET_ACCESS_KEY": _s3_secret(site)}
    site.proxy.latency = 0.3 if exclusive else 0.0
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # rclone writes an object as `.rclone_*` first and renames it: only a finished lock counts.
            new = {name for name in (set(os.listdir(locks_dir)) if locks_dir.exists() else set()) - before
                   if re.fullmatch(r"[0-9a-f]{64}", name)}
            if new:
                break
            time.sleep(0.005)
        else:
            raise AssertionError("restic made no lock")
        yield proc, new.pop()
    finally:
        site.proxy.latency = 0.0
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _password(site: Site) -> str:
    return (site.root / "secrets" / "repo.pass").read_text().strip()


def _s3_secret(site: Site) -> str:
    return (site.root / "secrets" / "s3.secret").read_text().strip()


def test_stale_lock_of_a_dead_process_is_removed_by_the_next_run(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    site.policy("docs", [{"name": "scans", "files": {"paths": [str(site.data / "akta")]}}], retention={"last": 1})
    for _ in range(2):
        next_run_succeeds(site, "docs", files_sources=["scans"])
    # check and forget (with something to forget) take an exclusive lock: a dead process's lock,
    # exclusive or shared, is in the way and is removed first.
    for kind in ("check", "forget"):
        leave_lock(site)
        assert len(site.locks()) == 1
        proc = site.drtool(kind, "docs")
        assert proc.returncode == 0, proc.stderr
        run = site.last_run("docs", kind)
        assert run["status"] == "success" and site.offsite(run["id"])["status"] == "success"
        assert site.locks() == []
    assert site.last_run("docs", "forget")["details"]["forgotten_ids"] == 1
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_drtool_unlock_shows_and_removes_a_dead_process_lock(make_site) -> None:  # noqa: ANN001
    site = files_site(make_site)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    lock_file = leave_lock(site)
    proc = site.drtool("unlock", "docs")
    assert proc.returncode == 0, proc.stderr
    assert f"removed  {lock_file[:8]}  shared" in proc.stdout and "on this machine is gone" in proc.stdout
    assert site.locks() == []
    again = json.loads(site.drtool("unlock", "docs", "--json").stdout)
    assert again["found"] == [] and again["removed"] == []


def test_a_live_lock_is_waited_for_and_the_forget_then_runs(make_site) -> None:  # noqa: ANN001
    """An admin's restic (here: a backup waiting on its stdin) holds a lock while a forget starts:
    the forget says it waits, and runs once that restic is done, instead of failing the night."""
    site = files_site(make_site)
    site.policy("docs", [{"name": "scans", "files": {"paths": [str(site.data / "akta")]}}], retention={"last": 1})
    site.repository(lock_wait="90s")
    for _ in range(2):
        next_run_succeeds(site, "docs", files_sources=["scans"])
    with lock_holder(site) as (holder, _name):
        forget = subprocess.Popen(site.argv("-v", "forget", "docs"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=site.env)
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(forget.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any("waiting" in line for line in said) and forget.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        waiting = [line for line in said if "waiting" in line]
        assert waiting and forget.poll() is None, (forget.poll(), said)
        assert "locked by another restic process" in waiting[0] and "WARNING" in waiting[0], waiting
        holder.send_signal(signal.SIGINT)        # restic removes its own lock when interrupted
        holder.wait(30)
        out = forget.stdout.read()
        forget.wait(120)
        reader.join(10)
    assert forget.returncode == 0, "".join(said) + out
    run = site.last_run("docs", "forget")
    assert run["status"] == "success" and run["details"]["forgotten_ids"] == 1
    assert site.locks() == []
    assert_no_leak(site)


def test_lock_of_another_host_is_kept_named_and_removed_only_when_told(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    lock_file = leave_lock(site, other_host="records-old", exclusive=True)

    check = site.drtool("check", "docs")
    assert_one_clear_error(check, r"locked by another restic process.*records-old")
    assert "drtool unlock docs" in check.stderr or "drtool unlock POLICY" in check.stderr
    run = site.last_run("docs", "check")
    assert_recorded(site, run, "failed", "records-old")
    backup = site.drtool("backup", "docs")          # an exclusive lock blocks a backup too
    assert_one_clear_error(backup, r"locked.*records-old")
    assert_no_partial(site, site.last_run("docs")["id"])

    shown = site.drtool("unlock", "docs")           # stale removal only: another host's recent lock stays
    assert shown.returncode == 0 and f"kept     {lock_file[:8]}  exclusive" in shown.stdout, shown.stdout
    assert "another host's lock" in shown.stdout and "records-old" in shown.stdout
    refused = site.drtool("unlock", "docs", "--remove-all")       # no terminal, no --yes: nothing removed
    assert_one_clear_error(refused, r"--remove-all needs --yes", code=2)
    assert "WARNING" in refused.stderr and site.locks() == [lock_file]
    removed = site.drtool("unlock", "docs", "--remove-all", "--yes")
    assert removed.returncode == 0 and f"removed  {lock_file[:8]}" in removed.stdout, removed.stderr
    assert site.locks() == []

    assert site.drtool("check", "docs").returncode == 0
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)
    assert HOST != "records-old"
