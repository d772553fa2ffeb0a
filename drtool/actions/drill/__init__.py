"""Use case: restore drills -- steps that restore into scratch instances, verify, and time everything.

    run.py           run_drill: choose the snapshot sets, run the steps, record the verdict
    context.py       DrillContext: chosen sets, restored sources, runners per host, scratch teardown
    steps.py         run_step: one step against its timeout, into a StepResult
    restore_step.py  the restore step (files / databases, here or on a host: one code path)
    verify_step.py   the verify step (files tree / database fingerprint)
    checks.py        the sql, command and http steps
    kit_step.py      the kit step (the recovery kit opens the repository)
    model.py         StepResult, DrillReport and the pure verdict logic (RTO, RPO, expectations)
    timing.py        running a step against its timeout and stopping what it started
"""

from drtool.actions.drill.run import effective_targets, run_drill

__all__ = ["effective_targets", "run_drill"]
