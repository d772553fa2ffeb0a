"""Use case: `drtool pool status` -- the queue's jobs by state and the central catalog's latest results."""

from __future__ import annotations

from typing import Any

from drtool.config.fleet import Fleet
from drtool.jobqueue import central
from drtool.jobqueue.app import connect, ensure_schema, require_pool


def pool_report(fleet: Fleet, limit: int = 50) -> dict[str, Any]:
    from drtool.actions.pool.worker import build_app

    pool = require_pool(fleet)
    ensure_schema(pool.database, central.SCHEMA)
    app = build_app(fleet)
    with app.open():
        jobs: dict[str, int] = {}
        for job in app.job_manager.list_jobs(queue=pool.queue):
            jobs[str(job.status)] = jobs.get(str(job.status), 0) + 1
    with connect(pool.database) as conn:
        return {"queue": pool.queue, "jobs": jobs, "results": central.results(conn, limit),
                "leases": [lease.__dict__ for lease in central.leases(conn)]}
