"""Progress events: what a running backup, drill or recovery tells whoever watches it.

Producers (actions, the pipeline, remote sources) emit these dataclasses through an
`EventFn`; renderers (the CLI's progress lines and bars, `--json` lines) match them by
type. `to_dict()` is the `--json` form: {"event": NAME, ...fields}, the names and fields
scripts already read. Notification events are another thing (drtool/notify.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class ProgressEvent:
    name: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.name, **asdict(self)}


EventFn = Callable[[ProgressEvent], None]


def ignore(_event: ProgressEvent) -> None:
    """The EventFn of a caller who does not watch."""


@dataclass(frozen=True)
class Notice(ProgressEvent):
    """Something a person should read, not an error (a bucket was created, a retry comes)."""
    name: ClassVar[str] = "notice"
    message: str
    source: str | None = None


# ---------------------------------------------------------------- backups

@dataclass(frozen=True)
class SourceStarted(ProgressEvent):
    name: ClassVar[str] = "source_start"
    source: str
    kind: str                                  # files | postgres | mariadb | sqlite


@dataclass(frozen=True)
class SourceDone(ProgressEvent):
    name: ClassVar[str] = "source_done"
    source: str
    bytes_added: int | None = None
    snapshots: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SourceFailed(ProgressEvent):
    name: ClassVar[str] = "source_failed"
    source: str
    error: str


@dataclass(frozen=True)
class StreamStarted(ProgressEvent):
    name: ClassVar[str] = "stream_start"
    source: str
    stream: str


@dataclass(frozen=True)
class Progress(ProgressEvent):
    """One of restic's --json messages (status lines: percent_done, bytes_done, total_bytes...)."""
    name: ClassVar[str] = "progress"
    source: str
    restic: dict[str, Any]
    stream: str | None = None

    @property
    def is_status(self) -> bool:
        return self.restic.get("message_type") == "status"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.name, "source": self.source, "stream": self.stream, **self.restic}


@dataclass(frozen=True)
class RunRecorded(ProgressEvent):
    """The run lifecycle kept the record: locally (or not) and offsite (or not)."""
    name: ClassVar[str] = "run_recorded"
    id: str
    status: str
    local: bool
    offsite: bool | None


# ---------------------------------------------------------------- drills and recoveries

@dataclass(frozen=True)
class DrillStarted(ProgressEvent):
    name: ClassVar[str] = "drill_start"
    id: str
    playbook: str
    policy: str


@dataclass(frozen=True)
class StepStarted(ProgressEvent):
    name: ClassVar[str] = "step_start"
    step: str                                  # the step's name
    kind: str | None = None                    # restore, verify...; None for a recovery's own steps

    def to_dict(self) -> dict[str, Any]:
        # drills have always said "name", recoveries "step": both, for scripts reading either
        return {"event": self.name, "name": self.step, "step": self.step, "kind": self.kind}


@dataclass(frozen=True)
class StepDone(ProgressEvent):
    name: ClassVar[str] = "step_done"
    step: str
    duration_s: float
    status: str = "passed"
    detail: str = ""
    result: dict[str, Any] = field(default_factory=dict)   # a drill step's full StepResult

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.name, "name": self.step, "step": self.step, "duration_s": self.duration_s,
                "status": self.status, "detail": self.detail, **self.result}


@dataclass(frozen=True)
class Teardown(ProgressEvent):
    name: ClassVar[str] = "teardown"
    keep: bool


@dataclass(frozen=True)
class DrillDone(ProgressEvent):
    name: ClassVar[str] = "drill_done"
    id: str
    passed: bool


def step_done(result: Any) -> StepDone:
    """The event for a finished drill step (a drtool.actions.drill.model.StepResult)."""
    data = result.to_dict()
    return StepDone(result.name, round(result.duration_s, 3), result.status, result.detail, data)
