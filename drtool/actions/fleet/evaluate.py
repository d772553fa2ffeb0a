"""Pure: one site's status from its checked records -- per policy, the same verdicts as `drtool status`.

    site_status(site, read, now, horizon_days) -> dict

Per policy: last good backup (its finish time) vs the RPO, the last backup/check/forget run,
the last drill and its RTO achieved vs target, the forecast when the drills allow one, and the
3-2-1-1-0 letters when the site's records carry them. Only usable records (signature valid
against the site's or a trusted key) decide anything; the others are counted and listed.

Targets: the fleet file's `targets:` for the site and policy, else what the site's newest
backup record says (`details.targets`), else its newest drill's targets. Problems use
drtool.actions.status.problems, so a policy reads the same in `fleet status` and in
`status` at the site. Site problems: `unreachable` (the bucket cannot be read; nothing
proves the RPO, so every policy is an rpo-breach) and `no-records`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drtool.actions.fleet.read import SiteRead
from drtool.actions.status import drill_summary, problems
from drtool.config.fleet import Site
from drtool.forecast import Forecast, drill_point, forecast, size_series
from drtool.records import HistoryRecord

RUN_KINDS = ("backup", "check", "forget")


def site_status(site: Site, read: SiteRead, now: datetime, horizon_days: float) -> dict[str, Any]:
    usable = [r for r in read.records if r.usable]
    names = sorted({str(r.data.get("policy")) for r in usable if r.data.get("policy")} | set(site.policies)
                   | set(site.targets))
    rows = [policy_row(site, name, usable, now, horizon_days, unreachable=read.error is not None and not read.listed)
            for name in names]
    site_problems = []
    if read.error is not None and not read.listed:
        site_problems.append("unreachable")
    elif not read.records:
        site_problems.append("no-records")
    bad = [r for r in read.records if not r.usable]
    return {"site": site.name, "repository": site.repository, "problems": site_problems,
            "error": read.error, "policies": rows,
            "breach": bool(site_problems) or any(r["problems"] for r in rows),
            "signatures": _signature_counts(read.records),
            "invalid_records": [{"id": r.id or "?", "signature": r.signature, "detail": r.signature_detail,
                                 "claims": _claims(r)} for r in bad],
            "read": {"listed": read.listed, "fetched": read.fetched, "cached": read.cached,
                     "seconds": round(read.seconds, 3)}}


def policy_row(site: Site, policy: str, usable: list[HistoryRecord], now: datetime, horizon_days: float, *,
               unreachable: bool = False) -> dict[str, Any]:
    mine = [r.data for r in usable if r.data.get("policy") == policy]
    runs = {kind: [d for d in mine if d.get("kind") == kind] for kind in RUN_KINDS}
    drills = [d for d in mine if _is_drill(d)]
    rpo, rto = targets_for(site, policy, runs["backup"], drills)
    last_good, age = _last_good_backup(runs["backup"], now)
    counted = rto_drills(drills, rto)
    last_drill = drill_summary(counted[-1]) if counted else None
    last_runs = {kind: _run_summary(runs[kind]) for kind in RUN_KINDS}
    codes = problems(backup_age_s=age, rpo_s=rpo, repo_error=unreachable, drill=last_drill, last_runs=last_runs)
    predicted = _forecast(policy, rto, counted, runs["backup"], now, horizon_days)
    return {"site": site.name, "policy": policy, "rpo_target_s": rpo, "rto_target_s": rto,
            "last_backup": last_good.isoformat() if last_good else None, "backup_age_s": age,
            "rpo_met": _within(age, rpo), "last_runs": last_runs, "last_drill": last_drill, "problems": codes,
            "verdict": codes[0] if codes else "ok", "forecast": predicted.to_dict(),
            "warnings": _forecast_warnings(predicted),
            "hosts": sorted({h for h in (_host(d) for d in mine) if h}),
            "rule_32110": rule_32110(runs["backup"] + runs["check"])}


def _last_good_backup(backups: list[dict[str, Any]], now: datetime) -> tuple[datetime | None, float | None]:
    """When the newest successful backup finished, and how long ago (seconds)."""
    good = [d for d in backups if d.get("status") == "success"]
    if not good:
        return None, None
    finished = _finished(good[-1])
    return finished, round((now - finished).total_seconds(), 1)


def _within(age: float | None, target: float | None) -> bool | None:
    """None when there is no target; False when there is one and no backup."""
    return None if target is None else (age is not None and age <= target)


def _forecast(policy: str, rto: float | None, counted: list[dict[str, Any]], backups: list[dict[str, Any]],
              now: datetime, horizon_days: float) -> Forecast:
    points = [p for p in (drill_point(d) for d in counted) if p is not None]
    sizes = size_series(backups, points[-1].sources if points else ())
    return forecast(policy, rto, points, sizes, now, alert_days=horizon_days)


def _forecast_warnings(predicted: Forecast) -> list[dict[str, str]]:
    if predicted.status in ("breach-forecast", "breached"):
        return [{"code": "forecast-breach", "message": predicted.message}]
    return []


def targets_for(site: Site, policy: str, backups: list[dict[str, Any]],
                drills: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(rpo, rto): the fleet file's, else the site's newest backup record's, else its newest drill's."""
    override = site.targets.get(policy)
    recorded = next(((d.get("details") or {}).get("targets") for d in reversed(backups)
                     if isinstance((d.get("details") or {}).get("targets"), dict)), None) or {}
    drill = drills[-1] if drills else {}
    rpo = (override.rpo if override and override.rpo is not None else
           recorded.get("rpo_s") if recorded.get("rpo_s") is not None else (drill.get("rpo") or {}).get("target_s"))
    rto = (override.rto if override and override.rto is not None else
           recorded.get("rto_s") if recorded.get("rto_s") is not None else (drill.get("rto") or {}).get("target_s"))
    return rpo, rto


def rto_drills(drills: list[dict[str, Any]], rto: float | None) -> list[dict[str, Any]]:
    """The drills that measure the policy's RTO: those that restore something with the policy's
    RTO target (a quick check with its own target does not count); all drills when none does.
    The fleet has no playbooks, so this is `drtool status`'s rule read from the reports."""
    measuring = [d for d in drills if any(s.get("kind") == "restore" for s in d.get("steps", []))
                 and (rto is None or (d.get("rto") or {}).get("target_s") == rto)]
    return measuring or drills


def rule_32110(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The 3-2-1-1-0 letters of the newest record that carries them (`details.rule_32110`:
    {"letters": {"3": bool, "2": bool, "1o": bool, "1i": bool, "0": bool}, ...}), or None:
    the sites' own status will publish them once the 3-2-1-1-0 assessment exists."""
    for run in reversed(runs):
        found = (run.get("details") or {}).get("rule_32110")
        if isinstance(found, dict) and isinstance(found.get("letters"), dict):
            return found
    return None


def _is_drill(data: dict[str, Any]) -> bool:
    # Drill reports have steps; a drill whose drtool died is a run record of kind "drill" (interrupted).
    return data.get("steps") is not None or data.get("kind") == "drill"


def _finished(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(run.get("finished_at") or run["started_at"]))


def _run_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not runs:
        return None
    last = runs[-1]
    error = last.get("error")
    return {"id": last.get("id"), "started_at": last.get("started_at"), "status": last.get("status"),
            "error": error.splitlines()[0][:300] if error else None}


def _host(data: dict[str, Any]) -> str | None:
    return data.get("host") or ((data.get("details") or {}).get("process") or {}).get("host")


def _claims(record: HistoryRecord) -> str:
    """What an unusable record claims (shown, never believed)."""
    data = record.data
    if data.get("steps") is not None:
        return f"drill {data.get('playbook')} of {data.get('policy')}: {'passed' if data.get('passed') else 'failed'}"
    return f"{data.get('kind')} of {data.get('policy')}: {data.get('status')}"


def _signature_counts(records: list[HistoryRecord]) -> dict[str, int]:
    counts = {"valid": 0, "invalid": 0, "unsigned": 0}
    for record in records:
        counts[record.signature] = counts.get(record.signature, 0) + 1
    return counts
