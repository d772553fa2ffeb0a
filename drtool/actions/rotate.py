"""Use case: `drtool check POLICY --rotate`, a check that reads the next n/N part of the data.

For exported timers and cron lines, which have no memory of their own: the position
lives in state_dir (drtool.rotation) and advances only after a successful check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.rotation import RotationState


def check_with_rotation(settings: Settings, policy: Policy, *, trigger: str = "manual",
                        check: Callable[..., Any] | None = None) -> Any:
    """Run the check with the policy's next subset; return its run record (details say which part)."""
    if check is None:
        from drtool.actions.maintenance import check_repository as check
    state = RotationState(settings.state_dir)
    subset, position = state.next(policy.name, policy.check.read_data_subset)
    run = check(settings, policy, read_data_subset=subset, trigger=trigger)
    if run.ok and subset and position:
        state.advance(policy.name, position)
    return run
