"""Object Lock on the objects of a repository: list them, read and extend their retention, and
work on their versions (the rollback after an attack). What to lock and until when is decided
in lock_rules.py (pure); this module only talks to the bucket.

    store.extend_locks(known, now, verify=False) -> Extension

One call per object that needs it (PutObjectRetention; HeadObject too with verify), run by a
small thread pool; the listing pages 1,000 keys a call. moto 5.2's server answers
GetObjectRetention with the object's content (boto3 sees an error), so the retention is read from
HeadObject (x-amz-object-lock-mode / -retain-until-date), which every S3 server with Object Lock
returns, in the same single call.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drtool.errors import Cancelled, StorageError
from drtool.storage.lock_rules import (Known, LockSettings, ObjectInfo, Version, folder_of, lock_prefixes,
                                       needs_lock, plan_extension)
from drtool.storage.s3_client import MISSING_KEY_CODES, S3Client, client_code

log = logging.getLogger(__name__)

WORKERS = 8


@dataclass
class Extension:
    """What one lock extension did: counts, the earliest lock after it, the API calls made."""

    objects: int = 0
    extended: int = 0
    already: int = 0
    vanished: int = 0
    bytes: int = 0
    earliest_until: datetime | None = None
    folders: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    verified: bool = False
    known: dict[str, Known] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "extended": self.extended, "already_locked": self.already,
                "vanished": self.vanished, "bytes": self.bytes, "folders": self.folders,
                "locked_until_at_least": self.earliest_until.isoformat() if self.earliest_until else None,
                "api_calls": self.calls, "api_calls_total": sum(self.calls.values()),
                "seconds": round(self.seconds, 3), "verified": self.verified}


class LockMixin(S3Client):
    lock: LockSettings | None = None

    # ------------------------------------------------------------ reading

    def current_objects(self, prefixes: list[str] | None = None) -> Iterator[ObjectInfo]:
        """Every current object under the prefixes (default: the repository and its records)."""
        for prefix in prefixes if prefixes is not None else lock_prefixes(self.location):
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix, "MaxKeys": self.page_size}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self._call(f"list {prefix or 'the bucket'}", lambda c, kw=kwargs: c.list_objects_v2(**kw))
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], str(obj.get("ETag", "")), int(obj.get("Size", 0)), obj["LastModified"])
                token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                if not token:
                    break

    def head(self, key: str, version_id: str | None = None) -> dict[str, Any] | None:
        """HeadObject (with its lock mode and retain-until date), None when the key or version is gone."""
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            return self._call(f"read {key}", lambda c: c.head_object(**kwargs))
        except StorageError as exc:
            if client_code(exc) in MISSING_KEY_CODES:
                return None
            raise

    def versions(self, prefixes: list[str] | None = None) -> Iterator[Version]:
        """Every version and delete marker under the prefixes."""
        for prefix in prefixes if prefixes is not None else lock_prefixes(self.location):
            marker: dict[str, str] = {}
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix,
                                          "MaxKeys": self.page_size, **marker}
                page = self._call(f"list versions of {prefix or 'the bucket'}",
                                  lambda c, kw=kwargs: c.list_object_versions(**kw))
                for item, is_marker in [(v, False) for v in page.get("Versions", [])] + \
                                       [(m, True) for m in page.get("DeleteMarkers", [])]:
                    yield Version(item["Key"], str(item.get("VersionId") or "null"), item["LastModified"],
                                  bool(item.get("IsLatest")), is_marker, int(item.get("Size", 0) or 0),
                                  str(item.get("ETag") or ""))
                if not page.get("IsTruncated"):
                    break
                marker = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page.get("NextVersionIdMarker", "")}

    # ------------------------------------------------------------ writing

    def set_retention(self, key: str, until: datetime, mode: str, version_id: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key,
                                  "Retention": {"Mode": mode, "RetainUntilDate": until}}
        if version_id:
            kwargs["VersionId"] = version_id
        self._call(f"lock {key} until {until:%Y-%m-%d %H:%M}Z", lambda c: c.put_object_retention(**kwargs))

    def delete_version(self, key: str, version_id: str) -> None:
        self._call(f"remove version {version_id} of {key}",
                   lambda c: c.delete_object(Bucket=self.location.bucket, Key=key, VersionId=version_id))

    def hide(self, key: str) -> None:
        """DeleteObject without a version: a delete marker; every version stays."""
        self._call(f"hide {key}", lambda c: c.delete_object(Bucket=self.location.bucket, Key=key))

    def copy_version(self, key: str, version_id: str) -> None:
        """Make `version_id`'s content current again (a new version; the old one is untouched)."""
        self._call(f"restore version {version_id} of {key}", lambda c: c.copy_object(
            Bucket=self.location.bucket, Key=key,
            CopySource={"Bucket": self.location.bucket, "Key": key, "VersionId": version_id}))

    # ------------------------------------------------------------ extension

    def extend_locks(self, known: dict[str, Known], now: datetime, *, verify: bool = False,
                     workers: int = WORKERS, stop: Callable[[], bool] = lambda: False) -> Extension:
        """Lock every needed current object until at least now + days (see lock_rules).

        `known` is what earlier runs set (drtool's cache); with `verify`, each object's retention
        is read from the bucket instead, so a lock someone shortened or a cache from another
        machine cannot hide an unlocked object. Returns the new `known` in the Extension.
        `stop` is asked before each object (a daemon shutting down): Cancelled, nothing half-done
        (an object is locked or not; what was locked stays locked)."""
        assert self.lock is not None, "extend_locks needs an immutable repository"
        started, before = time.monotonic(), Counter(self.calls)
        settings = self.lock
        objects = [o for o in self.current_objects() if needs_lock(self.location, o.key)]
        result = Extension(objects=len(objects), verified=verify, bytes=sum(o.size for o in objects))
        for obj in objects:
            folder = folder_of(self.location, obj.key)
            result.folders[folder] = result.folders.get(folder, 0) + 1
        if verify:
            known = self._read_retention(objects, workers)
        due, fine = plan_extension(objects, known, settings, now)
        target, floor = settings.target(now), settings.minimum(now)
        new_known = {o.key: known[o.key] for o in fine}
        done = self._pool(workers, lambda o: self._lock_one(o, known.get(o.key), target, floor, stop), due)
        for obj, outcome in zip(due, done, strict=True):
            if outcome is None:
                result.vanished += 1
            else:
                new_known[obj.key] = outcome
        result.extended = len(due) - result.vanished
        result.already = len(fine)
        result.known = new_known
        untils = [k.until for k in new_known.values()]
        result.earliest_until = min(untils) if untils else None
        result.calls = dict(Counter(self.calls) - before)
        result.seconds = time.monotonic() - started
        return result

    def _lock_one(self, obj: ObjectInfo, had: Known | None, target: datetime, floor: datetime,
                  stop: Callable[[], bool]) -> Known | None:
        assert self.lock is not None
        if stop():
            raise Cancelled("lock extension stopped on request; the objects locked so far stay locked")
        mode = self.lock.mode
        if had is not None and had.stamp == obj.stamp and had.until > target and had.mode == mode:
            return had             # never shorten a lock (COMPLIANCE refuses it anyway)
        try:
            self.set_retention(obj.key, target, mode)
        except StorageError as exc:
            head = self.head(obj.key)
            if head is None:
                return None        # deleted meanwhile (a prune): nothing to lock any more
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and until >= floor and str(head.get("ObjectLockMode")) == mode:
                # Locked longer than our target already (by another host, or a longer `days` before):
                # the store refuses to shorten it, which is the point.
                return Known(obj.stamp, until, mode)
            raise StorageError(f"could not lock {obj.key} in {self.location.where()}: {exc.message}",
                               hint="the credentials need s3:PutObjectRetention on the bucket (see the README's "
                                    "least-privilege policy)") from None
        return Known(obj.stamp, target, mode)

    def _read_retention(self, objects: list[ObjectInfo], workers: int) -> dict[str, Known]:
        heads = self._pool(workers, lambda o: self.head(o.key), objects)
        known = {}
        for obj, head in zip(objects, heads, strict=True):
            until = (head or {}).get("ObjectLockRetainUntilDate")
            if head is not None and until is not None:
                known[obj.key] = Known(obj.stamp, until, str(head.get("ObjectLockMode") or ""))
        return known

    @staticmethod
    def _pool(workers: int, fn: Callable[[ObjectInfo], Any], items: list[ObjectInfo]) -> list[Any]:
        if len(items) <= 1 or workers <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-lock") as pool:
            return list(pool.map(fn, items))
