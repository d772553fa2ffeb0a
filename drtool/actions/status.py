"""Use case: every policy at a glance -- last good backup vs RPO, last drill vs RTO.

The backup age comes from the repository's own snapshots (what is really
there, offsite), not only from the local catalog; drills come from the
catalog. Verdict, most urgent first:

    rpo-breach     no complete backup, or the newest is older than the RPO target
                   (or the repository cannot be read: then nothing proves the RPO)
    never-drilled  no drill has run for this policy
    rto-breach     the last drill did not meet its RTO target
    drill-failed   the last drill failed otherwise
    ok
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drtool.actions.common import open_repo, restic_host
from drtool.actions.select import snapshot_sets
from drtool.tags import policy_tags
from drtool.catalog import Catalog, RunRecord, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import DrtoolError


def newest_snapshot_time(settings: Settings, policy: Policy) -> datetime | None:
    """When the policy was last completely backed up: the oldest of its sources' newest
    complete snapshot sets (None if any source has none). Reads the repository."""
    handle = open_repo(settings, policy.repository)
    # One lock-free listing for the whole policy: this runs every few minutes in the daemon's
    # watchdog and must stay cheap; it only reads.
    host = restic_host(settings)           # this host's sets prove this host's RPO, no other's
    listing = handle.restic.snapshots(tags=policy_tags(policy), host=host, no_lock=True)
    newest: list[datetime] = []
    for source in policy.sources:
        mine = [s for s in listing if s.tag("source") == source.name]
        sets = snapshot_sets(handle.restic, policy, source, host=host, listing=mine)
        if not sets:
            return None
        newest.append(sets[-1].time)
    return min(newest) if newest else None


def verdict(*, backup_age_s: float | None, rpo_s: float | None, repo_error: bool,
            drill: dict[str, Any] | None) -> str:
    """Pure: the status word for one policy."""
    if repo_error or backup_age_s is None or (rpo_s is not None and backup_age_s > rpo_s):
        return "rpo-breach"
    if drill is None:
        return "never-drilled"
    if drill.get("rto_met") is False:
        return "rto-breach"
    if not drill.get("passed"):
        return "drill-failed"
    return "ok"


def policy_status(settings: Settings, policy: Policy, catalog: Catalog, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    row: dict[str, Any] = {"policy": policy.name, "repository": policy.repository,
                           "rpo_target_s": policy.targets.rpo, "rto_target_s": policy.targets.rto}
    repo_error = False
    try:
        newest = newest_snapshot_time(settings, policy)
    except DrtoolError as exc:
        newest, repo_error = None, True
        row["error"] = exc.message.splitlines()[0][:300]
    row["last_backup"] = newest.isoformat() if newest else None
    row["backup_age_s"] = round((now - newest).total_seconds(), 1) if newest else None
    age, rpo = row["backup_age_s"], policy.targets.rpo
    row["rpo_met"] = None if rpo is None else (age is not None and age <= rpo)
    drill = last_drill(catalog, policy.name)
    row["last_drill"] = drill
    row["verdict"] = verdict(backup_age_s=row["backup_age_s"], rpo_s=policy.targets.rpo,
                             repo_error=repo_error, drill=drill)
    return row


def last_drill(catalog: Catalog, policy: str) -> dict[str, Any] | None:
    record = catalog.last_run(policy, "drill")
    return None if record is None else drill_summary(record)


def drill_summary(record: RunRecord) -> dict[str, Any]:
    details = record.details or {}
    rto, rpo = details.get("rto") or {}, details.get("rpo") or {}
    return {"id": record.id, "playbook": details.get("playbook"), "started_at": record.started_at.isoformat(),
            "passed": bool(details.get("passed", record.ok)), "status": record.status,
            "rto_achieved_s": rto.get("achieved_s"), "rto_target_s": rto.get("target_s"), "rto_met": rto.get("met"),
            "rpo_achieved_s": rpo.get("achieved_s"), "rpo_target_s": rpo.get("target_s"), "rpo_met": rpo.get("met"),
            "failures": details.get("failures", []), "trigger": record.trigger}


def status(settings: Settings) -> list[dict[str, Any]]:
    catalog = Catalog(settings.state_dir)
    now = utcnow()
    return [policy_status(settings, p, catalog, now) for p in sorted(settings.policies.values(), key=lambda p: p.name)]


def drill_history(settings: Settings, policy: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Drills, newest first, from the local catalog."""
    return [drill_summary(r) | {"policy": r.policy}
            for r in Catalog(settings.state_dir).runs(policy=policy, kind="drill", limit=limit)]
