"""Faults on this machine: a full disk under a restore and under state_dir (a 2 MB tmpfs), a
files path that does not exist, a corrupt and a locked catalog, a before-hook that hangs with
children, and a drill command that double-forks a daemon."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faults.conftest import (
    assert_clean_backup_failure,
    assert_no_leak,
    assert_no_orphans,
    assert_one_clear_error,
    assert_recorded,
    files_site,
    next_run_succeeds,
)

pytestmark = pytest.mark.integration


@contextmanager
def small_filesystem(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> None:
    """Take every free byte of the file system under `directory`."""
    with open(directory / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_disk_full_during_a_restore(make_site, tmp_path) -> None:  # noqa: ANN001
    site = files_site(make_site, size=4 << 20)                      # 4 MB of data, 2 MB of room
    next_run_succeeds(site, "docs", files_sources=["scans"])
    with small_filesystem(tmp_path / "small") as small:
        target = small / "restore"
        proc = site.drtool("restore", "docs", "--source", "scans", "--target", str(target))
        assert_one_clear_error(proc, r"no space left on device")
        assert str(target) in proc.stderr and "partial" in proc.stderr       # says what it left there
    big = tmp_path / "big"
    ok = site.drtool("restore", "docs", "--source", "scans", "--target", str(big))
    assert ok.returncode == 0, ok.stderr
    assert (big / str(site.data / "akta" / "scan.bin").lstrip("/")).read_bytes() == \
        (site.data / "akta" / "scan.bin").read_bytes()
    assert_no_leak(site)


def test_state_dir_full(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    with small_filesystem(site.state_dir, "4m"):
        next_run_succeeds(site, "docs", files_sources=["scans"])
        _fill(site.state_dir)
        proc = site.drtool("backup", "docs")
        # The backup itself is taken and published offsite; the local record could not be written: exit 1.
        assert_one_clear_error(proc, r"catalog .*cannot be used.*(full|space)")
        offsite = sorted((site.records_dir / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)[-1]
        record = json.loads(offsite.read_text())
        assert record["status"] == "success" and "local_record_error" in record["details"]
        assert site.snapshots(f"run={record['id']}"), "the backup was not taken"
        assert any(a.get("event") == "state_failed" for a in site.alerts())
        (site.state_dir / "filler").unlink()
        next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_missing_files_path(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    gone = site.data / "not-there"
    site.policy("docs", [{"name": "scans", "files": {"paths": [str(site.data / "akta"), str(gone)]}}])
    invalid = site.drtool("validate", "--offline")
    assert_one_clear_error(invalid, rf"{gone}.* does not exist", code=2)
    proc = site.drtool("backup", "docs")
    assert_clean_backup_failure(site, proc, "docs", rf"{gone} does not exist; nothing was backed up")
    gone.mkdir()
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_corrupt_catalog_is_set_aside_and_the_backup_runs(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    (site.state_dir / "catalog.db").write_bytes(b"\x00garbage, not an SQLite database\x00" * 200)
    proc = site.drtool("backup", "docs")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    aside = list(site.state_dir.glob("catalog.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\x00garbage")   # kept for a look
    run = site.last_run("docs")
    assert run["status"] == "success" and run["details"]["catalog_recovered_from"] == str(aside[0])
    assert site.offsite(run["id"])["status"] == "success"
    assert any(a.get("event") == "state_failed" and "moved aside" in a.get("message", "") for a in site.alerts())
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_locked_catalog_still_backs_up_and_says_so(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    holder = sqlite3.connect(site.state_dir / "catalog.db")
    holder.execute("begin exclusive")                              # another process holds the catalog
    try:
        proc = site.drtool("backup", "docs")
    finally:
        holder.rollback()
        holder.close()
    assert_one_clear_error(proc, r"catalog .* cannot be used: database is locked")
    newest = sorted((site.records_dir / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)[-1]
    record = json.loads(newest.read_text())
    assert record["status"] == "success" and site.snapshots(f"run={record['id']}")
    assert any(a.get("event") == "state_failed" for a in site.alerts())
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_hanging_before_hook_with_children(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    marker = f"600.{uuid.uuid4().int % 10**6}"                     # sleep's argument: finds its processes
    hook = ["sh", "-c", f"sleep {marker} & setsid sleep {marker} & sleep {marker}"]
    site.policy("docs", [{"name": "scans", "files": {"paths": [str(site.data / "akta")]}}],
                hooks={"before": [hook], "timeout": "3s"})
    started = time.monotonic()
    proc = site.drtool("backup", "docs")
    assert time.monotonic() - started < 45, "the hook's children kept the run waiting"
    run = assert_clean_backup_failure(site, proc, "docs", r"before hook.*(timed out|took longer)")
    assert run["snapshots"] == []
    assert _processes_with(marker) == [], "the hook left processes behind"
    site.policy("docs", [{"name": "scans", "files": {"paths": [str(site.data / "akta")]}}])
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_double_forking_drill_command_leaves_nothing(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    marker = f"600.{uuid.uuid4().int % 10**6}"
    daemon = ["sh", "-c", f"(setsid sh -c 'sleep {marker}' > /dev/null 2>&1 &) ; echo started"]
    hang = ["sh", "-c", f"setsid sleep {marker} & sleep {marker}"]
    site.playbook("docs-drill", {"policy": "docs", "targets": {"rto": "1h"}, "steps": [
        {"name": "restore", "restore": {"source": "scans"}},
        {"name": "starts a daemon", "command": daemon, "on_failure": "continue"},
        {"name": "hangs", "command": hang, "timeout": "2s"}]})
    proc = site.drtool("drill", "docs-drill")
    assert proc.returncode == 1, proc.stdout + proc.stderr          # the hanging step timed out
    assert "Traceback" not in proc.stdout + proc.stderr
    run = site.last_run("docs", "drill")
    assert_recorded(site, run, "failed", offsite=False)            # a drill's report is under drills/
    report = site.offsite(run["id"], "drills")
    assert report is not None and report["passed"] is False
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert statuses["restore"] == "passed" and statuses["starts a daemon"] == "passed", statuses
    assert statuses["hangs"] in ("timed_out", "failed"), statuses
    time.sleep(0.5)
    assert _processes_with(marker) == [], "a drill command left processes behind"
    assert_no_orphans(site)
    assert_no_leak(site)
