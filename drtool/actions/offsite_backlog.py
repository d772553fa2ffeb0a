"""Use case: publish the run records that could not reach the bucket when their run ended.

A run whose storage was down (the very fault that failed it, often) is recorded in the
local catalog with `offsite_record: false`. The next run of the same policy that does
reach the bucket publishes those records too, signed as always, so the offsite history
(what a fresh machine and `drtool status` read after a fire) has no holes. Drill reports
are published by the drill itself and are not resent here.
"""

from __future__ import annotations

import logging

from drtool.actions.common import RepoHandle, publish_offsite
from drtool.catalog import Catalog, RunRecord
from drtool.errors import StateError

log = logging.getLogger(__name__)

SCAN = 100              # newest runs of the policy looked at


def pending_records(runs: list[RunRecord]) -> list[RunRecord]:
    """Pure: finished runs (not drills) whose offsite copy failed."""
    return [r for r in runs if r.status != "running" and r.kind != "drill" and r.details.get("offsite_record") is False]


def publish_backlog(catalog: Catalog, handle: RepoHandle, policy: str, by_run: str) -> list[str]:
    """Publish the pending records of `policy`; returns the ids published."""
    try:
        pending = pending_records(catalog.runs(policy=policy, limit=SCAN))
    except StateError:
        return []
    published = []
    for run in reversed(pending):                      # oldest first
        body = run.to_dict()
        body["details"] = {k: v for k, v in run.details.items() if k not in ("offsite_record", "offsite_record_error")}
        body["details"]["offsite_published_by"] = by_run
        outcome: dict = {}
        publish_offsite(handle, f"runs/{run.id}.json", body, outcome)
        if not outcome.get("offsite_record"):
            break                                       # the bucket is unreachable again: next time
        run.details["offsite_record"] = True
        run.details.pop("offsite_record_error", None)
        run.details["offsite_published_by"] = by_run
        try:
            catalog.record(run)
        except StateError as exc:
            log.warning("run %s was published offsite but its local record not updated: %s", run.id, exc.message)
        published.append(run.id)
    return published
