"""Object Lock rules (pure): which objects a repository needs locked, until when, which of them
need a new retention now, the lifecycle rule for non-current versions, and the plan that puts a
repository's current objects back to those of an earlier time.

The guarantee: after each lock extension every needed object is locked until at least
now + `days`. Each extension sets now + days + renew_days, so an object is written again only
about every renew_days (days/5, at least 1), not on every run: a repository of 10,000 objects
does not cost 10,000 PutObjectRetention calls after every backup.

Which objects: every current object of the restic repository (config, keys/, snapshots/,
index/, data/: exactly what the kept snapshots need once prune has run, since prune deletes the
rest) and drtool's own records beside it (`<prefix>.drtool/`: run records and drill reports, the
evidence `status` reads on a fresh machine). Not restic's locks/: a lock is deleted seconds after
it is written, and a locked lock version would only cost storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from drtool.storage.s3_url import S3Location

Mode = Literal["COMPLIANCE", "GOVERNANCE"]


@dataclass(frozen=True)
class LockSettings:
    mode: Mode
    days: int

    @property
    def renew_days(self) -> int:
        return max(1, math.ceil(self.days / 5))

    @property
    def noncurrent_days(self) -> int:
        """A version becomes non-current locked until at most then + days + renew_days."""
        return self.days + self.renew_days + 1

    def minimum(self, now: datetime) -> datetime:
        return now + timedelta(days=self.days)

    def target(self, now: datetime) -> datetime:
        return now + timedelta(days=self.days + self.renew_days)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: datetime

    @property
    def stamp(self) -> str:
        """What identifies this version of the key without a version id (an overwrite changes it)."""
        return f"{self.etag}@{self.last_modified.isoformat()}"


@dataclass(frozen=True)
class Known:
    """The retention drtool set (or read) on one object."""

    stamp: str
    until: datetime
    mode: str


def lock_prefixes(location: S3Location) -> list[str]:
    """Key prefixes whose current objects must stay locked: the repository and drtool's records."""
    if not location.prefix:
        return [""]            # the whole bucket: the repository's folders and .drtool/
    return [location.repo_prefix, location.catalog_prefix]


def needs_lock(location: S3Location, key: str) -> bool:
    return not key.startswith(location.repo_prefix + "locks/")


def folder_of(location: S3Location, key: str) -> str:
    """'data', 'index', 'snapshots', 'keys', 'config' or 'drtool records', for reports."""
    if key.startswith(location.catalog_prefix):
        return "drtool records"
    rest = key[len(location.repo_prefix):]
    return rest.split("/", 1)[0] if "/" in rest else rest


def plan_extension(objects: Iterable[ObjectInfo], known: dict[str, Known], settings: LockSettings,
                   now: datetime) -> tuple[list[ObjectInfo], list[ObjectInfo]]:
    """(objects that need a new retention now, objects already locked long enough).

    An object needs one when drtool has no record of locking this very version of it (new, or
    overwritten since), its lock ends before now + days, or it is locked in another mode."""
    floor = settings.minimum(now)
    due, fine = [], []
    for obj in objects:
        k = known.get(obj.key)
        if k is None or k.stamp != obj.stamp or k.until < floor or k.mode != settings.mode:
            due.append(obj)
        else:
            fine.append(obj)
    return due, fine


def lifecycle_rules(location: S3Location, settings: LockSettings) -> list[dict[str, Any]]:
    """drtool's lifecycle rules: expire non-current versions (what a forget/prune left behind)
    once their lock has ended, and remove delete markers that no longer hide anything."""
    rules = []
    for n, prefix in enumerate(lock_prefixes(location)):
        name = (location.prefix or "bucket") + ("" if n == 0 else ".drtool")
        rules.append({
            "ID": f"drtool-noncurrent-{name}"[:255], "Status": "Enabled", "Filter": {"Prefix": prefix},
            "NoncurrentVersionExpiration": {"NoncurrentDays": settings.noncurrent_days},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        })
    return rules


def missing_rules(existing: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wanted rules that are absent, disabled or expire versions before their lock ends."""
    by_id = {r.get("ID"): r for r in existing}
    missing = []
    for rule in wanted:
        have = by_id.get(rule["ID"])
        days = ((have or {}).get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays")
        if have is None or have.get("Status") != "Enabled" or days is None or \
                int(days) < rule["NoncurrentVersionExpiration"]["NoncurrentDays"]:
            missing.append(rule)
    return missing


def merge_lifecycle(existing: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bucket's rules with drtool's replaced or added (PutBucketLifecycleConfiguration
    replaces the whole configuration: other rules of the bucket must be kept)."""
    ids = {r["ID"] for r in wanted}
    return [r for r in existing if r.get("ID") not in ids] + wanted


# ---------------------------------------------------------------- rollback

@dataclass(frozen=True)
class Version:
    """One entry of ListObjectVersions: a version or a delete marker."""

    key: str
    version_id: str
    last_modified: datetime
    is_latest: bool
    is_marker: bool
    size: int = 0
    etag: str = ""


@dataclass
class RollbackStep:
    key: str
    action: Literal["remove-markers", "restore-version", "hide"]
    version_id: str | None = None          # the version that becomes current again
    markers: list[str] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "action": self.action, "version_id": self.version_id,
                "markers": self.markers, "detail": self.detail}


def _newest_first(entries: list[Version]) -> list[Version]:
    # Equal times (a second's resolution on some servers): the current entry is the newest, and a
    # delete marker is later than a version of the same second (written, then deleted).
    return sorted(entries, key=lambda e: (e.last_modified, e.is_latest, e.is_marker), reverse=True)


def plan_rollback(entries: Iterable[Version], to: datetime, *, never_hide: tuple[str, ...] = ()) -> list[RollbackStep]:
    """What makes every key's current state what it was at `to` (pure).

    - the key's version at `to` is current again: nothing;
    - only delete markers came after it: remove those markers (the locked version is current again);
    - a later version overwrote it: copy the version of `to` over the current one (a new version
      with the old content; lock extension locks it afterwards);
    - the key did not exist at `to` (or was deleted): hide it behind a delete marker (its versions
      stay, so nothing is lost by rolling back too far), unless it is under `never_hide` (drtool's
      records: the history of what happened since, the rollback's own record among them).

    A key whose current content already is that of `to` (same ETag: an earlier rollback copied
    it back) needs nothing, so running the same rollback twice changes nothing the second time."""
    by_key: dict[str, list[Version]] = {}
    for entry in entries:
        by_key.setdefault(entry.key, []).append(entry)
    steps = []
    for key in sorted(by_key):
        step = _key_step(key, _newest_first(by_key[key]), to)
        if step is not None and not (step.action == "hide" and key.startswith(never_hide)):
            steps.append(step)
    return steps


def _key_step(key: str, history: list[Version], to: datetime) -> RollbackStep | None:
    current = history[0]
    then = next((e for e in history if e.last_modified <= to), None)
    if then is None or then.is_marker:
        if current.is_marker:
            return None
        return RollbackStep(key, "hide", detail=f"did not exist at {to.isoformat()}")
    if then.version_id == current.version_id or (not current.is_marker and then.etag and current.etag == then.etag):
        return None
    later = history[:history.index(then)]
    if all(e.is_marker for e in later):
        return RollbackStep(key, "remove-markers", then.version_id, [e.version_id for e in later],
                            detail=f"deleted after {to.isoformat()}")
    return RollbackStep(key, "restore-version", then.version_id,
                        detail=f"overwritten {sum(not e.is_marker for e in later)} time(s) after {to.isoformat()}")


def summarize_rollback(steps: list[RollbackStep], location: S3Location) -> dict[str, dict[str, int]]:
    """Counts per action and folder, for the dry run and the record."""
    out: dict[str, dict[str, int]] = {}
    for step in steps:
        per = out.setdefault(step.action, {})
        folder = folder_of(location, step.key)
        per[folder] = per.get(folder, 0) + 1
    return out
