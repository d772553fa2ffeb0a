"""Running one drill step: its function, timing, timeout and status.

Each step kind is one function `(ctx, step) -> Outcome` in its own module (restore,
verify, checks: sql/command/http, kit, immutability: the attack drill). A function raises `StepFailed` for a check
that did not hold and any DrtoolError for something that went wrong; `run_step`
times the call, applies the step's timeout and turns all of it into a StepResult.
Every kind has one code path, whether the step acts here or on a host: the context
hands out the runner (`ctx.runner(host)`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from drtool.actions.drill.checks import command, http, sql
from drtool.actions.drill.context import DrillContext
from drtool.actions.drill.immutability_step import immutability
from drtool.actions.drill.kit_step import kit
from drtool.actions.drill.model import Outcome, StepFailed, StepResult
from drtool.actions.drill.restore_step import restore
from drtool.actions.drill.timing import call_with_timeout
from drtool.actions.drill.verify_step import verify
from drtool.catalog import utcnow
from drtool.config.durations import format_duration
from drtool.config.models import Step
from drtool.errors import DrtoolError
from drtool.secrets import redact

log = logging.getLogger(__name__)

__all__ = ["STEP_FUNCTIONS", "Outcome", "StepFailed", "run_step"]

STEP_FUNCTIONS: dict[str, Callable[[DrillContext, Step], Outcome]] = {
    "restore": restore, "verify": verify, "sql": sql, "command": command, "http": http, "kit": kit,
    "immutability": immutability,
}


def run_step(ctx: DrillContext, step: Step) -> StepResult:
    function = STEP_FUNCTIONS[step.kind]
    started_at = utcnow()
    timed = call_with_timeout(lambda: function(ctx, step), step.timeout, ctx.cancel)
    result = StepResult(step.name, step.kind, "passed", started_at, timed.duration_s)
    if timed.timed_out:
        result.status = "timed_out"
        result.detail = (f"did not finish within its timeout of {format_duration(step.timeout)}; "
                         f"stopped {timed.stopped} of its processes")
        if timed.still_running:
            result.detail += " (its work did not stop; drtool moved on)"
        return result
    error = timed.error
    if error is None:
        outcome: Outcome = timed.value
        result.detail, result.phases, result.data = outcome.detail, outcome.phases, outcome.data
    elif isinstance(error, StepFailed):
        result.status, result.detail, result.data = "failed", error.message, error.data
    elif isinstance(error, DrtoolError):
        result.status, result.detail = "failed", _one_paragraph(str(error))
    elif isinstance(error, KeyboardInterrupt):
        raise error
    elif isinstance(error, Exception):
        log.error("drill step %r crashed", step.name, exc_info=error)
        result.status, result.detail = "failed", redact(f"internal error: {type(error).__name__}: {error}")[:1000]
    else:
        raise error
    return result


def _one_paragraph(text: str, limit: int = 1500) -> str:
    return redact(text.strip())[:limit]
