"""Use case: run a restore drill and record its verdict.

    run_drill(settings, playbook) -> DrillReport

Opens the policy's repository, picks one snapshot set per source (the
playbook's `snapshot:` selector), runs the steps in order inside a
DrillContext (scratch instances torn down afterwards, also on Ctrl-C, unless
keep), then records the report: the local catalog (RunRecord kind "drill")
and offsite as drills/<id>.json, signed when signing is available.
"""

from __future__ import annotations

import threading

import logging
from collections.abc import Callable
from typing import Any

from drtool.actions.common import RepoHandle, open_repo, publish_offsite
from drtool.catalog import Catalog, RunRecord, new_run_id, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Playbook, Policy, Targets
from drtool.drill.context import DrillContext, sources_used
from drtool.drill.model import DrillReport, skipped_after
from drtool.drill.steps import run_step
from drtool.errors import DrtoolError

log = logging.getLogger(__name__)

EventFn = Callable[[dict[str, Any]], None]


def effective_targets(playbook: Playbook, policy: Policy) -> Targets:
    """The playbook's targets, each falling back to the policy's."""
    own = playbook.targets or Targets()
    return Targets(rpo=own.rpo if own.rpo is not None else policy.targets.rpo,
                   rto=own.rto if own.rto is not None else policy.targets.rto)


def run_drill(settings: Settings, playbook: Playbook, *, keep: bool = False, trigger: str = "manual",
              on_event: EventFn | None = None, cancel: threading.Event | None = None,
              host: str | None = None) -> DrillReport:
    if playbook.from_nothing is not None:     # a fire drill: the recovery runs in a sandbox
        from drtool.actions.fire_drill import run_fire_drill
        return run_fire_drill(settings, playbook, trigger=trigger, on_event=on_event, cancel=cancel, host=host)
    emit = on_event or (lambda _event: None)
    policy = settings.policy(playbook.policy)
    targets = effective_targets(playbook, policy)
    started = utcnow()
    report = DrillReport(new_run_id("drill", started), playbook.name, policy.name, started, trigger=trigger,
                         playbook_path=playbook.path, rto_target_s=targets.rto, rpo_target_s=targets.rpo)
    handle = open_repo(settings, policy.repository)
    emit({"event": "drill_start", "id": report.id, "playbook": playbook.name, "policy": policy.name})
    try:
        with DrillContext(settings, policy, handle, keep=keep, playbook_path=playbook.path, cancel=cancel,
                          host=host) as ctx:
            report.extra["host"] = ctx.host
            try:
                report.snapshot = ctx.choose(playbook.snapshot, sources_used(playbook), now=started)
                _run_steps(ctx, playbook, report, emit)
            finally:
                report.kept = list(ctx.kept)
                emit({"event": "teardown", "keep": keep})
    except KeyboardInterrupt:
        report.error = "interrupted (Ctrl-C) before the drill finished"
        _finish(settings, handle, report, emit)
        raise
    except DrtoolError as exc:
        report.error = f"the drill could not run to the end: {exc}"
    _finish(settings, handle, report, emit)
    return report


def _run_steps(ctx: DrillContext, playbook: Playbook, report: DrillReport, emit: EventFn) -> None:
    stopped_by: str | None = None
    for step in playbook.steps:
        if not stopped_by and ctx.cancel is not None and ctx.cancel.is_set():
            stopped_by = "the drill was cancelled (drtool is shutting down)"
            report.error = "interrupted: cancelled before the drill finished"
        if stopped_by:
            report.steps.append(skipped_after(step.name, step.kind, stopped_by))
            continue
        emit({"event": "step_start", "name": step.name, "kind": step.kind})
        result = run_step(ctx, step)
        report.steps.append(result)
        emit({"event": "step_done", **result.to_dict()})
        if result.status != "passed" and step.on_failure == "stop":
            stopped_by = f"step {step.name!r} {result.status.replace('_', ' ')} (on_failure: stop)"


def _finish(settings: Settings, handle: RepoHandle, report: DrillReport, emit: EventFn) -> None:
    report.finished_at = utcnow()
    record = to_run_record(report)
    catalog = Catalog(settings.state_dir)
    catalog.record(record)
    publish_offsite(handle, f"drills/{report.id}.json", report.to_dict(), report.extra, emit)
    record.details = report.to_dict()
    catalog.record(record)
    emit({"event": "drill_done", "id": report.id, "passed": report.passed})


def to_run_record(report: DrillReport) -> RunRecord:
    snaps = sorted({sid for src in (report.snapshot or {}).get("sources", {}).values()
                    for sid in src.get("snapshots", [])})
    record = RunRecord(report.id, report.policy, "drill", "running", report.started_at, trigger=report.trigger,
                       snapshots=snaps, details=report.to_dict())
    status = "success" if report.passed else ("cancelled" if report.error and "interrupted" in report.error
                                              else "failed")
    record.finish(status, None if report.passed else "; ".join(report.failures)[:2000])
    if report.finished_at:
        record.finished_at = report.finished_at
        record.duration_s = (report.finished_at - report.started_at).total_seconds()
    return record
