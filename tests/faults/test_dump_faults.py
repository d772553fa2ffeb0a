"""Faults of a database dump while it streams into restic: killed at 10/50/90 %, empty, short
with exit 0, stalled, restic killed mid-upload. Real pg_dump 15 of a 16 MB database, real
restic 0.14, rclone S3. One site for the module: each test leaves it healthy again (its
last check is that the next backup succeeds), which is also the next test's baseline."""

from __future__ import annotations


import pytest

from tests.faults.conftest import (
    _site_factory,
    assert_clean_backup_failure,
    kill,
    next_run_succeeds,
    pg_site,
    stop_after,
    stream_restic,
    wrapper_bin_dir,
)

pytestmark = pytest.mark.integration
POLICY, SOURCE = "siak", "siak-db"


@pytest.fixture(scope="module")
def site(tmp_path_factory, fault_s3, pg_server, module_receiver):  # noqa: ANN001, ANN201
    with _site_factory(tmp_path_factory.mktemp("dumps"), fault_s3, "dump-faults") as make:
        site = pg_site(make, pg_server, module_receiver, policy=POLICY, stall_timeout="120s")  # shorter stalled healthy dumps under 3 test workers
        next_run_succeeds(site, POLICY, [SOURCE])
        yield site


def _use_bin_dir(site, bin_dir: str, pg, stall_timeout: str = "120s") -> None:  # noqa: ANN001
    site.policy(POLICY, [{"name": SOURCE, "stall_timeout": stall_timeout,
                          "postgres": {"database": site.pg_db, "port": pg.port, "bin_dir": bin_dir}}])


def _dump_size(site) -> int:  # noqa: ANN001
    """The database dump's size in the newest successful backup (not the last run: an earlier
    test of the module may have left a failed one on top)."""
    run = next(r for r in site.runs(POLICY, "backup") if r["status"] == "success")
    return run["details"]["sources"][SOURCE]["streams"][f"{site.pg_db}.pgdump"]["bytes_in"]


def _fails_cleanly(site, proc, cause: str) -> dict:  # noqa: ANN001
    run = assert_clean_backup_failure(site, proc, POLICY, cause, db_sources=[SOURCE])
    next_run_succeeds(site, POLICY, [SOURCE])
    return run


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_pg_dump_killed_mid_stream(site, percent: int) -> None:  # noqa: ANN001
    size = _dump_size(site)
    site.pause_next_dump()
    started = site.start("backup", POLICY)
    pg_dump = site.paused_dump(started.pid)
    reached = stop_after(pg_dump, size * percent // 100, owner=started)
    kill(pg_dump)
    proc = started.wait()
    # The fault landed mid-stream, near where it was meant to (on a loaded machine the 1 ms steps of
    # stop_after stretch, so pg_dump may run a little past the mark).
    assert reached < size * min(percent + 20, 98) // 100, (reached, size)
    _fails_cleanly(site, proc, r"dump of siak-db.*killed by signal 9")


def test_empty_dump_with_exit_0(site, pg_server) -> None:  # noqa: ANN001
    fake = wrapper_bin_dir(site.root, pg_server.bin_dir, "pg_dump", "exit 0")
    _use_bin_dir(site, fake, pg_server)
    proc = site.drtool("backup", POLICY)
    _use_bin_dir(site, site.pg_bin, pg_server)
    _fails_cleanly(site, proc, r"dump was empty")


def test_truncated_dump_with_exit_0(site, pg_server) -> None:  # noqa: ANN001
    """`pg_dump | head -c 2M` with exit 0: only the archive check can tell."""
    fake = wrapper_bin_dir(site.root, pg_server.bin_dir, "pg_dump", '"$REAL" "$@" | head -c 2000000\nexit 0')
    _use_bin_dir(site, fake, pg_server)
    proc = site.drtool("backup", POLICY)
    _use_bin_dir(site, site.pg_bin, pg_server)
    _fails_cleanly(site, proc, r"exited 0 but is not complete.*inside a data block")


def test_stalled_dump_is_stopped(site, pg_server) -> None:  # noqa: ANN001
    """The dump writes a third, then hangs (SIGSTOP): stall_timeout (5 s here) stops it."""
    size = _dump_size(site)
    _use_bin_dir(site, site.pg_bin, pg_server, stall_timeout="5s")
    try:
        site.pause_next_dump()
        started = site.start("backup", POLICY)
        pg_dump = site.paused_dump(started.pid)
        stop_after(pg_dump, size // 3, owner=started)
        proc = started.wait(timeout=60)
    finally:
        _use_bin_dir(site, site.pg_bin, pg_server)
    _fails_cleanly(site, proc, r"stalled")


def test_restic_killed_mid_upload(site) -> None:  # noqa: ANN001
    size = _dump_size(site)
    started = site.start("backup", POLICY)
    restic = stream_restic(started.pid, f"{site.pg_db}.pgdump")
    stop_after(restic, size // 2, "rchar", owner=started)
    kill(restic)
    proc = started.wait()
    _fails_cleanly(site, proc, r"restic backup.*killed by signal 9")
