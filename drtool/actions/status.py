"""Use case: every policy at a glance -- last good backup vs RPO, last drill vs RTO, forecast.

The backup age comes from the repository's own snapshots of this host (what
is really there, offsite), not only from the local catalog. Drills and runs
come from the catalog, or from the signed records offsite on a fresh state
dir (drtool.actions.history). "Last drill" is the last drill of a playbook
that measures the policy's RTO (drtool.actions.forecast.rto_playbooks), not
whatever drill ran last.

Problems (each makes `status` exit non-zero), most urgent first; the first
one is the row's `verdict`:

    rpo-breach     no complete backup, or the newest is older than the RPO target
                   (or the repository cannot be read: then nothing proves the RPO)
    backup-failed  the last backup run failed
    rto-breach     the last drill did not meet its RTO target
    drill-failed   the last drill failed otherwise
    never-drilled  no drill has run for this policy
    check-failed   the last repository check failed
    check-overdue  a check schedule is set and no check succeeded since the slot before last
    forget-failed  the last forget (retention) run failed
    copy-failed    the last copy into one of the policy's `copies:` failed (or was not verified)
    wal-gap        (PITR sources) a WAL segment is missing between the oldest base backup and the
                   newest WAL: some moment of the window cannot be recovered

PITR sources (postgres with pitr:) count for the RPO with their recovery point, the newest
moment base backup + WAL can recover (drtool/sources/wal_chain.py), not their newest base
backup; each row's `pitr` gives, per such source, the newest WAL offsite, the recoverable
window(s), the gaps and the timeline switches.

Warnings (shown, exit 0): forecast-breach (the RTO forecast exceeds the target
within forecast.horizon, default 90 days), invalid-signature (offsite records
that failed their signature check; never used for a verdict).

Each row also has `copies` (the last copy run into each repository of `copies:`) and
`rule_32110`: every letter of 3-2-1-1-0, met or not, with its reason and what to do
(drtool/rule32110.py). Falling short of it is shown, never a problem or a warning by
itself (most sites start with one repository; their exit code and Nagios state stay).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from drtool.actions.common import open_repo, restic_host
from drtool.actions.history import OffsiteCache, PolicyHistory, load_history
from drtool.actions.select import snapshot_sets
from drtool.catalog import Catalog, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import DrtoolError
from drtool.tags import policy_tags

PROBLEMS = ("rpo-breach", "wal-gap", "backup-failed", "rto-breach", "drill-failed", "never-drilled",
            "check-failed", "check-overdue", "forget-failed", "copy-failed")
CRITICAL = ("rpo-breach", "wal-gap", "backup-failed", "rto-breach", "drill-failed")   # Nagios CRITICAL; the rest WARNING
CHECK_GRACE = timedelta(hours=6)      # a check may run for hours, and the daemon delays jobs by their jitter


def newest_snapshot_time(settings: Settings, policy: Policy) -> datetime | None:
    """When the policy was last completely backed up: the oldest of its sources' newest
    complete snapshot sets (a PITR source: its recovery point), None if any source has none.
    Reads the repository."""
    return recovery_points(settings, policy)[0]


def recovery_points(settings: Settings, policy: Policy) -> tuple[datetime | None, dict[str, Any]]:
    """(newest_snapshot_time, {PITR source: its PitrView}) from one listing of the repository."""
    from drtool.actions.pitr import pitr_view
    from drtool.actions.wal_ship import pitr_sources, shipped_segment

    handle = open_repo(settings, policy.repository)
    # What this host shipped, before the listing: a batch committed in between then only makes the
    # listing newer than the state, never the state newer than the listing (a false gap).
    shipped = {s.name: shipped_segment(settings, policy, s) for s in pitr_sources(policy)}
    # One lock-free listing for the whole policy: this runs every few minutes in the daemon's
    # watchdog and must stay cheap; it only reads.
    host = restic_host(settings)           # this host's sets prove this host's RPO, no other's
    listing = handle.restic.snapshots(tags=policy_tags(policy), host=host, no_lock=True)
    newest: list[datetime | None] = []
    views: dict[str, Any] = {}
    for source in policy.sources:
        mine = [s for s in listing if s.tag("source") == source.name]
        sets = snapshot_sets(handle.restic, policy, source, host=host, listing=mine)
        point = sets[-1].time if sets else None
        if source.kind == "postgres" and source.spec.pitr is not None:  # type: ignore[union-attr]
            views[source.name] = view = pitr_view(settings, handle.restic, policy, source, host, listing,
                                                  shipped.get(source.name))
            point = max((t for t in (point, view.recovery_point) if t is not None), default=None)
        newest.append(point)
    if not newest or any(t is None for t in newest):
        return None, views
    return min(newest), views  # type: ignore[type-var]


def verdict(*, backup_age_s: float | None, rpo_s: float | None, repo_error: bool,
            drill: dict[str, Any] | None) -> str:
    """Pure: the status word for one policy from its backup age and last drill alone."""
    return (problems(backup_age_s=backup_age_s, rpo_s=rpo_s, repo_error=repo_error, drill=drill) or ["ok"])[0]


def problems(*, backup_age_s: float | None, rpo_s: float | None, repo_error: bool, drill: dict[str, Any] | None,
             last_runs: dict[str, dict[str, Any] | None] | None = None, check_overdue: bool = False,
             copies: dict[str, dict[str, Any] | None] | None = None, wal_gap: bool = False) -> list[str]:
    """Pure: every problem code of one policy, most urgent first (see the module docstring)."""
    runs = last_runs or {}
    found = []
    if repo_error or backup_age_s is None or (rpo_s is not None and backup_age_s > rpo_s):
        found.append("rpo-breach")
    if wal_gap:
        found.append("wal-gap")
    if _failed(runs.get("backup")):
        found.append("backup-failed")
    if drill is None:
        found.append("never-drilled")
    elif drill.get("rto_met") is False:
        found.append("rto-breach")
    elif not drill.get("passed"):
        found.append("drill-failed")
    if _failed(runs.get("check")):
        found.append("check-failed")
    if check_overdue:
        found.append("check-overdue")
    if _failed(runs.get("forget")):
        found.append("forget-failed")
    if any(c is not None and (c.get("status") == "failed" or not c.get("verified", True))
           for c in (copies or {}).values()):
        found.append("copy-failed")
    return sorted(found, key=PROBLEMS.index)


def _failed(run: dict[str, Any] | None) -> bool:
    return run is not None and run.get("status") == "failed"


def is_check_overdue(schedule: str | None, last_success: datetime | None, first_seen: datetime | None,
                     now: datetime, tz: Any) -> bool:
    """Pure: a check schedule is set and no check succeeded since the slot before the latest one
    (one missed slot is a late check, two are an overdue one). A policy whose history starts after
    that slot is not overdue yet."""
    if not schedule:
        return False
    from drtool.schedule_math import parse_schedule

    sched = parse_schedule(schedule)
    latest = sched.previous_slot(now - CHECK_GRACE, tz)
    before = sched.previous_slot(latest - timedelta(seconds=1), tz)
    reference = last_success or first_seen
    return reference is not None and reference < before


def policy_status(settings: Settings, policy: Policy, catalog: Catalog, now: datetime | None = None,
                  cache: OffsiteCache | None = None, horizon_days: float | None = None,
                  history: PolicyHistory | None = None) -> dict[str, Any]:
    now = now or utcnow()
    row: dict[str, Any] = {"policy": policy.name, "repository": policy.repository,
                           "rpo_target_s": policy.targets.rpo, "rto_target_s": policy.targets.rto}
    repo_error = False
    views: dict[str, Any] = {}
    try:
        newest, views = recovery_points(settings, policy)
    except DrtoolError as exc:
        newest, repo_error = None, True
        row["error"] = exc.message.splitlines()[0][:300]
    if views:
        row["pitr"] = {name: view.to_dict() for name, view in views.items()}
    row["last_backup"] = newest.isoformat() if newest else None
    row["backup_age_s"] = round((now - newest).total_seconds(), 1) if newest else None
    age, rpo = row["backup_age_s"], policy.targets.rpo
    row["rpo_met"] = None if rpo is None else (age is not None and age <= rpo)
    history = history or load_history(settings, policy, catalog, cache=cache)
    row["history"] = sorted(history.origins) or ["none"]
    from drtool.actions.forecast import rto_drills   # not on a backup's path (its record's 3-2-1-1-0 letters)

    drills = rto_drills(settings, policy, history.usable_drills())
    row["last_drill"] = drill_summary(drills[-1]) if drills else None
    row["last_runs"] = {kind: _run_summary(history, kind) for kind in ("backup", "check", "forget")}
    overdue = _check_overdue(settings, policy, history, now)
    row["copies"] = {name: _run_summary_of(history, "copy", name) for name in policy.copies}
    codes = problems(backup_age_s=age, rpo_s=rpo, repo_error=repo_error, drill=row["last_drill"],
                     last_runs=row["last_runs"], check_overdue=overdue, copies=row["copies"],
                     wal_gap=any(view.gaps for view in views.values()))
    row["problems"] = codes
    row["verdict"] = codes[0] if codes else "ok"
    from drtool.actions.forecast import policy_forecast

    result = policy_forecast(settings, policy, history, now, horizon_days)
    row["forecast"] = result.to_dict()
    row["warnings"] = _warnings(result, history)
    row["rule_32110"] = rule_32110(settings, policy, history, row)
    return row


def recorded_rule_32110(settings: Settings, policy: Policy, catalog: Catalog) -> dict[str, Any]:
    """The 3-2-1-1-0 letters a backup or check record carries (`details.rule_32110`), from the
    local catalog alone (no restic call, no offsite read: it runs as the record is written), so a
    fleet view reading the signed records sees them without the site's status."""
    history = load_history(settings, policy, catalog, offsite="never")
    backups = [r for r in history.usable_runs("backup") if r.get("status") == "success"]
    row = {"last_backup": str(backups[-1].get("finished_at") or backups[-1]["started_at"]) if backups else None,
           "copies": {name: _run_summary_of(history, "copy", name) for name in policy.copies},
           "last_runs": {"check": _run_summary(history, "check")}}
    found = rule_32110(settings, policy, history, row)
    return {"met": found["met"], "letters": found["letters"], "detail": found["detail"]}


def _run_summary_of(history: PolicyHistory, kind: str, repository: str) -> dict[str, Any] | None:
    runs = [r for r in history.usable_runs(kind) if (r.get("details") or {}).get("repository") == repository]
    if not runs:
        return None
    last = runs[-1]
    return {"id": last.get("id"), "started_at": last.get("started_at"), "status": last.get("status"),
            "verified": bool((last.get("details") or {}).get("verified")),
            "error": (last.get("error") or "").splitlines()[0][:300] if last.get("error") else None}


def rule_32110(settings: Settings, policy: Policy, history: PolicyHistory, row: dict[str, Any]) -> dict[str, Any]:
    """The 3-2-1-1-0 assessment of one policy from its status row and history (drtool/rule32110.py)."""
    from drtool.rule32110 import RepoFacts, assess, last_attacks, last_verified_drill, provider_of

    drills = history.usable_drills()
    attacks = last_attacks(drills, policy.repository)
    facts = []
    for name in policy.repositories:
        repo = settings.config.repositories[name]
        provider, offsite = provider_of(repo.url, repo.provider)
        if name == policy.repository:
            holds = row["last_backup"] is not None
            detail = f"complete backup of {row['last_backup'][:19]}" if holds else "no complete backup"
        else:
            last = row["copies"].get(name)
            holds = bool(last and last["status"] == "success" and last["verified"])
            detail = ("never copied" if last is None else f"copied and verified {str(last['started_at'])[:19]}"
                      if holds else f"last copy {last['status']}: {last.get('error') or 'not verified'}")
        facts.append(RepoFacts(name, repo.url, provider, offsite, holds, detail, attacks.get(name),
                               repo.immutable.mode if repo.immutable else None))
    verified = last_verified_drill(drills)
    return assess(facts, last_check=row["last_runs"].get("check"),
                  last_verified_drill=None if verified is None else drill_summary(verified))


def _run_summary(history: PolicyHistory, kind: str) -> dict[str, Any] | None:
    runs = history.usable_runs(kind)
    if not runs:
        return None
    last = runs[-1]
    return {"id": last.get("id"), "started_at": last.get("started_at"), "status": last.get("status"),
            "error": (last.get("error") or "").splitlines()[0][:300] if last.get("error") else None}


def _check_overdue(settings: Settings, policy: Policy, history: PolicyHistory, now: datetime) -> bool:
    if not policy.check.schedule:
        return False
    from drtool.actions.daemon import settings_timezone

    checks = [r for r in history.usable_runs("check") if r.get("status") == "success"]
    every = history.usable_runs()
    last_ok = datetime.fromisoformat(checks[-1]["started_at"]) if checks else None
    first = datetime.fromisoformat(every[0]["started_at"]) if every else None
    return is_check_overdue(policy.check.schedule, last_ok, first, now, settings_timezone(settings))


def _warnings(result: Any, history: PolicyHistory) -> list[dict[str, str]]:
    out = []
    if result.status in ("breach-forecast", "breached"):
        out.append({"code": "forecast-breach", "message": result.message
                    + (f"; dominant phase: {result.dominant_phase} ({result.advice})" if result.advice else "")})
    if history.invalid:
        ids = ", ".join(r.id or "?" for r in history.invalid[:5])
        out.append({"code": "invalid-signature",
                    "message": f"{len(history.invalid)} offsite record(s) failed the signature check and were "
                               f"not used: {ids}"})
    if history.offsite_error:
        out.append({"code": "offsite-unreadable", "message": history.offsite_error})
    return out


def drill_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The status view of a drill report (DrillReport.to_dict(), from the catalog or offsite)."""
    rto, rpo = report.get("rto") or {}, report.get("rpo") or {}
    return {"id": report.get("id"), "playbook": report.get("playbook"), "started_at": report.get("started_at"),
            "passed": bool(report.get("passed")), "status": "success" if report.get("passed") else "failed",
            "rto_achieved_s": rto.get("achieved_s"), "rto_target_s": rto.get("target_s"), "rto_met": rto.get("met"),
            "rpo_achieved_s": rpo.get("achieved_s"), "rpo_target_s": rpo.get("target_s"), "rpo_met": rpo.get("met"),
            "failures": report.get("failures", []), "trigger": report.get("trigger")}


def status(settings: Settings, horizon_days: float | None = None) -> list[dict[str, Any]]:
    catalog = Catalog(settings.state_dir)
    cache = OffsiteCache(settings)
    now = utcnow()
    from drtool.actions.forecast import alert_horizon_days

    horizon = alert_horizon_days(settings) if horizon_days is None else horizon_days
    return [policy_status(settings, p, catalog, now, cache, horizon)
            for p in sorted(settings.policies.values(), key=lambda p: p.name)]


def drill_history(settings: Settings, policy: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Drills, newest first, from the catalog (or offsite, for a policy without local drills)."""
    catalog = Catalog(settings.state_dir)
    cache = OffsiteCache(settings)
    names = [policy] if policy else sorted(settings.policies)
    rows = []
    for name in names:
        history = load_history(settings, settings.policy(name), catalog, cache=cache)
        for record in history.drills:
            rows.append(drill_summary(record.data) | {"policy": name, "origin": record.origin,
                                                      "signature": record.signature})
    rows.sort(key=lambda r: r["started_at"] or "", reverse=True)
    return rows[:limit]


def nagios_state(rows: list[dict[str, Any]]) -> int:
    """Pure: 0 OK, 1 WARNING, 2 CRITICAL for the Nagios plugin convention (3 UNKNOWN is the caller's)."""
    codes = {c for r in rows for c in r.get("problems", [])}
    if codes & set(CRITICAL):
        return 2
    if codes or any(r.get("warnings") for r in rows):
        return 1
    return 0
