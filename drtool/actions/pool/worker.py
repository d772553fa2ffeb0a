"""Use case: `drtool pool worker` -- run queued fire drills, one at a time, until stopped.

procrastinate's worker fetches a job (no other worker can get it), heartbeats while it runs,
and stops cleanly on SIGTERM/SIGINT (the running drill finishes first). For each job:

1. a lease row (job, attempt, host, pid, scratch dir) is written, then the scratch dir made;
2. the site's fire drill runs there (drtool.actions.pool.site_drill), with only its kit;
3. the outcome goes to the central catalog (drtool_pool_results) -- the signed report is
   already in the site's bucket -- then the scratch dir is torn down and the lease dropped.

Beside the jobs, each worker runs the reaper every `pool.heartbeat`:
- leases on this host whose process is gone: stop every database server under their scratch
  dir, remove it, drop the lease (a worker killed mid-drill leaves no server and no files);
- jobs procrastinate reports stalled (their worker sent no heartbeat for `pool.stalled_after`):
  recorded as interrupted, retried (`retry_job`) while the job has retries left
  (`pool.retries`, default 1), else finished as failed. A job whose lease shows its process
  alive on this host is never taken for stalled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from drtool.config.fleet import Fleet
from drtool.errors import DrtoolError
from drtool.jobqueue import central
from drtool.jobqueue.app import connect, ensure_schema, make_app, require_pool

log = logging.getLogger(__name__)

TASK = "drtool.pool.drill"


def build_app(fleet: Fleet) -> Any:
    """The procrastinate App with the pool's one task registered."""
    pool = require_pool(fleet)
    app = make_app(pool.database)

    @app.task(name=TASK, queue=pool.queue, pass_context=True)
    def drill(context: Any, site: str, drill: str) -> dict[str, Any]:
        return run_job(fleet, site, drill, job_id=int(context.job.id), attempts=int(context.job.attempts))

    return app


def run_worker(fleet: Fleet, *, until_empty: bool = False) -> int:
    pool = require_pool(fleet)
    ensure_schema(pool.database, central.SCHEMA)
    fleet.scratch_path.mkdir(parents=True, exist_ok=True, mode=0o711)
    app = build_app(fleet)
    asyncio.run(_serve(app, fleet, until_empty))
    return 0


async def _serve(app: Any, fleet: Fleet, until_empty: bool) -> None:
    pool = fleet.pool
    assert pool is not None
    async with app.open_async():
        await asyncio.to_thread(clean_dead_leases, fleet)            # what a dead worker here left
        reaper = asyncio.create_task(_reap_forever(app, fleet))
        try:
            await app.run_worker_async(queues=[pool.queue], concurrency=1, wait=not until_empty,
                                       update_heartbeat_interval=pool.heartbeat,
                                       stalled_worker_timeout=pool.stalled_after, delete_jobs="never",
                                       install_signal_handlers=True)
        finally:
            reaper.cancel()


# ---------------------------------------------------------------- one job

def run_job(fleet: Fleet, site_name: str, drill_name: str, *, job_id: int, attempts: int) -> dict[str, Any]:
    from drtool.actions.lifecycle import process_identity
    from drtool.actions.pool.site_drill import run_site_drill
    from drtool.catalog import new_run_id, utcnow

    site = fleet.site(site_name)
    drill = next((d for d in site.drills if d.name == drill_name), None)
    attempt = attempts + 1
    me = process_identity()
    drill_id = new_run_id("drill")
    job_dir = fleet.scratch_path / f"j{job_id}-{attempt}"      # short: socket paths below it have 107 bytes
    lease = central.Lease(job_id, attempt, site_name, drill_name, drill_id, me["host"], me["pid"], me["start"],
                          str(job_dir))
    started = utcnow()
    row: dict[str, Any] = {"job_id": job_id, "attempt": attempt, "site": site_name, "drill": drill_name,
                           "drill_id": drill_id, "worker_host": me["host"], "worker_pid": me["pid"],
                           "started_at": started}
    with connect(fleet.pool.database) as conn:            # type: ignore[union-attr]
        central.add_lease(conn, lease)                     # before the directory exists: it is always findable
        earlier = central.attempts(conn, job_id)
    try:
        if drill is None:
            raise DrtoolError(f"site {site_name!r} has no drill {drill_name!r} in {fleet.path} any more")
        job_dir.mkdir(mode=0o711)
        extra = {"pool": {"job_id": job_id, "attempt": attempt, "worker": f"{me['host']}:{me['pid']}",
                          "site": site_name, "earlier_attempts": earlier}}
        report = run_site_drill(fleet, site, drill, job_dir, drill_id=drill_id, extra=extra)
        record = report.record
        row.update(policy=report.policy, status="passed" if report.passed else "failed", passed=report.passed,
                   rto_achieved_s=report.rto_achieved_s, rto_target_s=report.rto_target_s,
                   offsite_record=(record.details.get("offsite_record") if record else None),
                   error="; ".join(report.failures)[:2000] or None, report=report.to_dict())
    except DrtoolError as exc:
        row.update(status="error", passed=False, error=str(exc)[:2000])
    finally:
        teardown(job_dir)
        with connect(fleet.pool.database) as conn:        # type: ignore[union-attr]
            central.record_result(conn, row)
            central.drop_lease(conn, job_id, attempt)
    log.info("pool drill %s/%s (job %s, attempt %s): %s", site_name, drill_name, job_id, attempt, row["status"])
    return {k: row.get(k) for k in ("site", "drill", "drill_id", "status", "rto_achieved_s", "offsite_record")}


def teardown(job_dir: Path) -> int:
    """Stop every database server whose command line points into the job's directory; remove it."""
    from drtool.actions.sandbox import stop_servers_under

    stopped = stop_servers_under(job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)
    return stopped


# ---------------------------------------------------------------- the reaper

async def _reap_forever(app: Any, fleet: Fleet) -> None:
    pool = fleet.pool
    assert pool is not None
    while True:
        try:
            await asyncio.to_thread(clean_dead_leases, fleet)
            await retry_stalled(app, fleet)
        except Exception:  # noqa: BLE001 - the reaper must outlive a database hiccup
            log.warning("drill pool reaper round failed", exc_info=True)
        await asyncio.sleep(pool.heartbeat)


def clean_dead_leases(fleet: Fleet) -> list[central.Lease]:
    """Leases on this host whose process is gone: servers stopped, scratch removed, lease dropped."""
    from drtool.actions.lifecycle import is_alive

    cleaned = []
    with connect(fleet.pool.database) as conn:            # type: ignore[union-attr]
        for lease in central.leases(conn, host=socket.gethostname()):
            if is_alive(lease.identity):
                continue
            if not central.drop_lease(conn, lease.job_id, lease.attempt):
                continue                                   # another worker here got to it first
            stopped = teardown(Path(lease.scratch))
            _record_interrupted(fleet, lease.job_id, lease.attempt, lease)
            log.warning("cleaned up after a dead worker (pid %s): drill %s/%s, job %s attempt %s, %d server(s) "
                        "stopped, %s removed", lease.pid, lease.site, lease.drill, lease.job_id, lease.attempt,
                        stopped, lease.scratch)
            cleaned.append(lease)
    return cleaned


async def retry_stalled(app: Any, fleet: Fleet) -> list[int]:
    """Retry (once, by default) the jobs of workers that stopped sending heartbeats."""
    from procrastinate import exceptions
    from procrastinate.jobs import Status

    from drtool.actions.lifecycle import is_alive

    pool = fleet.pool
    assert pool is not None
    retried = []
    for job in await app.job_manager.get_stalled_jobs(queue=pool.queue, seconds_since_heartbeat=pool.stalled_after):
        attempt = job.attempts + 1
        found = await asyncio.to_thread(_lease_of, fleet, int(job.id), attempt)
        if found is not None and found.host == socket.gethostname() and is_alive(found.identity):
            continue                                        # slow heartbeat, live process: not stalled
        await asyncio.to_thread(_record_interrupted, fleet, int(job.id), attempt, found, job.task_kwargs)
        try:
            if job.attempts < pool.retries:
                await app.job_manager.retry_job(job)
                retried.append(int(job.id))
                log.warning("drill job %s (%s) lost its worker; retrying it", job.id, job.task_kwargs)
            else:
                await app.job_manager.finish_job_by_id_async(int(job.id), status=Status.FAILED, delete_job=False)
                log.error("drill job %s (%s) lost its worker again; not retried", job.id, job.task_kwargs)
        except exceptions.ConnectorException:
            continue                                        # another worker's reaper took it meanwhile
    return retried


def _lease_of(fleet: Fleet, job_id: int, attempt: int) -> central.Lease | None:
    with connect(fleet.pool.database) as conn:            # type: ignore[union-attr]
        return next((lease for lease in central.leases(conn, job_id=job_id) if lease.attempt == attempt), None)


def _record_interrupted(fleet: Fleet, job_id: int, attempt: int, lease: central.Lease | None,
                        kwargs: dict[str, Any] | None = None) -> None:
    """The dead attempt, in the central catalog (once: whoever notices first, the cleaner or the reaper)."""
    kwargs = kwargs or {}
    with connect(fleet.pool.database) as conn:            # type: ignore[union-attr]
        central.record_result(conn, {
            "job_id": job_id, "attempt": attempt, "site": lease.site if lease else kwargs.get("site", "?"),
            "drill": lease.drill if lease else kwargs.get("drill", "?"), "drill_id": lease.drill_id if lease else None,
            "status": "interrupted", "passed": False,
            "error": "the worker running this drill stopped (killed, crashed or its machine went down) "
                     "before the drill finished",
            "worker_host": lease.host if lease else None, "worker_pid": lease.pid if lease else None,
            "started_at": None})


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
