"""Use case: run a restore drill and record its verdict.

    run_drill(settings, playbook) -> DrillReport      (report.record: its RunRecord)

Opens the policy's repository, picks one snapshot set per source (the playbook's
`snapshot:` selector, this host's sets), runs the steps in order inside a
DrillContext (scratch instances and SSH connections torn down afterwards, also on
Ctrl-C, unless keep), and records the report through the run lifecycle: the local
catalog (kind "drill"), the signed report offsite as drills/<id>.json,
notifications, metrics.
"""

from __future__ import annotations

import logging
import threading

from drtool.actions.common import RepoHandle, open_repo
from drtool.actions.drill.context import DrillContext, sources_used
from drtool.actions.drill.model import DrillReport, skipped_after
from drtool.actions.drill.steps import run_step
from drtool.actions.lifecycle import RunLifecycle
from drtool.catalog import RunRecord, new_run_id, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Playbook, Policy, Targets
from drtool.errors import DrtoolError
from drtool.events import DrillDone, DrillStarted, EventFn, StepStarted, Teardown, ignore, step_done

log = logging.getLogger(__name__)



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
    emit = on_event or ignore
    policy = settings.policy(playbook.policy)
    report, lifecycle = drill_run(settings, playbook, policy, trigger=trigger, emit=emit)
    with lifecycle:
        report.started_at = lifecycle.record.started_at
        lifecycle.handle = open_repo(settings, policy.repository)      # the report lives beside the policy's
        repo = playbook.repository_for(policy)                            # `from:` drills one of its copies
        handle = lifecycle.handle if repo == policy.repository else open_repo(settings, repo)
        report.extra["repository"] = repo
        emit(DrillStarted(report.id, playbook.name, policy.name))
        try:
            _drill(settings, playbook, policy, handle, report, emit, keep=keep, cancel=cancel, host=host)
        except KeyboardInterrupt:
            report.error, report.cancelled = "interrupted (Ctrl-C) before the drill finished", True
            conclude_drill(lifecycle, report)
            raise
        conclude_drill(lifecycle, report)
    report.record = lifecycle.record
    emit(DrillDone(report.id, report.passed))
    return report


def drill_run(settings: Settings, playbook: Playbook, policy: Policy, *, trigger: str,
              emit: EventFn, drill_id: str | None = None) -> tuple[DrillReport, RunLifecycle]:
    """A drill's report and the run lifecycle that records it (catalog, signed drills/<id>.json
    offsite, alerts, metrics): the same for every kind of drill, fire drills included."""
    targets = effective_targets(playbook, policy)
    drill_id = drill_id or new_run_id("drill")
    report = DrillReport(drill_id, playbook.name, policy.name, utcnow(), trigger=trigger,
                         playbook_path=playbook.path, rto_target_s=targets.rto, rpo_target_s=targets.rpo)
    lifecycle = RunLifecycle(settings, "drill", policy.name, trigger=trigger, emit=emit, run_id=drill_id,
                             playbook=playbook.name, offsite_path=f"drills/{drill_id}.json",
                             offsite_body=lambda _run: report.to_dict())
    return report, lifecycle


def _drill(settings: Settings, playbook: Playbook, policy: Policy, handle: RepoHandle, report: DrillReport,
           emit: EventFn, *, keep: bool, cancel: threading.Event | None, host: str | None) -> None:
    try:
        with DrillContext(settings, policy, handle, keep=keep, playbook_path=playbook.path, cancel=cancel,
                          host=host) as ctx:
            report.extra["host"] = ctx.host
            try:
                report.snapshot = ctx.choose(playbook.snapshot, sources_used(playbook.steps), now=report.started_at)
                _run_steps(ctx, playbook, report, emit)
            finally:
                report.kept = list(ctx.kept)
                emit(Teardown(keep))
    except DrtoolError as exc:
        report.error = f"the drill could not run to the end: {exc}"


def _run_steps(ctx: DrillContext, playbook: Playbook, report: DrillReport, emit: EventFn) -> None:
    stopped_by: str | None = None
    for step in playbook.steps:
        if not stopped_by and ctx.cancel is not None and ctx.cancel.is_set():
            stopped_by = "the drill was cancelled (drtool is shutting down)"
            report.error, report.cancelled = "cancelled before the drill finished", True
        if stopped_by:
            report.steps.append(skipped_after(step.name, step.kind, stopped_by))
            continue
        emit(StepStarted(step.name, step.kind))
        result = run_step(ctx, step)
        report.steps.append(result)
        emit(step_done(result))
        if result.status != "passed" and step.on_failure == "stop":
            stopped_by = f"step {step.name!r} {result.status.replace('_', ' ')} (on_failure: stop)"


def conclude_drill(lifecycle: RunLifecycle, report: DrillReport) -> None:
    """The drill's verdict becomes the run's status; the report is the run's details. A recovery
    slower than its target is also its own alert (`rto_breach`), beside the drill's outcome."""
    report.finished_at = utcnow()
    fill_record(lifecycle.record, report)
    status = "success" if report.passed else ("cancelled" if report.cancelled else "failed")
    lifecycle.conclude(status, None if report.passed else "; ".join(report.failures)[:2000])
    achieved, target = report.rto_achieved_s, report.rto_target_s
    if report.rto_met is False and achieved is not None and target is not None:
        lifecycle.notify("rto_breach", f"drill {report.playbook}: recovery took {achieved:.0f}s, target is "
                         f"{target:.0f}s", details={"rto_achieved_s": achieved, "rto_target_s": target})


def fill_record(record: RunRecord, report: DrillReport) -> None:
    record.snapshots = sorted({sid for src in (report.snapshot or {}).get("sources", {}).values()
                               for sid in src.get("snapshots", [])})
    keep = {k: v for k, v in record.details.items() if k in ("process", "notifications", "local_record_error",
                                                               "catalog_recovered_from")}
    record.details = {**report.to_dict(), **keep}
