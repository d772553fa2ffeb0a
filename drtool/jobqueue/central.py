"""The drill pool's central catalog and lease registry, in the pool's PostgreSQL (psycopg 3).

    drtool_pool_leases   one row per running attempt: which job, drill, host, process and scratch
                         directory; written before the directory exists, removed after teardown,
                         so whatever a dead worker left is findable by the next worker on that host
    drtool_pool_results  one row per attempt: the outcome (interrupted, passed, failed, error),
                         RTO achieved, whether the signed report reached the site's bucket, the report

Every statement is a parameterised query; the connection is the caller's (drtool.jobqueue.app.connect).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SCHEMA = """
create table if not exists drtool_pool_leases (
    job_id bigint not null,
    attempt integer not null,
    site text not null,
    drill text not null,
    drill_id text not null,
    host text not null,
    pid integer not null,
    pid_start bigint,
    scratch text not null,
    started_at timestamptz not null default now(),
    primary key (job_id, attempt)
);
create table if not exists drtool_pool_results (
    job_id bigint not null,
    attempt integer not null,
    site text not null,
    drill text not null,
    policy text,
    drill_id text,
    status text not null,
    passed boolean,
    rto_achieved_s double precision,
    rto_target_s double precision,
    offsite_record boolean,
    error text,
    worker_host text,
    worker_pid integer,
    started_at timestamptz,
    finished_at timestamptz not null default now(),
    report jsonb,
    primary key (job_id, attempt)
);
create index if not exists drtool_pool_results_drill on drtool_pool_results (site, drill, started_at);
"""


@dataclass(frozen=True)
class Lease:
    job_id: int
    attempt: int
    site: str
    drill: str
    drill_id: str
    host: str
    pid: int
    pid_start: int | None
    scratch: str

    @property
    def identity(self) -> dict[str, Any]:
        """In the form drtool.actions.lifecycle.is_alive reads."""
        return {"pid": self.pid, "start": self.pid_start, "host": self.host}


LEASE_COLUMNS = "job_id, attempt, site, drill, drill_id, host, pid, pid_start, scratch"


def add_lease(conn: Any, lease: Lease) -> None:
    conn.execute(f"insert into drtool_pool_leases ({LEASE_COLUMNS}) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                 (lease.job_id, lease.attempt, lease.site, lease.drill, lease.drill_id, lease.host, lease.pid,
                  lease.pid_start, lease.scratch))


def leases(conn: Any, host: str | None = None, job_id: int | None = None) -> list[Lease]:
    rows = conn.execute(f"select {LEASE_COLUMNS} from drtool_pool_leases where (%s::text is null or host = %s)"
                        " and (%s::bigint is null or job_id = %s) order by started_at",
                        (host, host, job_id, job_id)).fetchall()
    return [Lease(*row) for row in rows]


def drop_lease(conn: Any, job_id: int, attempt: int) -> bool:
    """Remove a lease; True for the one caller that removed it (two cleaners never both act)."""
    return conn.execute("delete from drtool_pool_leases where job_id = %s and attempt = %s returning job_id",
                        (job_id, attempt)).fetchone() is not None


def record_result(conn: Any, row: dict[str, Any]) -> None:
    """One attempt's outcome; the first word stays (an attempt is recorded once)."""
    columns = ("job_id", "attempt", "site", "drill", "policy", "drill_id", "status", "passed", "rto_achieved_s",
               "rto_target_s", "offsite_record", "error", "worker_host", "worker_pid", "started_at", "report")
    values = [json.dumps(row["report"], default=str) if c == "report" and row.get(c) is not None else row.get(c)
              for c in columns]
    conn.execute(f"insert into drtool_pool_results ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})"
                 " on conflict (job_id, attempt) do nothing", values)


def attempts(conn: Any, job_id: int) -> list[dict[str, Any]]:
    """Earlier attempts of a job (what a retried drill's report says about them)."""
    rows = conn.execute("select attempt, status, drill_id, worker_host, worker_pid, error, started_at, finished_at"
                        " from drtool_pool_results where job_id = %s order by attempt", (job_id,)).fetchall()
    keys = ("attempt", "status", "drill_id", "worker_host", "worker_pid", "error", "started_at", "finished_at")
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(keys, row)} for row in rows]


def last_started(conn: Any) -> dict[tuple[str, str], datetime]:
    """Newest attempt per (site, drill): when the pool last ran it."""
    rows = conn.execute("select site, drill, max(coalesce(started_at, finished_at)) from drtool_pool_results"
                        " group by site, drill").fetchall()
    return {(site, drill): when for site, drill, when in rows}


def results(conn: Any, limit: int = 200) -> list[dict[str, Any]]:
    rows = conn.execute("select job_id, attempt, site, drill, policy, drill_id, status, passed, rto_achieved_s,"
                        " rto_target_s, offsite_record, error, worker_host, worker_pid, started_at, finished_at"
                        " from drtool_pool_results order by finished_at desc limit %s", (limit,)).fetchall()
    keys = ("job_id", "attempt", "site", "drill", "policy", "drill_id", "status", "passed", "rto_achieved_s",
            "rto_target_s", "offsite_record", "error", "worker_host", "worker_pid", "started_at", "finished_at")
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(keys, row)} for row in rows]
