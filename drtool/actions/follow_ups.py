"""What a successful backup sets off, each as its own recorded run (one call at the end of
drtool.actions.backup `_run`):

1. lock extension of the policy's repository, when it is an Object Lock one: the packs this
   backup wrote are locked before anything else happens;
2. one copy per repository of `copies:` (drtool.actions.copies);
3. lock extension of each copy that is an Object Lock repository.

Each run alerts on its own failure (copy_failed, lock-extend_failed); the backup's record lists
them under `follow_ups`, and `drtool backup` exits 1 when one failed. A failure of one does not
stop the others: a copy that failed must not leave the primary's new packs unlocked.
"""

from __future__ import annotations

import threading
from typing import Any

from drtool.actions.common import RepoHandle
from drtool.actions.lifecycle import EventFn, RunLifecycle
from drtool.catalog import RunRecord
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import Cancelled, DrtoolError


def after_backup(settings: Settings, policy: Policy, handle: RepoHandle, lc: RunLifecycle, emit: EventFn,
                 cancel: threading.Event | None = None) -> None:
    backup = lc.record
    done: list[dict[str, Any]] = []
    repos = settings.config.repositories
    if repos[policy.repository].object_lock:
        done.append(_lock(settings, policy, policy.repository, backup, emit))
    for name in policy.copies:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before every copy was made")
        done.append(_copy(settings, policy, handle, name, backup, emit))
    for name in policy.copies:
        if repos[name].object_lock:
            done.append(_lock(settings, policy, name, backup, emit))
    if done:
        backup.details["follow_ups"] = done


def failed_follow_ups(run: RunRecord) -> list[dict[str, Any]]:
    return [f for f in run.details.get("follow_ups") or [] if f.get("status") != "success"]


def _lock(settings: Settings, policy: Policy, repo: str, backup: RunRecord, emit: EventFn) -> dict[str, Any]:
    return lock_summary(settings, repo, policy.name, backup.trigger, emit)


def lock_summary(settings: Settings, repo: str, policy: str, trigger: str, emit: EventFn | None) -> dict[str, Any]:
    """A lock-extend run of its own; its outcome in one line for the run that set it off."""
    from drtool.actions.immutable import extend_locks

    return _summary("lock-extend", repo, lambda: extend_locks(settings, repo, policy=policy, trigger=trigger,
                                                              emit=emit))


def _copy(settings: Settings, policy: Policy, handle: RepoHandle, repo: str, backup: RunRecord,
          emit: EventFn) -> dict[str, Any]:
    from drtool.actions.copies import copy_backup

    return _summary("copy", repo, lambda: copy_backup(settings, policy, handle, repo, backup,
                                                      trigger=backup.trigger, emit=emit))


def _summary(kind: str, repo: str, fn) -> dict[str, Any]:  # noqa: ANN001
    try:
        record = fn()
    except DrtoolError as exc:     # an internal error, already recorded as a failed run by its lifecycle
        return {"kind": kind, "repository": repo, "run": None, "status": "failed", "error": str(exc)[:500]}
    return {"kind": kind, "repository": repo, "run": record.id, "status": record.status,
            "error": (record.error or "").splitlines()[0][:500] if record.error else None}
