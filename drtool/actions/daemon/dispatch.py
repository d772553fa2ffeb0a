"""What each job kind runs, and what it returns: always a RunRecord.

The real table calls the same actions as the CLI (so every run goes through the one run
lifecycle: recorded, published, notified, metrics); they are imported when a job runs,
which keeps `drtool --help` fast. Tests pass a table of fakes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from drtool.actions.daemon.jobs import JobInfo
from drtool.catalog import RunRecord
from drtool.config.loader import Settings


@dataclass
class JobRequest:
    info: JobInfo
    settings: Settings
    cancel: threading.Event
    read_data_subset: str | None = None


Dispatch = Mapping[str, Callable[[JobRequest], RunRecord]]


def default_dispatch() -> dict[str, Callable[[JobRequest], RunRecord]]:
    def backup(req: JobRequest) -> RunRecord:
        from drtool.actions.backup import backup_policy
        return backup_policy(req.settings, req.settings.policy(req.info.policy), trigger="schedule",
                             cancel=req.cancel)

    def forget(req: JobRequest) -> RunRecord:
        from drtool.actions.maintenance import forget_policy
        return forget_policy(req.settings, req.settings.policy(req.info.policy), trigger="schedule",
                             cancel=req.cancel)

    def check(req: JobRequest) -> RunRecord:
        from drtool.actions.maintenance import check_repository
        return check_repository(req.settings, req.settings.policy(req.info.policy),
                                read_data_subset=req.read_data_subset, trigger="schedule", cancel=req.cancel)

    def drill(req: JobRequest) -> RunRecord:
        # On SIGTERM the running step's processes are stopped, the rest skipped, scratch
        # instances torn down, and the drill recorded as cancelled.
        from drtool.actions import drill as drills
        return drills.run_drill(req.settings, req.settings.playbook(req.info.job.name), trigger="schedule",
                                cancel=req.cancel).record

    def lock_extend(req: JobRequest) -> RunRecord:
        # The scheduled run reads every object's retention (verify), not drtool's own memory of it.
        from drtool.actions.immutable import extend_locks
        return extend_locks(req.settings, req.info.repository, policy=req.info.policy, verify=True,
                            trigger="schedule", cancel=req.cancel)

    return {"backup": backup, "forget": forget, "check": check, "drill": drill, "lock-extend": lock_extend}
