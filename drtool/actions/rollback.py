"""Use case: after an attack, make a repository's current objects those of an earlier time again,
from the versions the bucket kept (Object Lock kept them from being deleted).

    rollback_repository(settings, repo_name, to, dry_run=False) -> RunRecord     (kind "rollback")

With the bucket's versions (ListObjectVersions) drtool.storage.lock_rules.plan_rollback decides,
per key: remove the delete markers written after TIME (the locked version is current again),
copy the version of TIME over a later overwrite, or hide a key that did not exist at TIME
behind a delete marker (its versions stay: rolling back too far loses nothing). Then
`restic check` must pass and, for an Object Lock repository, the restored objects are locked
again (a lock-extend run). Every policy that uses the repository is locked meanwhile (no backup
writes while its objects change). The production credentials suffice: delete markers and new
versions are not locked; only the old versions are, and none is deleted.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from datetime import datetime, timezone

from drtool.actions.common import open_repo
from drtool.actions.immutable import LockCache, policies_using, record_policy
from drtool.actions.lifecycle import EventFn, RunLifecycle
from drtool.catalog import RunRecord, new_run_id, utcnow
from drtool.config.durations import parse_duration
from drtool.config.loader import Settings
from drtool.errors import RepositoryError, StorageError, UsageError
from drtool.locking import PolicyLock
from drtool.storage.lock_rules import RollbackStep, plan_rollback, summarize_rollback

STEPS_IN_RECORD = 1000


class RollbackIncomplete(RepositoryError):
    """Some objects could not be put back."""


def parse_time(text: str, settings: Settings) -> datetime:
    """'2026-12-01T21:00:00Z', '2026-12-01 21:00' (drtool's time zone) or '2h ago' -> aware UTC."""
    ago = re.fullmatch(r"\s*(.+?)\s+ago\s*", text)
    try:
        if ago:
            return utcnow() - _seconds(ago.group(1))
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--to {text!r}: {exc}", hint="an ISO 8601 time such as 2026-12-01T21:00:00Z, "
                                                      "or a duration ago such as '2h ago'") from None
    if when.tzinfo is None:
        from drtool.timezones import settings_timezone
        when = when.replace(tzinfo=settings_timezone(settings))
    return when.astimezone(timezone.utc)


def _seconds(text: str):  # noqa: ANN202 - a timedelta
    from datetime import timedelta
    return timedelta(seconds=parse_duration(text, bare_numbers=False))


def rollback_repository(settings: Settings, repo_name: str, to: datetime, *, dry_run: bool = False,
                        trigger: str = "manual", emit: EventFn | None = None) -> RunRecord:
    store = _versioned_store(settings, repo_name)
    if to > utcnow():
        raise UsageError(f"--to {to.isoformat()} is in the future", hint="give the time before the attack")
    run_id = new_run_id("rollback")
    with ExitStack() as locks:
        for name in policies_using(settings, repo_name):   # sorted: two rollbacks cannot deadlock
            lock = PolicyLock(settings.state_dir, name)
            lock.acquire(run_id)
            locks.callback(lock.release)
        with RunLifecycle(settings, "rollback", record_policy(settings, repo_name), trigger=trigger, emit=emit,
                          run_id=run_id) as lc:
            lc.handle = open_repo(settings, repo_name)
            run = lc.record
            steps = plan_rollback(store.versions(), to, never_hide=(store.location.catalog_prefix,))
            run.details.update({"repository": repo_name, "url": lc.handle.repository.url, "to": to.isoformat(),
                                "dry_run": dry_run, "changes": len(steps),
                                "summary": summarize_rollback(steps, store.location),
                                "steps": [s.to_dict() for s in steps[:STEPS_IN_RECORD]]})
            if dry_run:
                return lc.record
            _apply(store, steps)
            LockCache(settings, lc.handle.repository.url).forget([s.key for s in steps])
            lc.handle.restic.unlock_stale()
            lc.handle.restic.check()
            run.details["check"] = "restic check passed"
            if lc.handle.repository.object_lock:
                from drtool.actions.follow_ups import lock_summary
                run.details["follow_ups"] = [lock_summary(settings, repo_name, run.policy, trigger, emit)]
    return lc.record


def _versioned_store(settings: Settings, repo_name: str):  # noqa: ANN202 - S3Store
    from drtool.storage.s3 import store_from_repository

    if repo_name not in settings.config.repositories:
        raise UsageError(f"no repository named {repo_name!r} in {settings.path}")
    repo = settings.config.repositories[repo_name]
    store = store_from_repository(repo)
    if store is None:
        raise UsageError(f"repository {repo_name} ({repo.url}) is not an S3 repository: there are no versions "
                         "to roll back to", hint="an append-only rest: server never deleted anything to roll back")
    if store._versioning() != "Enabled":
        raise UsageError(f"the bucket of repository {repo_name} ({repo.url}) has no versioning: nothing was kept "
                         "to roll back to", hint="immutable repositories need versioning and Object Lock")
    return store


def _apply(store, steps: list[RollbackStep]) -> None:  # noqa: ANN001 - S3Store
    failed: list[str] = []
    for step in steps:
        try:
            if step.action == "remove-markers":
                _remove_markers(store, step)
            elif step.action == "restore-version":
                assert step.version_id is not None
                store.copy_version(step.key, step.version_id)
            else:
                store.hide(step.key)
        except StorageError as exc:
            failed.append(f"{step.key}: {exc.message.splitlines()[0]}")
    if failed:
        raise RollbackIncomplete(f"{len(failed)} of {len(steps)} objects could not be put back: "
                                 + "; ".join(failed[:5]),
                                 hint="run the rollback again (it only changes what still differs); the credentials "
                                      "need s3:ListBucketVersions, s3:GetObjectVersion and s3:PutObject")


def _remove_markers(store, step: RollbackStep) -> None:  # noqa: ANN001 - S3Store
    """The later delete markers go; an identity without s3:DeleteObjectVersion copies the version
    back instead (same content current again, one more version)."""
    try:
        for marker in step.markers:
            store.delete_version(step.key, marker)
    except StorageError:
        assert step.version_id is not None
        store.copy_version(step.key, step.version_id)
