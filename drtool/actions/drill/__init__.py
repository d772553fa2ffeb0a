"""Restore drills: steps that restore into scratch instances, verify, and time everything.

    model.py    StepResult, DrillReport and the pure verdict logic (RTO, RPO, expectations)
    context.py  DrillContext: chosen snapshot sets, restored sources, scratch teardown
    steps.py    one function per step kind, and run_step (timing, timeout, status)
    timing.py   running a step against its timeout and stopping what it started

The use case that strings them together is drtool.actions.drill.run_drill.
"""
