"""Use case: the restore-time forecast of each policy, and the alerts it raises.

    policy_forecast(settings, policy, history) -> Forecast
    forecast_alerts(settings, catalog) -> list[ForecastAlert]

The model (drtool/forecast.py) is pure; this module only gathers its inputs:
the drills of the playbooks that measure the policy's RTO (rto_playbooks) and
the backed-up bytes of the sources those drills restore, from the history
(catalog, or offsite on a fresh machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drtool.actions.history import OffsiteCache, PolicyHistory, load_history
from drtool.catalog import Catalog, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Playbook, Policy
from drtool.forecast import DAY_S, Forecast, drill_point, forecast, size_series


def rto_playbooks(settings: Settings, policy: Policy) -> set[str]:
    """Names of the playbooks whose drills measure this policy's RTO: playbooks of the policy that
    restore something and whose RTO target is the policy's (not overridden with another one).
    Empty when no playbook qualifies; callers then fall back to every drill of the policy."""
    from drtool.actions.drill import effective_targets

    names = set()
    for book in settings.playbooks.values():
        if book.policy != policy.name or not _restores(book):
            continue
        if effective_targets(book, policy).rto == policy.targets.rto:
            names.add(book.name)
    return names


def _restores(book: Playbook) -> bool:
    return any(step.restore is not None for step in book.steps)


def rto_drills(settings: Settings, policy: Policy, drills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drills (oldest first) that count for the policy's RTO (see rto_playbooks)."""
    books = rto_playbooks(settings, policy)
    mine = [d for d in drills if d.get("playbook") in books]
    return mine if books else drills


def alert_horizon_days(settings: Settings) -> float:
    return settings.config.forecast.horizon / DAY_S


def policy_forecast(settings: Settings, policy: Policy, history: PolicyHistory, now: datetime | None = None,
                    horizon_days: float | None = None) -> Forecast:
    now = now or utcnow()
    drills = rto_drills(settings, policy, history.usable_drills())
    points = [p for p in (drill_point(d) for d in drills) if p is not None]
    sources = points[-1].sources if points else ()
    sizes = size_series(history.usable_runs("backup"), sources)
    days = alert_horizon_days(settings) if horizon_days is None else horizon_days
    return forecast(policy.name, policy.targets.rto, points, sizes, now, alert_days=days)


@dataclass(frozen=True)
class ForecastAlert:
    """A policy whose forecast RTO breaches its target within the horizon (for notifications)."""
    policy: str
    status: str                      # breach-forecast | breached
    breach_at: datetime | None
    target_s: float | None
    rto_now_s: float | None
    dominant_phase: str | None
    advice: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "status": self.status,
                "breach_at": self.breach_at.isoformat() if self.breach_at else None,
                "target_s": self.target_s, "rto_now_s": self.rto_now_s, "dominant_phase": self.dominant_phase,
                "advice": self.advice, "message": self.message}


def alert_for(result: Forecast) -> ForecastAlert | None:
    if result.status not in ("breach-forecast", "breached"):
        return None
    now = result.prediction(0)
    text = result.message + (f"; {result.advice}" if result.advice else "")
    return ForecastAlert(result.policy, result.status, result.breach_at, result.target_s,
                         round(now.rto_s, 1) if now else None, result.dominant_phase, result.advice,
                         f"{result.policy}: {text}")


def forecast_alerts(settings: Settings, catalog: Catalog | None = None, *, now: datetime | None = None,
                    horizon_days: float | None = None) -> list[ForecastAlert]:
    """Alerts for every policy whose forecast breaches its RTO target within the horizon
    (config forecast.horizon, default 90 days). Reads the catalog (offsite when it has no drills)."""
    catalog = catalog or Catalog(settings.state_dir)
    cache = OffsiteCache(settings)
    alerts = []
    for policy in sorted(settings.policies.values(), key=lambda p: p.name):
        history = load_history(settings, policy, catalog, cache=cache)
        alert = alert_for(policy_forecast(settings, policy, history, now, horizon_days))
        if alert is not None:
            alerts.append(alert)
    return alerts
