"""Use case: the fire drill - recover from nothing but the kit, on a schedule, and time it.

A playbook with `from_nothing: {kit: FILE, passphrase: SECRET}` (or
`identity: FILE`) is run by `run_drill` through here:

1. a sandbox (drtool.actions.sandbox): empty HOME, state dir and TMPDIR, no
   drtool.yaml, no secret of this machine in the environment;
2. `mode: drtool` (default): `drtool recover` runs there as a subprocess with
   only the kit and its passphrase, recovering every source of the policy
   into servers and directories inside the sandbox (the very production path:
   durable servers, fingerprints verified); `mode: runbook`: the generated
   runbook runs in bash with bare tools (no drtool on PATH) against empty
   scratch servers, answering age's passphrase prompt on a terminal;
3. the playbook's checks (sql / http / command steps) run against what came
   back, through the ordinary drill steps;
4. time-to-service per source (drtool mode: from the start of the sandbox to
   the end of that source's restore) and in total, against the RTO;
5. everything is torn down, and the report is signed and recorded like any
   drill (local catalog, offsite drills/<id>.json).

A revoked kit, a wrong passphrase or a tampered configuration bundle makes
the recovery step fail with the recovery's own message.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from drtool.actions.kit_open import KitKey
from drtool.actions.sandbox import Sandbox, fire_sandbox, run_recover, run_runbook
from drtool.catalog import utcnow
from drtool.config.loader import Settings
from drtool.config.models import Playbook, Policy
from drtool.actions.drill.model import DrillReport, StepResult, skipped_after
from drtool.errors import DrtoolError, UsageError
from drtool.execute import LocalRunner
from drtool.events import DrillDone, DrillStarted, EventFn, StepStarted, Teardown, ignore, step_done

log = logging.getLogger(__name__)



@dataclass
class FireRun:
    """One fire drill while it runs: what both modes need."""

    settings: Settings
    playbook: Playbook
    policy: Policy
    box: Sandbox
    kit: Path                    # the sandbox's copy
    key: KitKey
    report: DrillReport
    emit: EventFn
    host: str | None
    cancel: threading.Event | None

    @property
    def timeout(self) -> float:
        assert self.playbook.from_nothing is not None
        return self.playbook.from_nothing.timeout


def run_fire_drill(settings: Settings, playbook: Playbook, *, trigger: str = "manual",
                   on_event: EventFn | None = None, cancel: threading.Event | None = None,
                   host: str | None = None, handle: Any = None, sandbox_parent: Path | None = None,
                   drill_id: str | None = None, extra: dict[str, Any] | None = None) -> DrillReport:
    """`handle`, `sandbox_parent`, `drill_id`, `extra`: for the drill pool (drtool.actions.pool), which
    publishes with the kit's access, keeps the sandbox in a leased directory, names the drill before
    it starts and adds the job's attempts to the report."""
    from drtool.actions.common import open_repo
    from drtool.actions.drill.run import conclude_drill, drill_run

    emit = on_event or ignore
    spec = playbook.from_nothing
    assert spec is not None
    policy = settings.policy(playbook.policy)
    # Recorded like any drill (local catalog, signed offsite as drills/<id>.json, alerts, metrics).
    report, lifecycle = drill_run(settings, playbook, policy, trigger=trigger, emit=emit, drill_id=drill_id)
    with lifecycle:
        report.started_at = lifecycle.record.started_at
        lifecycle.handle = handle or open_repo(settings, policy.repository)
        report.extra["from_nothing"] = {"mode": spec.mode, "kit": str(_beside(playbook, spec.kit))}
        report.extra.update(extra or {})
        emit(DrillStarted(report.id, playbook.name, policy.name))
        try:
            _fire(settings, playbook, policy, report, emit, host=host, cancel=cancel, parent=sandbox_parent)
        except DrtoolError as exc:
            report.error = f"the fire drill could not run to the end: {exc}"
        conclude_drill(lifecycle, report)
    report.record = lifecycle.record
    emit(DrillDone(report.id, report.passed))
    return report


def _fire(settings: Settings, playbook: Playbook, policy: Policy, report: DrillReport, emit: EventFn, *,
          host: str | None, cancel: threading.Event | None, parent: Path | None = None) -> None:
    spec = playbook.from_nothing
    assert spec is not None
    key = KitKey(spec.passphrase.resolve().reveal() if spec.passphrase else None,
                 _beside(playbook, spec.identity) if spec.identity else None)
    kit = _beside(playbook, spec.kit)
    if not kit.is_file():
        raise UsageError(f"the fire drill's kit {kit} does not exist", hint="fix from_nothing.kit in the playbook")
    with fire_sandbox(parent) as box:
        run = FireRun(settings, playbook, policy, box, box.take_kit(kit), key, report, emit, host, cancel)
        (_recover_in_drtool if spec.mode == "drtool" else _recover_with_runbook)(run)
        emit(Teardown(False))


def _beside(playbook: Playbook, name: str) -> Path:
    path = Path(name)
    if not path.is_absolute() and playbook.path:
        path = Path(playbook.path).parent / path
    return path


# ---------------------------------------------------------------- mode: drtool recover

def _recover_in_drtool(run: FireRun) -> None:
    report, box = run.report, run.box
    begun = utcnow()
    run.emit(StepStarted("recover from the kit (sandbox)", "restore"))
    outcome = run_recover(box, run.kit, run.key, run.policy.name, timeout=run.timeout, host=run.host)
    recovered = outcome.report or {}
    try:
        if outcome.code != 0 and not recovered.get("sources"):
            detail = outcome.error or f"drtool recover exited with code {outcome.code}"
            report.steps.append(StepResult("recover from the kit (sandbox)", "restore", "failed", begun,
                                           outcome.duration_s, detail=detail))
            _skip_checks(run.playbook, report, "the recovery failed")
            return
        report.steps += recovery_steps(recovered, begun, outcome.duration_s)
        report.snapshot = _snapshot(recovered)
        report.extra["from_nothing"].update(_service_times(report.steps), credentials=recovered.get("credentials"),
                                            host=recovered.get("host"))
        for step in report.steps:
            run.emit(step_done(step))
        _run_checks(run, restored_from_recover(run.policy, recovered, box), recovered.get("host"))
    finally:
        _stop_recovered(recovered)


def recovery_steps(recovered: dict[str, Any], begun: datetime, wall_s: float) -> list[StepResult]:
    """recover's own timed steps as drill steps: one 'prepare' (drtool start, kit, repositories,
    bundle, listing: everything before the first restore) and one 'restore' per source. recover
    restores its sources at the same time: each one's time to service is when it started (from
    the start of the drtool process) plus how long it took."""
    timed = recovered.get("steps", [])
    restores = {s["step"].removeprefix("restore "): s for s in timed if s["step"].startswith("restore ")}
    start_up = max(0.0, wall_s - float(recovered.get("recovery_time_s") or 0.0))   # python start, exit
    first = min((s.get("started_s", 0.0) for s in restores.values()), default=sum(s["duration_s"] for s in timed))
    before = [s for s in timed if not s["step"].startswith("restore ") and s.get("started_s", 0.0) < first]
    prepare_s = start_up + first
    steps = [StepResult("start drtool, open kit, repositories and bundle (sandbox)", "prepare", "passed", begun,
                        prepare_s, detail=", ".join(f"{s['step']} {s['duration_s']:.1f}s" for s in before))]
    for source in recovered.get("sources", []):         # the policy's order
        name = source.get("source")
        item = restores.get(name)
        if item is None:
            continue
        ok = source.get("verified") is not False and not source.get("problems")
        detail = (f"into {source.get('target', '?')}: "
                  + ("verified against the backup" if ok else "; ".join(source.get("problems", []))[:500]
                     or "not restored"))
        offset = start_up + item.get("started_s", first)
        steps.append(StepResult(f"recover {name}", "restore", "passed" if ok else "failed",
                                begun + timedelta(seconds=offset), item["duration_s"], detail=detail,
                                data={"time_to_service_s": round(offset + item["duration_s"], 3),
                                      "rows": source.get("rows")}))
    return steps


def _service_times(steps: list[StepResult]) -> dict[str, Any]:
    per = {s.name.removeprefix("recover "): s.data["time_to_service_s"] for s in steps if "time_to_service_s" in s.data}
    return {"time_to_service_s": per, "total_s": max(per.values()) if per else None}


def _snapshot(recovered: dict[str, Any]) -> dict[str, Any] | None:
    sets = [s["snapshot"] for s in recovered.get("sources", []) if s.get("snapshot")]
    if not sets:
        return None
    oldest = min(sets, key=lambda s: s["time"])
    return {"id": oldest.get("id"), "short_id": oldest.get("short_id"), "time": oldest["time"],
            "source": oldest.get("source"), "sources": {s["source"]: s for s in sets}}


def restored_from_recover(policy: Policy, recovered: dict[str, Any], box: Sandbox) -> dict[str, Any]:
    """What the checks reach: the recovered servers (from recover's report) and the restore root."""
    from drtool.actions.select import SnapshotSet
    from drtool.actions.drill.context import Restored
    from drtool.secrets import Secret
    from drtool.sources import database_source
    from drtool.sources.base import DbTarget

    out: dict[str, Any] = {}
    for item in recovered.get("sources", []):
        source = policy.source(item["source"])
        snap = item.get("snapshot") or {}
        chosen = SnapshotSet(source.name, snap.get("run", "?"), datetime.fromisoformat(snap["time"]))
        server = item.get("server") or {}
        if source.kind == "files":
            out[source.name] = Restored(source, chosen, directory=box.restore_root)
            continue
        if source.kind == "sqlite":
            target = DbTarget(kind="sqlite", host=None, path=box.restore_root / source.spec.path.lstrip("/"))
        else:
            password = Secret(Path(server["password_file"]).read_text().strip())
            socket = str(Path(server["dir"]) / "mysqld.sock") if source.kind == "mariadb" else None
            target = DbTarget(kind=source.kind, host="127.0.0.1", port=server["port"], user=server["user"],
                              password=password, socket=socket, bin_dir=server.get("bin_dir"))
        out[source.name] = Restored(source, chosen, target=target, databases=list(item.get("databases") or []),
                                    db=database_source(source, LocalRunner()))
    return out


def _stop_recovered(recovered: dict[str, Any]) -> None:
    for item in recovered.get("sources", []):
        stop = ((item.get("server") or {}).get("service") or {}).get("stop")
        if stop:
            LocalRunner().run(stop, timeout=120, check=False)


# ---------------------------------------------------------------- mode: the runbook in bash

def _recover_with_runbook(run: FireRun) -> None:
    from drtool.actions.fire_runbook import empty_servers, runbook_env, runbook_script

    report, box, policy = run.report, run.box, run.policy
    with ExitStack() as stack:
        begun = utcnow()
        servers = empty_servers(policy, box, stack)
        report.steps.append(StepResult("start empty servers (the new machine's)", "prepare", "passed", begun,
                                       (utcnow() - begun).total_seconds()))
        script, used_host = runbook_script(run.settings, policy, box, run.host)
        at = utcnow()
        outcome = run_runbook(box, script, runbook_env(policy, box, run.kit, run.key, servers), run.key.passphrase,
                              timeout=run.timeout)
        ok = outcome.code == 0 and outcome.problem is None
        detail = outcome.problem or (outcome.output.splitlines()[-1:] or ["no output"])[0]
        report.steps.append(StepResult("runbook in bash, bare tools (sandbox)", "restore",
                                       "passed" if ok else "failed", at, outcome.duration_s,
                                       detail=detail[:1000], data={"exit_code": outcome.code,
                                                                   "output_tail": outcome.output}))
        report.extra["from_nothing"].update(total_s=round((utcnow() - begun).total_seconds(), 3), host=used_host)
        report.snapshot = runbook_snapshot(box, outcome.output)
        run.emit(step_done(report.steps[-1]))
        if not ok:
            _skip_checks(run.playbook, report, "the runbook failed")
            return
        _run_checks(run, servers.restored(policy), used_host)


def runbook_snapshot(box: Sandbox, output: str) -> dict[str, Any] | None:
    """The run the runbook chose (it says so) and when it was taken (its snapshot listing): the RPO."""
    import json
    import re

    found = re.search(r"restoring backup run (\S+)", output)
    listing = box.work / "snapshots.json"
    if found is None or not listing.is_file():
        return None
    run = found.group(1)
    snaps = [s for s in json.loads(listing.read_text()) if f"run={run}" in (s.get("tags") or [])]
    if not snaps:
        return None
    first = min(snaps, key=lambda s: s["time"])
    from drtool.engine.restic import parse_restic_time
    return {"id": first["id"], "short_id": first.get("short_id"), "time": parse_restic_time(first["time"]).isoformat(),
            "run": run, "snapshots": sorted(s["id"] for s in snaps)}


# ---------------------------------------------------------------- checks, recording

def _run_checks(run: FireRun, restored: dict[str, Any], host: str | None) -> None:
    """The playbook's sql / http / command steps, run by the ordinary drill step runner."""
    from drtool.actions.drill.context import DrillContext
    from drtool.actions.drill.steps import run_step

    # No repository handle: checks read what was restored, never the repository.
    ctx = DrillContext(run.settings, run.policy, None, playbook_path=run.playbook.path,  # type: ignore[arg-type]
                       cancel=run.cancel, host=host or "-")
    ctx.restored.update(restored)
    stopped = None
    for step in run.playbook.steps:
        if stopped:
            run.report.steps.append(skipped_after(step.name, step.kind, stopped))
            continue
        run.emit(StepStarted(step.name, step.kind))
        result = run_step(ctx, step)
        run.report.steps.append(result)
        run.emit(step_done(result))
        if result.status != "passed" and step.on_failure == "stop":
            stopped = f"step {step.name!r} {result.status.replace('_', ' ')} (on_failure: stop)"


def _skip_checks(playbook: Playbook, report: DrillReport, cause: str) -> None:
    report.steps += [skipped_after(s.name, s.kind, cause) for s in playbook.steps]
