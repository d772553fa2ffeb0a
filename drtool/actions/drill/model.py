"""Drill results and verdicts: pure data and pure logic, no I/O.

A drill is a pipeline of steps; each returns a `StepResult` (passed, failed,
timed_out or skipped) with its start, duration, a one-line detail and, for
restore steps, the phases where the time went. `DrillReport` sums them into
the verdict:

    RTO achieved = first step's start -> last restore step's end
    RPO achieved = age of the restored snapshot (the oldest, if several) at drill start; a step that
                   measured the data loss itself (a point-in-time recovery's canary) gives it instead
    passed       = every step passed, and each target that is set holds
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from drtool.errors import DrillFailed

Status = Literal["passed", "failed", "timed_out", "skipped"]
RECOVERY_KINDS = ("restore",)


@dataclass
class Outcome:
    """What a step function returns when it passed: one line, the timed phases, extra data."""

    detail: str
    phases: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class StepFailed(DrillFailed):
    """A step ran and its check did not hold."""

    def __init__(self, message: str, *, data: dict[str, Any] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.data = data or {}


@dataclass
class StepResult:
    name: str
    kind: str
    status: Status
    started_at: datetime | None = None
    duration_s: float = 0.0
    detail: str = ""
    phases: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ended_at(self) -> datetime | None:
        return None if self.started_at is None else self.started_at + timedelta(seconds=self.duration_s)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "status": self.status,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "duration_s": round(self.duration_s, 3), "detail": self.detail,
        }
        if self.phases:
            out["phases"] = self.phases
        if self.data:
            out.update({k: v for k, v in self.data.items() if k not in out})
        return out


def phase_dict(name: str, duration_s: float, nbytes: int | None = None) -> dict[str, Any]:
    """One restore phase with its throughput (MB/s), as it appears in reports."""
    throughput = nbytes / duration_s / 1e6 if nbytes and duration_s > 0 else None
    return {"name": name, "duration_s": round(duration_s, 3), "bytes": nbytes,
            "throughput_mb_s": round(throughput, 2) if throughput is not None else None}


# ---------------------------------------------------------------- verdicts

def rto_achieved(steps: list[StepResult]) -> float | None:
    """First step start to the end of the last recovery step that ran; None without one."""
    started = [s for s in steps if s.started_at is not None]
    recovered = [s for s in started if s.kind in RECOVERY_KINDS and s.status != "skipped"]
    if not started or not recovered:
        return None
    first = min(s.started_at for s in started)  # type: ignore[type-var]
    last = max(s.ended_at for s in recovered)  # type: ignore[type-var]
    return max(0.0, (last - first).total_seconds())


def recovery_complete(steps: list[StepResult]) -> bool:
    """Every recovery step passed (a failed restore has not recovered anything)."""
    return all(s.status == "passed" for s in steps if s.kind in RECOVERY_KINDS)


def rpo_achieved(snapshot_time: datetime | None, drill_start: datetime) -> float | None:
    if snapshot_time is None:
        return None
    return max(0.0, (drill_start - snapshot_time).total_seconds())


def target_met(achieved: float | None, target: float | None, *, complete: bool = True) -> bool | None:
    """None when no target is set; False when a target is set but nothing was achieved."""
    if target is None:
        return None
    if achieved is None or not complete:
        return False
    return achieved <= target


def drill_passed(steps: list[StepResult], rto_met: bool | None, rpo_met: bool | None) -> bool:
    return bool(steps) and all(s.status == "passed" for s in steps) and rto_met is not False and rpo_met is not False


def skipped_after(name: str, kind: str, cause: str) -> StepResult:
    return StepResult(name, kind, "skipped", detail=f"skipped: {cause}")


# ---------------------------------------------------------------- sql expectations

def check_expect(value: str | None, equals: Any = None, minimum: float | None = None,
                 maximum: float | None = None, regex: str | None = None) -> list[str]:
    """Problems with a query's first value against an `expect:` block; empty when it holds."""
    problems: list[str] = []
    shown = "NULL/no row" if value is None else repr(value)
    if equals is not None and not _equal(value, equals):
        problems.append(f"got {shown}, expected {equals!r}")
    if minimum is not None or maximum is not None:
        number = _number(value)
        if number is None:
            problems.append(f"got {shown}, expected a number")
        else:
            if minimum is not None and number < minimum:
                problems.append(f"got {_fmt(number)}, expected at least {_fmt(minimum)}")
            if maximum is not None and number > maximum:
                problems.append(f"got {_fmt(number)}, expected at most {_fmt(maximum)}")
    if regex is not None and (value is None or re.search(regex, value) is None):
        problems.append(f"got {shown}, expected a match for /{regex}/")
    return problems


def _equal(value: str | None, expected: Any) -> bool:
    if value is None:
        return False
    if isinstance(expected, bool):
        return value.strip().lower() in (("t", "true", "1") if expected else ("f", "false", "0"))
    if isinstance(expected, (int, float)):
        number = _number(value)
        return number is not None and number == float(expected)
    return value == str(expected)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


# ---------------------------------------------------------------- the report

@dataclass
class DrillReport:
    id: str
    playbook: str
    policy: str
    started_at: datetime
    trigger: str = "manual"
    playbook_path: str | None = None
    finished_at: datetime | None = None
    snapshot: dict[str, Any] | None = None          # {id, time, sources: {name: {...}}}
    rto_target_s: float | None = None
    rpo_target_s: float | None = None
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None                         # a failure outside any step
    kept: list[str] = field(default_factory=list)    # how to reach instances left running (--keep)
    extra: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False                          # stopped on request (SIGTERM, Ctrl-C), not failed
    record: Any = None                               # the RunRecord the lifecycle kept (set at the end)

    @property
    def snapshot_time(self) -> datetime | None:
        if not self.snapshot or not self.snapshot.get("time"):
            return None
        return datetime.fromisoformat(self.snapshot["time"])

    @property
    def rto_achieved_s(self) -> float | None:
        return rto_achieved(self.steps)

    @property
    def rpo_achieved_s(self) -> float | None:
        measured = [s.data["rpo_achieved_s"] for s in self.steps
                    if s.status == "passed" and s.data.get("rpo_achieved_s") is not None]
        if measured:
            return max(measured)
        return rpo_achieved(self.snapshot_time, self.started_at)

    @property
    def rto_met(self) -> bool | None:
        return target_met(self.rto_achieved_s, self.rto_target_s, complete=recovery_complete(self.steps))

    @property
    def rpo_met(self) -> bool | None:
        return target_met(self.rpo_achieved_s, self.rpo_target_s)

    @property
    def passed(self) -> bool:
        return self.error is None and drill_passed(self.steps, self.rto_met, self.rpo_met)

    @property
    def failures(self) -> list[str]:
        """Why the drill did not pass, one line each (empty when it passed)."""
        out = [f"step {s.name!r} {s.status.replace('_', ' ')}: {s.detail}"
               for s in self.steps if s.status in ("failed", "timed_out")]
        if self.rto_met is False:
            achieved = self.rto_achieved_s
            out.append(f"RTO breached: {_secs(achieved)} achieved, target {_secs(self.rto_target_s)}"
                       if recovery_complete(self.steps) and achieved is not None
                       else f"RTO not achieved: recovery did not complete (target {_secs(self.rto_target_s)})")
        if self.rpo_met is False:
            measured = any(s.data.get("rpo_achieved_s") is not None for s in self.steps if s.status == "passed")
            out.append(f"RPO breached: {_secs(self.rpo_achieved_s)} of data lost (measured in the recovered "
                       f"database), target {_secs(self.rpo_target_s)}" if measured else
                       f"RPO breached: restored snapshot was {_secs(self.rpo_achieved_s)} old, "
                       f"target {_secs(self.rpo_target_s)}")
        if self.error:
            out.append(self.error)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "playbook": self.playbook,
            "playbook_path": self.playbook_path,
            "policy": self.policy,
            "trigger": self.trigger,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "snapshot": self.snapshot,
            "passed": self.passed,
            "rto": {"target_s": self.rto_target_s, "achieved_s": _round(self.rto_achieved_s), "met": self.rto_met},
            "rpo": {"target_s": self.rpo_target_s, "achieved_s": _round(self.rpo_achieved_s), "met": self.rpo_met},
            "steps": [s.to_dict() for s in self.steps],
            "failures": self.failures,
            "error": self.error,
            "kept": self.kept,
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _secs(value: float | None) -> str:
    from drtool.config.durations import format_duration
    return format_duration(value)
