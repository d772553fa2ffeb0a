"""The page model of the HTML dashboard: plain data built by pure functions, rendered by templates.

    PolicyPage  one policy: status row, forecast, drills, sizes, runs, calendar, signatures
    Dashboard   every policy at a glance (index.html) plus one PolicyPage each

Nothing here reads a file or the network: drtool.actions.dashboard gathers the
history and status rows, this module shapes them, drtool.report.html renders.
`rule_32110` is the 3-2-1-1-0 assessment of the policy (drtool/rule32110.py, from
the status row); None renders as "not assessed yet".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

CALENDAR_WEEKS = 12


@dataclass
class Rule32110:
    """The 3-2-1-1-0 rule (copies, media, offsite, immutable, errors) of one policy."""
    letters: dict[str, bool | None]      # "3", "2", "1o", "1i", "0" -> met?
    detail: str = ""
    shortfalls: list[str] = field(default_factory=list)   # "1i (immutable): why; to do: what"


def rule_32110(row: dict[str, Any]) -> Rule32110 | None:
    """Pure: the page's 3-2-1-1-0 from a status row (None when the row has none)."""
    rule = row.get("rule_32110")
    if not rule:
        return None
    short = [f"{x['letter']} ({x['name']}): {x['detail']}; to do: {x['advice']}"
             for x in rule["assessment"] if not x["met"]]
    marks = " ".join(f"{k} {'met' if rule['letters'][k] else 'NOT met'}" for k in ("3", "2", "1o", "1i", "0"))
    return Rule32110(dict(rule["letters"]), f"{rule['detail']} ({marks})", short)


@dataclass
class DayCell:
    day: date
    state: str                           # ok | failed | mixed | none | future
    label: str                           # the cell's accessible text, e.g. "2026-11-30: 1 ok"


@dataclass
class SignatureSummary:
    local: int = 0
    valid: int = 0
    invalid: int = 0
    unsigned: int = 0
    invalid_ids: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return self.invalid == 0


@dataclass
class PolicyPage:
    name: str
    row: dict[str, Any]                  # actions.status.policy_status()
    forecast: dict[str, Any]             # Forecast.to_dict()
    forecast_text: list[str]
    drills: list[dict[str, Any]]         # newest first: summary + origin + signature + report link
    rto_points: list[dict[str, Any]]     # oldest first: {"at", "rto_s", "passed"} (usable drills)
    size_points: list[dict[str, Any]]    # oldest first: {"at", "bytes"}
    runs: list[dict[str, Any]]           # newest first
    calendar: list[list[DayCell]]        # weeks (Monday first), oldest first
    signatures: SignatureSummary
    rto_svg: str = ""
    size_svg: str = ""
    rule_32110: Rule32110 | None = None

    @property
    def filename(self) -> str:
        return f"policy-{self.name}.html"


@dataclass
class Dashboard:
    generated_at: datetime
    host: str
    policies: list[PolicyPage]
    origins: list[str]                   # "catalog", "offsite"
    fleet: dict[str, Any] | None = None  # the fleet page's summary, when drtool.yaml names a fleet file

    @property
    def invalid_records(self) -> int:
        return sum(p.signatures.invalid for p in self.policies)

    @property
    def problems(self) -> int:
        return sum(1 for p in self.policies if p.row.get("problems"))


def signature_summary(records: list[Any]) -> SignatureSummary:
    """Counts of the history records (drtool.actions.history.HistoryRecord) by signature outcome."""
    summary = SignatureSummary()
    for record in records:
        setattr(summary, record.signature, getattr(summary, record.signature) + 1)
        if record.signature == "invalid":
            summary.invalid_ids.append(record.id or "?")
            summary.details.append(f"{record.id or '?'}: {record.signature_detail}")
    return summary


def backup_calendar(runs: list[dict[str, Any]], today: date, weeks: int = CALENDAR_WEEKS) -> list[list[DayCell]]:
    """Pure: `weeks` rows of 7 days (Monday first) ending with this week; each day's backup outcomes."""
    per_day: dict[date, list[str]] = {}
    for run in runs:
        if run.get("kind") != "backup":
            continue
        day = datetime.fromisoformat(str(run["started_at"])).date()
        per_day.setdefault(day, []).append(str(run.get("status")))
    start = today - timedelta(days=today.weekday()) - timedelta(weeks=weeks - 1)
    grid = []
    for w in range(weeks):
        week = []
        for d in range(7):
            day = start + timedelta(days=7 * w + d)
            week.append(_cell(day, per_day.get(day, []), today))
        grid.append(week)
    return grid


def _cell(day: date, statuses: list[str], today: date) -> DayCell:
    if day > today:
        return DayCell(day, "future", f"{day}: -")
    ok = statuses.count("success")
    failed = sum(1 for s in statuses if s in ("failed", "cancelled"))
    state = "none" if not statuses else ("ok" if not failed else ("failed" if not ok else "mixed"))
    text = ", ".join(part for part in (f"{ok} ok" if ok else "", f"{failed} failed" if failed else "") if part)
    return DayCell(day, state, f"{day}: {text or 'no backup'}")


def rto_points(drills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pure: chart points from drill reports (oldest first), drills without an RTO left out."""
    out = []
    for report in drills:
        achieved = (report.get("rto") or {}).get("achieved_s")
        if achieved is not None:
            out.append({"at": datetime.fromisoformat(str(report["started_at"])), "rto_s": float(achieved),
                        "passed": bool(report.get("passed")), "id": report.get("id")})
    return out


def size_points(series: list[Any]) -> list[dict[str, Any]]:
    """Pure: chart points from drtool.forecast.SizePoint values."""
    return [{"at": p.at, "bytes": p.bytes} for p in series]


def run_rows(runs: list[Any], limit: int = 30) -> list[dict[str, Any]]:
    """Newest first: the run records (HistoryRecord) as table rows."""
    rows = []
    for record in reversed(runs[-limit:]):
        data = record.data
        rows.append({"id": data.get("id"), "kind": data.get("kind"), "status": data.get("status"),
                     "started_at": data.get("started_at"), "duration_s": data.get("duration_s"),
                     "bytes_added": data.get("bytes_added"), "error": (data.get("error") or "").split("\n")[0][:300],
                     "origin": record.origin, "signature": record.signature})
    return rows
