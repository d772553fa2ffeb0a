"""Restore-time forecast per policy: pure data and pure math, no I/O.

"When will the service be back?" answered for today by the last drill, and
for tomorrow by a model fitted from the drill history and the growth of the
backed-up data:

    RTO(size)   = fixed_s + s_per_byte * size          (from the drills)
    size(day)   = bytes_now + bytes_per_day * day       (from the backups)
    RTO(day)    = RTO(size(day)) +- band                (band: residuals of both fits)

How each part is fitted:
- restore model: least squares of RTO achieved against the bytes restored, when
  the restored size varied enough between drills (>= 10 % spread) to tell the
  fixed cost from the per-byte cost. Otherwise the drills' own phase timings
  split it: start-up phases (read fingerprint, start scratch instance, create
  database, globals) and the time between restore steps are fixed (median),
  transfer / load / index build / integrity check scale with the bytes (least
  squares through the origin).
- growth: least squares of the backed-up bytes of the sources the drills restore
  against time; no growth (and a note) with fewer than two backups a day apart.
- a step change (a new bucket, a bulk import) is found as the split of the
  series, in time order, whose two separate fits explain >= 75 % of the single
  fit's residual; only the points after the last step are used.
- the band is the prediction interval (Student t, 95 %) of both fits,
  combined as independent errors.

Fewer than MIN_DRILLS usable drills (recovery complete, bytes known) give an
"insufficient" forecast that says how many more are needed, never a guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from drtool.fitting import Line, fit_line, last_regime, median, t95

MIN_DRILLS = 3
HORIZONS_DAYS = (0, 30, 90, 365)
DEFAULT_ALERT_HORIZON_DAYS = 90
MAX_BREACH_SEARCH_DAYS = 3650
SIZE_SPREAD_FOR_REGRESSION = 0.10     # (max - min) / mean of restored bytes
DAY_S = 86400.0

Category = Literal["startup", "transfer", "load", "index", "verify", "other"]
SCALING: tuple[Category, ...] = ("transfer", "load", "index", "verify")

# What would shorten each kind of restore time; shown with the dominant phase.
ADVICE: dict[str, str] = {
    "transfer": "download+decrypt dominates: a closer or faster bucket (or a local copy of the repository), "
                "a faster link, more restic connections (-o s3.connections=N)",
    "load": "loading dominates: more cores and a faster disk for the scratch/recovery server; for PostgreSQL "
            "the parallel strategy (pg_restore -j) instead of the single stream",
    "index": "index build dominates: more cores (pg_restore -j N) and more maintenance_work_mem on the "
             "recovery server",
    "verify": "verification dominates: faster disks on the recovery server, or a lighter check step",
    "startup": "fixed start-up dominates (scratch instance, fingerprint, database creation): a "
               "pre-provisioned recovery server",
    "other": "time between restore steps dominates: look at the slowest non-restore steps of the playbook",
}

_CATEGORY_RULES: tuple[tuple[str, Category], ...] = (
    (r"index", "index"),
    (r"download|decrypt|restic|dump|transfer|send|extract", "transfer"),
    (r"\bload\b|^load", "load"),
    (r"integrity|verify|check", "verify"),
    (r"fingerprint|scratch|start|create|globals", "startup"),
)


def phase_category(name: str) -> Category:
    """The kind of work a phase name stands for (combined phases count as their first, scaling word:
    'download+decrypt+load (overlapped)' is transfer-bound, 'download+load+index build' index too)."""
    lowered = name.lower()
    for pattern, category in _CATEGORY_RULES:
        if re.search(pattern, lowered):
            return category
    return "other"


# ---------------------------------------------------------------- inputs

@dataclass(frozen=True)
class DrillPoint:
    """One drill as the model sees it."""
    at: datetime
    rto_s: float
    restored_bytes: int
    phases: dict[str, float]             # category -> seconds (incl. "other": RTO minus restore phases)
    playbook: str | None = None
    sources: tuple[str, ...] = ()

    @property
    def fixed_s(self) -> float:
        return sum(v for k, v in self.phases.items() if k not in SCALING)

    @property
    def scaling_s(self) -> float:
        return sum(v for k, v in self.phases.items() if k in SCALING)


@dataclass(frozen=True)
class SizePoint:
    at: datetime
    bytes: int


def drill_point(report: dict[str, Any]) -> DrillPoint | None:
    """A DrillPoint from a drill report (DrillReport.to_dict(), local or offsite), or None when it
    cannot teach the model anything: no complete recovery, or no byte count."""
    rto = (report.get("rto") or {}).get("achieved_s")
    restores = [s for s in report.get("steps", []) if s.get("kind") == "restore"]
    if rto is None or not restores or any(s.get("status") != "passed" for s in restores):
        return None
    phases: dict[str, float] = {}
    restored = 0
    for step in restores:
        step_phases = step.get("phases") or []
        restored += int(step.get("bytes") or max((p.get("bytes") or 0 for p in step_phases), default=0))
        for phase in step_phases:
            cat = phase_category(str(phase.get("name", "")))
            phases[cat] = phases.get(cat, 0.0) + float(phase.get("duration_s") or 0.0)
    if restored <= 0:
        return None
    phases["other"] = phases.get("other", 0.0) + max(0.0, float(rto) - sum(phases.values()))
    sources = tuple(sorted(((report.get("snapshot") or {}).get("sources") or {}).keys()))
    return DrillPoint(_parse_time(report["started_at"]), float(rto), restored, phases,
                      report.get("playbook"), sources)


def backup_sizes(run: dict[str, Any]) -> dict[str, int]:
    """Bytes per source of a successful backup run record (RunRecord.to_dict()): files report the
    bytes restic processed, databases the bytes of their dump streams."""
    if run.get("status") != "success":
        return {}
    out: dict[str, int] = {}
    for name, result in ((run.get("details") or {}).get("sources") or {}).items():
        if not isinstance(result, dict) or result.get("status", "success") != "success":
            continue
        if "streams" in result:
            out[name] = sum(int(s.get("bytes_in") or 0) for s in (result.get("streams") or {}).values())
        elif result.get("bytes") is not None:
            out[name] = int(result["bytes"])
    return out


def size_series(runs: list[dict[str, Any]], sources: tuple[str, ...] = ()) -> list[SizePoint]:
    """Backed-up bytes over time (oldest first), summed over `sources` (all when empty); a run that
    lacks one of them is left out rather than counted as a shrink."""
    points = []
    for run in runs:
        sizes = backup_sizes(run)
        wanted = sources or tuple(sizes)
        if sizes and all(s in sizes for s in wanted):
            points.append(SizePoint(_parse_time(run["started_at"]), sum(sizes[s] for s in wanted)))
    return sorted(points, key=lambda p: p.at)


def _parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


# ---------------------------------------------------------------- the two fits

@dataclass(frozen=True)
class RestoreModel:
    fixed_s: float
    s_per_byte: float
    resid_sd: float
    n: int
    method: str                              # "regression" | "phase split"
    line: Line | None                        # the regression, when method == "regression"
    category_s_per_byte: dict[str, float]    # scaling categories, per byte
    category_fixed_s: dict[str, float]       # fixed categories, seconds
    since: datetime | None = None            # a step change was found: drills from this date on

    def rto(self, restored_bytes: float) -> float:
        return max(0.0, self.fixed_s + self.s_per_byte * restored_bytes)

    def sd(self, restored_bytes: float) -> float:
        return self.line.prediction_sd(restored_bytes) if self.line else self.resid_sd * math.sqrt(1 + 1 / self.n)

    def breakdown(self, restored_bytes: float) -> dict[str, float]:
        """Predicted seconds per category at a size (from the phase timings)."""
        out = {k: v * restored_bytes for k, v in self.category_s_per_byte.items()}
        out.update(self.category_fixed_s)
        return out


def fit_restore(drills: list[DrillPoint]) -> RestoreModel:
    """The restore model from >= 1 drills (callers enforce MIN_DRILLS), oldest first."""
    drills = sorted(drills, key=lambda d: d.at)
    xs, ys = [float(d.restored_bytes) for d in drills], [d.rto_s for d in drills]
    # A step change is looked for in RTO against bytes when the size varied, else against time
    # (so a slow drift at constant size stays a trend, not a step).
    xs_for_steps = xs if _spread(xs) >= SIZE_SPREAD_FOR_REGRESSION else _days(drills)
    start = last_regime(xs_for_steps, ys, min_left=1)
    drills, xs, ys = drills[start:], xs[start:], ys[start:]
    since = drills[0].at if start else None
    per_byte, fixed = _category_rates(drills)
    if _spread(xs) >= SIZE_SPREAD_FOR_REGRESSION and len(set(xs)) >= 3:
        line = fit_line(xs, ys)
        if line.slope >= 0 and line.intercept >= 0:
            return RestoreModel(line.intercept, line.slope, line.resid_sd, line.n, "regression", line,
                                per_byte, fixed, since)
    s_per_byte = _through_origin([float(d.restored_bytes) for d in drills], [d.scaling_s for d in drills])
    fixed_s = median([d.fixed_s for d in drills])
    predicted = [fixed_s + s_per_byte * x for x in xs]
    dof = max(len(xs) - 2, 0)
    resid = math.sqrt(sum((y - p) ** 2 for y, p in zip(ys, predicted)) / dof) if dof else 0.0
    return RestoreModel(fixed_s, s_per_byte, resid, len(xs), "phase split", None, per_byte, fixed, since)


def _through_origin(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of y = k x: the biggest drills, most like the future ones, weigh most
    (a ratio per drill would let a tiny drill's start-up cost pass for a per-byte cost)."""
    sxx = sum(x * x for x in xs)
    return sum(x * y for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0


def _category_rates(drills: list[DrillPoint]) -> tuple[dict[str, float], dict[str, float]]:
    per_byte: dict[str, float] = {}
    fixed: dict[str, float] = {}
    categories = sorted({c for d in drills for c in d.phases})
    for cat in categories:
        if cat in SCALING:
            per_byte[cat] = _through_origin([float(d.restored_bytes) for d in drills],
                                            [d.phases.get(cat, 0.0) for d in drills])
        else:
            fixed[cat] = median([d.phases.get(cat, 0.0) for d in drills])
    return per_byte, fixed


@dataclass(frozen=True)
class Growth:
    bytes_now: float
    bytes_per_day: float
    n: int
    line: Line | None            # size against days since `origin`
    origin: datetime
    since: datetime | None = None
    note: str = ""

    def bytes_at(self, when: datetime) -> float:
        if self.line is None:
            return self.bytes_now
        return max(0.0, self.line.at((when - self.origin).total_seconds() / DAY_S))

    def sd_at(self, when: datetime) -> float:
        if self.line is None:
            return 0.0
        return self.line.prediction_sd((when - self.origin).total_seconds() / DAY_S)


def fit_growth(sizes: list[SizePoint], now: datetime, fallback_bytes: float) -> Growth:
    """Growth of the backed-up bytes; none (constant `fallback_bytes`) without two backups a day apart."""
    sizes = sorted(sizes, key=lambda p: p.at)
    if len(sizes) < 2 or (sizes[-1].at - sizes[0].at) < timedelta(days=1):
        return Growth(sizes[-1].bytes if sizes else fallback_bytes, 0.0, len(sizes), None, now,
                      note="no growth history yet (needs backups at least a day apart): size taken as constant")
    origin = sizes[0].at
    days = [(p.at - origin).total_seconds() / DAY_S for p in sizes]
    values = [float(p.bytes) for p in sizes]
    start = last_regime(days, values)
    since = sizes[start].at if start else None
    days, values = days[start:], values[start:]
    if len(values) < 2 or days[-1] - days[0] < 1:
        return Growth(values[-1], 0.0, len(values), None, now, since,
                      note="step change in data size: too few backups since to fit growth")
    line = fit_line(days, values)
    now_days = (now - origin).total_seconds() / DAY_S
    return Growth(max(0.0, line.at(now_days)), line.slope, line.n, line, origin, since)


def _days(drills: list[DrillPoint]) -> list[float]:
    origin = drills[0].at if drills else None
    return [(d.at - origin).total_seconds() / DAY_S for d in drills] if origin else []


def _spread(xs: list[float]) -> float:
    mean = sum(xs) / len(xs) if xs else 0.0
    return (max(xs) - min(xs)) / mean if mean > 0 else 0.0


# ---------------------------------------------------------------- the forecast

@dataclass(frozen=True)
class Prediction:
    days: int
    at: datetime
    restored_bytes: float
    rto_s: float
    low_s: float
    high_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"days": self.days, "at": self.at.isoformat(), "restored_bytes": round(self.restored_bytes),
                "rto_s": round(self.rto_s, 1), "low_s": round(self.low_s, 1), "high_s": round(self.high_s, 1)}


@dataclass
class Forecast:
    policy: str
    target_s: float | None
    status: Literal["insufficient", "ok", "breach-forecast", "breached"]
    message: str
    drills_used: int = 0
    drills_needed: int = MIN_DRILLS
    predictions: list[Prediction] = field(default_factory=list)
    breach_at: datetime | None = None            # central forecast reaches the target
    breach_at_pessimistic: datetime | None = None  # upper edge of the band reaches it
    dominant_phase: str | None = None
    advice: str | None = None
    model: RestoreModel | None = None
    growth: Growth | None = None
    notes: list[str] = field(default_factory=list)

    def prediction(self, days: int) -> Prediction | None:
        return next((p for p in self.predictions if p.days == days), None)

    def breach_within(self, days: float, now: datetime) -> bool:
        return self.breach_at is not None and self.breach_at <= now + timedelta(days=days)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy, "status": self.status, "message": self.message, "target_s": self.target_s,
            "drills_used": self.drills_used, "drills_needed": self.drills_needed,
            "predictions": [p.to_dict() for p in self.predictions],
            "breach_at": self.breach_at.isoformat() if self.breach_at else None,
            "breach_at_pessimistic": self.breach_at_pessimistic.isoformat() if self.breach_at_pessimistic else None,
            "dominant_phase": self.dominant_phase, "advice": self.advice, "notes": self.notes,
        }
        if self.model is not None:
            out["model"] = {"method": self.model.method, "fixed_s": round(self.model.fixed_s, 2),
                            "s_per_gib": round(self.model.s_per_byte * 2**30, 2),
                            "resid_sd_s": round(self.model.resid_sd, 2), "n": self.model.n,
                            "since": self.model.since.isoformat() if self.model.since else None}
        if self.growth is not None:
            out["growth"] = {"bytes_now": round(self.growth.bytes_now), "bytes_per_day": round(self.growth.bytes_per_day),
                             "n": self.growth.n, "since": self.growth.since.isoformat() if self.growth.since else None}
        return out


def forecast(policy: str, target_s: float | None, drills: list[DrillPoint], sizes: list[SizePoint],
             now: datetime, *, horizons: tuple[int, ...] = HORIZONS_DAYS,
             alert_days: float = DEFAULT_ALERT_HORIZON_DAYS) -> Forecast:
    """The forecast for one policy. `drills`: usable drills (drill_point), any order; `sizes`: the
    backed-up bytes of the sources those drills restore (size_series)."""
    drills = sorted(drills, key=lambda d: d.at)
    if len(drills) < MIN_DRILLS:
        return Forecast(policy, target_s, "insufficient",
                        f"needs >= {MIN_DRILLS} drills with a complete restore (have {len(drills)})",
                        drills_used=len(drills))
    model = fit_restore(drills)
    last = drills[-1]
    growth = fit_growth(sizes, now, float(last.restored_bytes))
    scale = _size_scale(sizes, growth, last)
    predict = _predictor(model, growth, scale)
    predictions = [predict(days, now) for days in horizons]
    result = Forecast(policy, target_s, "ok", "", drills_used=model.n, predictions=predictions,
                      model=model, growth=growth)
    result.notes = _notes(model, growth)
    if target_s is not None:
        result.breach_at, result.breach_at_pessimistic = _breach_dates(predict, now, target_s)
    at_horizon = predict(int(alert_days), now)
    result.dominant_phase, result.advice = _dominant(model, at_horizon.restored_bytes)
    result.status, result.message = _status(result, now, alert_days)
    return result


def _size_scale(sizes: list[SizePoint], growth: Growth, last: DrillPoint) -> float:
    """Restored bytes per backed-up byte, from the last drill and the backup it restored (the newest
    before the drill): backup counts (dump stream bytes, file bytes read) and restore counts measure
    the same data in slightly different ways, and a drill may restore only some sources."""
    before = [p for p in sizes if p.at <= last.at]
    backed_up = float(before[-1].bytes) if before else growth.bytes_at(last.at)
    return last.restored_bytes / backed_up if backed_up > 0 else 1.0


def _predictor(model: RestoreModel, growth: Growth, scale: float):  # noqa: ANN202 - a closure
    dof = max(model.n - 2, 1)
    t = t95(dof)

    def predict(days: int, now: datetime) -> Prediction:
        when = now + timedelta(days=days)
        size = growth.bytes_at(when) * scale
        rto = model.rto(size)
        sd = math.sqrt(model.sd(size) ** 2 + (model.s_per_byte * growth.sd_at(when) * scale) ** 2)
        return Prediction(days, when, size, rto, max(0.0, rto - t * sd), rto + t * sd)

    return predict


def _breach_dates(predict, now: datetime, target_s: float) -> tuple[datetime | None, datetime | None]:  # noqa: ANN001
    """First day the central forecast, and the band's upper edge, reach the target (None: not within
    MAX_BREACH_SEARCH_DAYS). Both are monotone in time when the data grows; a day-by-day scan keeps
    it exact for the band, whose width also changes with time."""
    central = pessimistic = None
    for days in range(0, MAX_BREACH_SEARCH_DAYS + 1):
        p = predict(days, now)
        if pessimistic is None and p.high_s >= target_s:
            pessimistic = p.at
        if p.rto_s >= target_s:
            central = p.at
            break
    return central, pessimistic


def _dominant(model: RestoreModel, restored_bytes: float) -> tuple[str | None, str | None]:
    parts = model.breakdown(restored_bytes)
    if not parts or max(parts.values()) <= 0:
        return None, None
    name = max(parts, key=lambda k: parts[k])
    return name, ADVICE.get(name)


def _status(result: Forecast, now: datetime, alert_days: float) -> tuple[Any, str]:
    now_p = result.predictions[0] if result.predictions else None
    if result.target_s is None:
        return "ok", "no RTO target set: forecast only"
    if result.breach_at is not None and result.breach_at <= now + timedelta(days=1) and now_p is not None \
            and now_p.rto_s >= result.target_s:
        return "breached", "the predicted RTO already exceeds the target"
    if result.breach_within(alert_days, now):
        assert result.breach_at is not None
        return "breach-forecast", (f"RTO forecast to exceed the target on {result.breach_at:%Y-%m-%d} "
                                   f"(in {(result.breach_at - now).days} days)")
    if result.breach_at is not None:
        return "ok", f"RTO forecast to exceed the target on {result.breach_at:%Y-%m-%d}"
    return "ok", f"RTO stays within the target for at least {MAX_BREACH_SEARCH_DAYS // 365} years at this growth"


def _notes(model: RestoreModel, growth: Growth) -> list[str]:
    notes = []
    if model.method == "phase split":
        notes.append("restored size barely varied between drills: fixed and per-byte time split from the phases")
    if model.since is not None:
        notes.append(f"step change in restore time: using the {model.n} drills since {model.since:%Y-%m-%d}")
    if growth.since is not None:
        notes.append(f"step change in data size: growth fitted on backups since {growth.since:%Y-%m-%d}")
    if growth.note:
        notes.append(growth.note)
    return notes
