"""Use case: who holds the locks of a policy's repository, and removing the stale ones.

    drtool unlock POLICY                 # list every lock, remove the stale ones
    drtool unlock POLICY --remove-all    # remove every lock, after a warning (--yes)

restic leaves its lock object behind when it is killed (SIGKILL, OOM, power). drtool's
restic adapter already removes such a lock by itself when a command meets it; this
command is for the admin who wants to see who holds the repository. A lock is stale
(restic's own rule, which `restic unlock` applies) when it was not refreshed for 30
minutes, or when it was made on this machine by a process that no longer exists; a live
restic refreshes its lock every 5 minutes, so a lock of another host that is younger
than 30 minutes may belong to a running backup there and is kept.

`--remove-all` removes live locks too (`restic unlock --remove-all`): only when no restic
runs anywhere on the repository (a prune or check running meanwhile could lose data). It
holds the policy lock meanwhile, so at least no drtool run of this policy on this machine
starts during it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from drtool.actions.common import open_repo
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.engine.restic import parse_restic_time
from drtool.locking import PolicyLock

STALE_AFTER = timedelta(minutes=30)      # restic's staleTimeout


@dataclass(frozen=True)
class LockInfo:
    id: str
    hostname: str
    pid: int | None
    username: str | None
    exclusive: bool
    time: datetime | None
    stale: bool
    why: str                              # the reason for `stale`, for people

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat() if self.time else None
        return data


@dataclass
class UnlockReport:
    repository: str
    url: str
    found: list[LockInfo] = field(default_factory=list)
    removed: list[LockInfo] = field(default_factory=list)
    kept: list[LockInfo] = field(default_factory=list)
    removed_all: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"repository": self.repository, "url": self.url, "removed_all": self.removed_all,
                **{k: [lock.to_dict() for lock in getattr(self, k)] for k in ("found", "removed", "kept")}}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_lock(raw: dict[str, Any], *, this_host: str, now: datetime,
                  alive: Callable[[int], bool] = pid_alive) -> LockInfo:
    """Pure (given `alive`): a lock as `Restic.locks()` reads it, judged by restic's staleness rule."""
    when = parse_restic_time(raw["time"]) if raw.get("time") else None
    host, pid = str(raw.get("hostname") or "?"), raw.get("pid")
    age = now - when if when else None
    if age is not None and age > STALE_AFTER:
        stale, why = True, f"not refreshed for {_minutes(age)} (stale after 30 min)"
    elif host != this_host:
        stale = False
        why = (f"another host's lock, refreshed {_minutes(age)} ago: it may be a backup running there"
               if age is not None else "another host's lock")
    elif isinstance(pid, int) and not alive(pid):
        stale, why = True, f"process {pid} on this machine is gone"
    else:
        stale, why = False, f"held by process {pid}, running on this machine"
    return LockInfo(str(raw["id"]), host, pid if isinstance(pid, int) else None, raw.get("username"),
                    bool(raw.get("exclusive")), when, stale, why)


def _minutes(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h"


def list_locks(settings: Settings, policy: Policy) -> UnlockReport:
    handle = open_repo(settings, policy.repository)
    report = UnlockReport(policy.repository, handle.repository.url)
    report.found = _read(handle)
    report.kept = list(report.found)
    return report


def unlock(settings: Settings, policy: Policy, *, remove_all: bool = False) -> UnlockReport:
    """Remove the stale locks (or, with remove_all, every lock) of the policy's repository."""
    handle = open_repo(settings, policy.repository)
    report = UnlockReport(policy.repository, handle.repository.url, removed_all=remove_all)
    report.found = _read(handle)
    if remove_all:
        lock = PolicyLock(settings.state_dir, policy.name)
        lock.acquire("unlock --remove-all")
        try:
            handle.restic.remove_all_locks()
        finally:
            lock.release()
    elif any(info.stale for info in report.found):
        handle.restic.unlock_stale()
    left = {info.id for info in _read(handle)}
    report.removed = [info for info in report.found if info.id not in left]
    report.kept = [info for info in report.found if info.id in left]
    return report


def remove_stale_locks(handle, *, attempts: int = 3, pause: float = 1.0) -> list[LockInfo]:  # noqa: ANN001
    """`restic unlock`, then read the locks again: a stale lock still there gets another try (seen
    once under load after a SIGKILLed restic; each try is cheap next to a run). Returns the stale
    locks left after `attempts` tries."""
    left: list[LockInfo] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause)
        handle.restic.unlock_stale()
        left = [info for info in _read(handle) if info.stale]
        if not left:
            break
    return left


def _read(handle) -> list[LockInfo]:  # noqa: ANN001 - RepoHandle
    now, here = datetime.now(timezone.utc), socket.gethostname()
    return [describe_lock(raw, this_host=here, now=now) for raw in handle.restic.locks()]
