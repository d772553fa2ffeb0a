"""The S3 storage misbehaving: down before the run, gone mid-run, answering 5xx, cutting response
bodies, slow; and wrong credentials (S3 secret, repository password). Through a FaultProxy
(tests/support/faultproxy.py) in front of a real rclone S3; `wait_unavailable: 4s`."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.conftest import (
    assert_clean_backup_failure,
    assert_no_leak,
    assert_no_partial,
    assert_one_clear_error,
    cmdline,
    descendants,
    files_site,
    next_run_succeeds,
    pg_site,
    stop_after,
    stream_restic,
    wait_idle,
)

pytestmark = pytest.mark.integration


def _published_late(site, run_id: str, status: str = "failed") -> None:  # noqa: ANN001
    """A record that could not reach the bucket when its run ended is there after the next run."""
    record = site.offsite(run_id)
    assert record is not None, f"run {run_id} is still not offsite"
    assert record["status"] == status and record["details"]["offsite_published_by"] and "signature" in record
    local = next(r for r in site.runs() if r["id"] == run_id)
    assert local["details"]["offsite_record"] is True


def test_s3_down_before_the_run(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    site.repository(wait_unavailable="1s")                  # one attempt (each is ~12 s of restic's own retries)
    site.s3_down()
    started = time.monotonic()
    proc = site.drtool("backup", "docs")
    assert time.monotonic() - started < 40
    run = assert_clean_backup_failure(site, proc, "docs", r"cannot reach the storage", offsite=False)
    assert "init-repo" not in proc.stderr                   # not "no repository": the storage is down
    assert run["details"]["offsite_record"] is False
    site.s3_up()
    next_run_succeeds(site, "docs", files_sources=["scans"])
    _published_late(site, run["id"])
    assert_no_leak(site)


def test_s3_gone_mid_stream(make_site, pg_server, receiver) -> None:  # noqa: ANN001
    site = pg_site(make_site, pg_server, receiver)
    next_run_succeeds(site, "siak", ["siak-db"])
    site.pause_next_dump()
    started = site.start("backup", "siak")
    pg_dump = site.paused_dump(started.pid)
    stop_after(pg_dump, 5 << 20, owner=started)
    site.s3_down()                                          # the server dies while the dump streams
    os.kill(pg_dump, signal.SIGCONT)
    begun = time.monotonic()
    proc = started.wait(timeout=120)
    assert time.monotonic() - begun < 60, "restic was left retrying against a dead storage"
    site.s3_up()                                            # bare restic needs it to look; drtool failed before
    run = assert_clean_backup_failure(site, proc, "siak", r"stopped answering|cannot reach", db_sources=["siak-db"],
                                      offsite=False, cut=f"{site.pg_db}.pgdump")
    next_run_succeeds(site, "siak", ["siak-db"])            # removes the dead restic's lock and any debris
    assert_no_partial(site, run["id"])
    _published_late(site, run["id"])
    assert_no_leak(site)


def test_s3_gone_before_the_fingerprint_commits(make_site, pg_server, receiver) -> None:  # noqa: ANN001
    """Every stream is in, then the server dies before the fingerprint (the set's last snapshot,
    whose restic waited on its stdin the whole dump) is saved: the run fails once wait_unavailable
    is used up, not after restic's minutes of retries, and the set is never usable."""
    site = pg_site(make_site, pg_server, receiver)
    next_run_succeeds(site, "siak", ["siak-db"])
    site.pause_next_dump()
    started = site.start("backup", "siak")
    pg_dump = site.paused_dump(started.pid)
    fingerprint = stream_restic(started.pid, "fingerprint.json")
    wait_idle(fingerprint, owner=started)       # repository open, index loaded: it waits for its data
    os.kill(fingerprint, signal.SIGSTOP)
    os.kill(pg_dump, signal.SIGCONT)
    deadline = time.monotonic() + 120          # the dump and globals streams commit
    while [p for p in descendants(started.pid) if p != fingerprint and _is_restic(p)] or pg_dump in \
            descendants(started.pid):
        assert time.monotonic() < deadline and started.proc.poll() is None, "the streams did not finish"
        time.sleep(0.05)
    site.s3_down()
    os.kill(fingerprint, signal.SIGCONT)
    begun = time.monotonic()
    proc = started.wait(timeout=180)
    assert time.monotonic() - begun < 90, "the fingerprint's restic was left retrying against a dead storage"
    site.s3_up()
    run = assert_clean_backup_failure(site, proc, "siak", r"stopped answering|cannot reach", db_sources=["siak-db"],
                                      offsite=False, cut="fingerprint.json")
    next_run_succeeds(site, "siak", ["siak-db"])            # removes the streams that did commit
    assert_no_partial(site, run["id"])
    _published_late(site, run["id"])
    assert_no_leak(site)


def test_s3_gone_mid_restore(make_site, pg_server) -> None:  # noqa: ANN001
    """The server dies while `restic dump` streams a database into pg_restore: the restore fails
    once wait_unavailable is used up, naming the storage, not after restic's minutes of retries."""
    site = pg_site(make_site, pg_server)
    next_run_succeeds(site, "siak", ["siak-db"])
    target = f"postgresql://postgres@127.0.0.1:{pg_server.port}/r_{site.pg_db}"
    started = site.start("restore", "siak", "--source", "siak-db", "--target", target)
    dump = _restic_dump(started)
    stop_after(dump, 2 << 20, owner=started)                # 2 of the 16 MB are in pg_restore
    site.s3_down()
    os.kill(dump, signal.SIGCONT)
    begun = time.monotonic()
    proc = started.wait(timeout=240)
    took = time.monotonic() - begun
    site.s3_up()
    assert took < 60, f"restic was left retrying against a dead storage for {took:.0f}s"
    assert_one_clear_error(proc, r"stopped answering|cannot reach")
    assert "partly restored" in proc.stderr                 # what the target holds now
    assert_no_leak(site)


def _restic_dump(started) -> int:  # noqa: ANN001 - a Started
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in descendants(started.pid):
            argv = cmdline(pid)
            if _is_restic(pid) and b"dump" in argv and any(a.endswith(b".pgdump") for a in argv):
                return pid
        assert started.proc.poll() is None, started.stderr_path.read_text()[-3000:]
        time.sleep(0.005)
    raise AssertionError("no restic dump of the database stream")


def _is_restic(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/comm").read().strip() == "restic"
    except OSError:
        return False


def test_s3_answering_500_to_uploads(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver, size=1 << 20)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    (site.data / "akta" / "new.bin").write_bytes(b"\x01" * 300_000)
    site.proxy.set("internal", methods={"PUT"})              # reads work, every write is a 500
    started = time.monotonic()
    proc = site.drtool("backup", "docs")
    site.proxy.set("pass")
    assert time.monotonic() - started < 60, "restic was left retrying for minutes"  # wait_unavailable is 4 s
    run = assert_clean_backup_failure(site, proc, "docs", r"failing requests|throttling", offsite=False)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    _published_late(site, run["id"])
    assert_no_leak(site)


def test_s3_throttling_briefly_is_waited_out(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    site.proxy.set("slowdown", seconds=2)                   # 503 SlowDown for 2 s, then fine
    run = next_run_succeeds(site, "docs", files_sources=["scans"])
    assert site.proxy.faults > 0, "the fault never happened"
    assert run["details"]["offsite_record"] is True
    assert_no_leak(site)


def test_s3_cutting_response_bodies(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    site.proxy.set("truncate", methods={"GET"})             # writes go through: the record reaches the bucket
    started = time.monotonic()
    proc = site.drtool("backup", "docs")
    site.proxy.set("pass")
    assert time.monotonic() - started < 60
    assert_clean_backup_failure(site, proc, "docs", r"(cannot reach|stopped answering).*(EOF|reset|closed)")
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)


def test_slow_s3_still_backs_up_and_restores(make_site, receiver, tmp_path) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    site.proxy.latency = 0.15                               # every request waits first
    run = next_run_succeeds(site, "docs", files_sources=["scans"])
    restored = site.drtool("restore", "docs", "--source", "scans", "--target", str(tmp_path / "back"))
    site.proxy.latency = 0.0
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "back" / str(site.data / "akta" / "scan.bin").lstrip("/")).read_bytes() == \
        (site.data / "akta" / "scan.bin").read_bytes()
    assert site.proxy.requests > 20 and run["status"] == "success"
    assert_no_leak(site)


def test_wrong_s3_secret(make_site, receiver) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    secret = site.root / "secrets" / "s3.secret"
    right = secret.read_text()
    secret.write_text("not-the-secret-key\n")
    proc = site.drtool("backup", "docs")
    secret.write_text(right)
    run = assert_clean_backup_failure(site, proc, "docs", r"refused the credentials", offsite=False)
    assert "not-the-secret-key" not in proc.stdout + proc.stderr
    next_run_succeeds(site, "docs", files_sources=["scans"])
    _published_late(site, run["id"])
    assert_no_leak(site)


def test_wrong_repository_password_stops_the_run_at_once(make_site, pg_server, receiver) -> None:  # noqa: ANN001
    """There is no probe before the dumps (it would cost every run a restic start): the dump and
    restic start together, restic refuses the password, and the dump is stopped then, with the
    cause named and nothing committed."""
    site = pg_site(make_site, pg_server, receiver)
    next_run_succeeds(site, "siak", ["siak-db"])
    password = site.root / "secrets" / "repo.pass"
    right = password.read_text()
    password.write_text("not-the-password\n")
    proc = site.drtool("backup", "siak")
    password.write_text(right)
    run = assert_clean_backup_failure(site, proc, "siak", r"wrong password", db_sources=["siak-db"])
    failed = run["details"]["attempts"][0]["failed"]
    assert "wrong password" in failed["siak-db"], failed       # the source failed on the repository, not its dump
    assert "not-the-password" not in proc.stdout + proc.stderr
    next_run_succeeds(site, "siak", ["siak-db"])
    assert_no_leak(site)
