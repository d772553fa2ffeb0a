"""Use case: `drtool pool enqueue` (and the daemon's hook) -- put due fire drills on the queue.

    enqueue(fleet, names=None, now=None) -> list[Enqueued]

A fleet drill with a `schedule:` is due when the pool has not started it since the schedule's
latest slot (the central catalog's attempts); one without a schedule only runs when named
(`drtool pool enqueue SITE/DRILL`). Every job carries two procrastinate locks named after the
drill: its `queueing_lock` keeps a drill from being queued twice, its `lock` keeps two jobs of
the same drill from running at the same time on any worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drtool.catalog import utcnow
from drtool.config.fleet import Fleet
from drtool.errors import UsageError
from drtool.jobqueue import central
from drtool.jobqueue.app import connect, ensure_schema, require_pool


@dataclass(frozen=True)
class Enqueued:
    site: str
    drill: str
    outcome: str             # queued | already-queued | not-due
    job_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "drill": self.drill, "outcome": self.outcome, "job_id": self.job_id}


def is_due(schedule: str | None, last: datetime | None, now: datetime, tz: Any) -> bool:
    """Pure: a scheduled drill is due when it has not started since the schedule's latest slot."""
    if not schedule:
        return False
    from drtool.schedule_math import parse_schedule

    slot = parse_schedule(schedule).previous_slot(now, tz)
    return last is None or last < slot


def selected(fleet: Fleet, names: list[str] | None) -> list[tuple[str, Any]]:
    """(site, drill) pairs: every drill, or those named SITE (all its drills) or SITE/DRILL."""
    pairs = [(site.name, drill) for site in fleet.sites for drill in site.drills]
    if not names:
        return pairs
    chosen = []
    for name in names:
        site, _, drill = name.partition("/")
        found = [(s, d) for s, d in pairs if s == site and (not drill or d.name == drill)]
        if not found:
            raise UsageError(f"no drill {name!r} in {fleet.path}",
                             hint="name SITE or SITE/DRILL as listed under sites[].drills in the fleet file")
        chosen += found
    return chosen


def enqueue(fleet: Fleet, names: list[str] | None = None, *, now: datetime | None = None) -> list[Enqueued]:
    """Queue the named drills, or (no names) every due one."""
    from procrastinate import exceptions

    from drtool.actions.pool.worker import TASK, build_app
    from drtool.timezones import effective_zone

    pool = require_pool(fleet)
    ensure_schema(pool.database, central.SCHEMA)
    now = now or utcnow()
    with connect(pool.database) as conn:
        last = central.last_started(conn)
    tz = effective_zone(fleet.timezone).tz
    app = build_app(fleet)
    out = []
    with app.open():
        running = {(j.task_kwargs.get("site"), j.task_kwargs.get("drill"))
                   for j in app.job_manager.list_jobs(queue=pool.queue, status="doing")}
        for site, drill in selected(fleet, names):
            if not names and ((site, drill.name) in running
                              or not is_due(drill.schedule, last.get((site, drill.name)), now, tz)):
                out.append(Enqueued(site, drill.name, "not-due"))
                continue
            key = f"{site}/{drill.name}"
            try:
                job_id = app.tasks[TASK].configure(lock=key, queueing_lock=key).defer(site=site, drill=drill.name)
            except exceptions.AlreadyEnqueued:
                out.append(Enqueued(site, drill.name, "already-queued"))
                continue
            out.append(Enqueued(site, drill.name, "queued", job_id))
    return out


def enqueue_for_settings(settings: Any) -> list[str]:
    """The daemon's hook: drtool.yaml's `fleet:` file, if it has a `pool:`, gets its due drills queued.
    Returns SITE/DRILL of each drill queued now."""
    import logging

    from drtool.config.fleet import load_fleet
    from drtool.config.models import beside

    if not settings.config.fleet:
        return []
    fleet = load_fleet(str(beside(settings.path, settings.config.fleet, "fleet.yaml")))
    if fleet.pool is None:
        return []
    queued = [f"{e.site}/{e.drill}" for e in enqueue(fleet) if e.outcome == "queued"]
    if queued:
        logging.getLogger(__name__).info("queued %d due pool drill(s): %s", len(queued), ", ".join(queued))
    return queued
