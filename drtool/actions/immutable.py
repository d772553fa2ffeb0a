"""Use case: keep every object the kept snapshots need locked (S3 Object Lock), the Kopia idea
(`--extend-object-locks`) for restic repositories, which have no Object Lock support of their own.

    extend_locks(settings, repo_name, policy=None, verify=False) -> RunRecord   (kind "lock-extend")

Runs after every backup (drtool.actions.follow_ups, from the end of the backup) and on the
daemon's schedule (`immutable.schedule`, with verify). Each run: the bucket must still have
versioning and Object Lock on (else the run fails: an error, not a warning), then every current
object of the repository and of drtool's records beside it is locked until at least
now + days (drtool.storage.lock_rules says which objects and until when).

What drtool set is remembered in `<state_dir>/object-locks/<digest>.json` (0600), so a run after a backup
writes the new objects' retention and leaves the others alone; `verify` reads every object's
retention from the bucket instead (what a fresh machine, another host sharing the repository,
or someone who shortened a lock would otherwise hide). The run record carries the counts, the
earliest lock after the run, and the API calls made.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from drtool.actions.common import open_repo, state_path
from drtool.actions.lifecycle import EventFn, RunLifecycle
from drtool.catalog import RunRecord, utcnow
from drtool.config.loader import Settings
from drtool.errors import StorageError, UsageError
from drtool.storage.lock_rules import Known

CACHE_VERSION = 1


def policies_using(settings: Settings, repo_name: str) -> list[str]:
    """Policies that back up or copy to the repository, sorted."""
    return sorted(p.name for p in settings.policies.values() if repo_name in p.repositories)


def record_policy(settings: Settings, repo_name: str) -> str:
    """Which policy a repository-wide run (lock extension, rollback) is recorded under: the first
    policy that uses the repository (the daemon's job uses the same), else the repository's name."""
    using = policies_using(settings, repo_name)
    return using[0] if using else repo_name


def locked_store(settings: Settings, repo_name: str):  # noqa: ANN201 - S3Store, boto3 imported lazily
    """The S3 store of an Object Lock repository, or a UsageError saying why it is not one."""
    from drtool.storage.s3 import store_from_repository

    if repo_name not in settings.config.repositories:
        raise UsageError(f"no repository named {repo_name!r} in {settings.path}")
    repo = settings.config.repositories[repo_name]
    store = store_from_repository(repo)
    if store is None or store.lock is None:
        raise UsageError(f"repository {repo_name} ({repo.url}) has no Object Lock to extend",
                         hint="lock extension is for s3: repositories with immutable: {mode: compliance|governance, "
                              "days: N}; an append-only rest: server needs none")
    return store


def extend_locks(settings: Settings, repo_name: str, *, policy: str | None = None, verify: bool = False,
                 trigger: str = "manual", emit: EventFn | None = None,
                 cancel: threading.Event | None = None) -> RunRecord:
    """Lock every needed object of the repository until at least now + days; one recorded run."""
    store = locked_store(settings, repo_name)
    with RunLifecycle(settings, "lock-extend", policy or record_policy(settings, repo_name), trigger=trigger,
                      emit=emit) as lc:
        lc.handle = open_repo(settings, repo_name)
        run = lc.record
        run.details.update({"repository": repo_name, "url": settings.config.repositories[repo_name].url,
                            "mode": store.lock.mode, "days": store.lock.days, "renew_days": store.lock.renew_days})
        run.details["bucket"] = store.require_immutable().describe()
        cache = LockCache(settings, lc.handle.repository.url)
        now = utcnow()
        try:
            extension = store.extend_locks({} if verify else cache.load(), now, verify=verify,
                                           stop=cancel.is_set if cancel is not None else lambda: False)
        finally:
            run.details["api_calls"] = dict(store.calls)     # the whole run's, bucket checks included
        cache.save(extension.known)
        run.details.update({k: v for k, v in extension.to_dict().items() if k != "api_calls"})
        run.details["api_calls_total"] = sum(store.calls.values())
        floor = store.lock.minimum(now)
        if extension.earliest_until is not None and extension.earliest_until < floor:
            raise StorageError(f"after the extension an object of {store.location.where()} is locked only until "
                               f"{extension.earliest_until.isoformat()}, before {floor.isoformat()}",
                               hint="run `drtool repo lock-extend NAME --verify`; a lock someone shortened can only "
                                    "be extended again")
    return lc.record


class LockCache:
    """What drtool locked in one repository, until when: `<state_dir>/object-locks/<digest>.json`, 0600."""

    def __init__(self, settings: Settings, url: str) -> None:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.url = url
        self.path: Path = state_path(settings, "object-locks", f"{digest}.json")

    def load(self) -> dict[str, Known]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}              # none yet, or unreadable: every object is locked again (never less safe)
        if data.get("version") != CACHE_VERSION or data.get("url") != self.url:
            return {}
        out = {}
        for key, (stamp, until, mode) in (data.get("objects") or {}).items():
            out[key] = Known(stamp, datetime.fromisoformat(until), mode)
        return out

    def save(self, known: dict[str, Known]) -> None:
        data: dict[str, Any] = {"version": CACHE_VERSION, "url": self.url, "objects": {
            key: [k.stamp, k.until.isoformat(), k.mode] for key, k in sorted(known.items())}}
        fd, tmp = tempfile.mkstemp(prefix=".locks.", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, self.path)

    def forget(self, keys: list[str]) -> None:
        """Keys whose current version changed under drtool's feet (a rollback): lock them again next time."""
        known = self.load()
        for key in keys:
            known.pop(key, None)
        self.save(known)
