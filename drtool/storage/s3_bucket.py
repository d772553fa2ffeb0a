"""The bucket behind a repository: reachable, credentials accepted, present (or created), and
what it offers (versioning, Object Lock); for an immutable repository also required: versioning
and Object Lock on, and the lifecycle rule that expires non-current versions after their lock.

    store.preflight(create_bucket) -> BucketStatus
    store.require_immutable()          raises StorageError unless versioning + Object Lock are on
    store.lifecycle_state()            is drtool's rule for non-current versions there?
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from drtool.errors import StorageError
from drtool.storage.lock_rules import LockSettings, lifecycle_rules, merge_lifecycle, missing_rules
from drtool.storage.s3_client import MISSING_BUCKET_CODES, UNSUPPORTED_CODES, S3Client, client_code

log = logging.getLogger(__name__)

_NO_LOCK_CODES = {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"}
_NO_LIFECYCLE_CODES = {"NoSuchLifecycleConfiguration"}


@dataclass(frozen=True)
class BucketStatus:
    created: bool
    versioning: Literal["Enabled", "Suspended"] | None    # None: off, or the server does not say
    object_lock: bool | None                               # None: the server does not say
    lifecycle: str | None = None                           # immutable repositories: the rule's state

    def describe(self) -> str:
        parts = ["bucket created" if self.created else "bucket exists"]
        parts.append({"Enabled": "versioning enabled", "Suspended": "versioning suspended",
                      None: "versioning off or not reported"}[self.versioning])
        parts.append({True: "Object Lock enabled", False: "Object Lock off",
                      None: "Object Lock unknown (server does not report it)"}[self.object_lock])
        if self.lifecycle:
            parts.append(self.lifecycle)
        return ", ".join(parts)


class BucketMixin(S3Client):
    lock: LockSettings | None = None       # set for an `immutable:` repository (store_from_repository)

    def preflight(self, create_bucket: bool) -> BucketStatus:
        """Endpoint reachable, credentials accepted, bucket present (or created); feature report.

        For an immutable repository a bucket drtool creates gets Object Lock (which turns
        versioning on), and a bucket without both is an error, not a warning."""
        created = False
        if not self._bucket_exists():
            if not create_bucket:
                raise StorageError(
                    f"bucket {self.location.bucket!r} does not exist at {self.location.endpoint_url}",
                    hint="create it (e.g. `aws s3 mb s3://BUCKET` or the provider's console), "
                         "or set s3.create_bucket: true in drtool.yaml",
                )
            created = self._create_bucket()
        status = BucketStatus(created, self._versioning(), self._object_lock())
        if self.lock is None:
            return status
        self._refuse_unlocked(status)
        return BucketStatus(created, status.versioning, status.object_lock, self.ensure_lifecycle())

    def require_immutable(self) -> BucketStatus:
        """Versioning and Object Lock on, or a StorageError saying what is missing (2 calls)."""
        status = BucketStatus(False, self._versioning(), self._object_lock())
        self._refuse_unlocked(status)
        return status

    def _refuse_unlocked(self, status: BucketStatus) -> None:
        missing = [what for what, ok in (("versioning", status.versioning == "Enabled"),
                                         ("Object Lock", status.object_lock is True)) if not ok]
        if missing:
            raise StorageError(
                f"repository at {self.location.where()} is configured `immutable:` but its bucket has "
                f"{' and '.join(missing)} off or unsupported ({status.describe()}); nothing was written",
                hint="use a bucket created with Object Lock (AWS: `aws s3api create-bucket "
                     "--object-lock-enabled-for-bucket`; MinIO: `mc mb --with-lock`), or let drtool create "
                     "it; rclone serve s3 implements neither. Or remove `immutable:` from the repository",
            )

    def _bucket_exists(self) -> bool:
        """A GET listing rather than HEAD: its error body tells bad credentials from a missing bucket."""
        try:
            self._call("check the bucket", lambda c: c.list_objects_v2(Bucket=self.location.bucket, MaxKeys=1))
            return True
        except StorageError as exc:
            if client_code(exc) in MISSING_BUCKET_CODES:
                return False
            raise

    def _create_bucket(self) -> bool:
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket}
        if self.region != "us-east-1":  # AWS rejects an explicit us-east-1 constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        if self.lock is not None:
            # Object Lock can only be had from the start on many servers; it turns versioning on.
            kwargs["ObjectLockEnabledForBucket"] = True
        try:
            self._call("create the bucket", lambda c: c.create_bucket(**kwargs))
        except StorageError as exc:
            code = client_code(exc)
            # Another run created it between our check and now: fine if we can use it.
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") and self._bucket_exists():
                return False
            if code == "BucketAlreadyExists":
                raise StorageError(
                    f"bucket name {self.location.bucket!r} is taken by another account at "
                    f"{self.location.endpoint_url}", hint="choose another bucket name in the repository URL",
                ) from None
            raise
        log.info("created bucket %s at %s", self.location.bucket, self.location.endpoint_url)
        return True

    def _versioning(self) -> Literal["Enabled", "Suspended"] | None:
        try:
            reply = self._call("read bucket versioning",
                               lambda c: c.get_bucket_versioning(Bucket=self.location.bucket))
        except StorageError as exc:
            if client_code(exc) in UNSUPPORTED_CODES:
                return None
            raise  # the endpoint went away: a real failure
        # No Status: never enabled (AWS, moto) or not implemented (rclone): both "not on".
        status = reply.get("Status")
        return status if status in ("Enabled", "Suspended") else None

    def _object_lock(self) -> bool | None:
        config = self.lock_configuration()
        enabled = None if config is None else config.get("ObjectLockEnabled")
        if config == {"missing": True}:
            return False  # the server says explicitly: no lock on this bucket
        # rclone answers with an empty configuration: it does not implement Object Lock.
        return None if enabled is None else enabled == "Enabled"

    def lock_configuration(self) -> dict[str, Any] | None:
        """The bucket's ObjectLockConfiguration; {"missing": True} when the server says there is
        none, None when it does not implement the call."""
        try:
            reply = self._call("read the Object Lock configuration",
                               lambda c: c.get_object_lock_configuration(Bucket=self.location.bucket))
        except StorageError as exc:
            code = client_code(exc)
            if code in _NO_LOCK_CODES:
                return {"missing": True}
            if code in UNSUPPORTED_CODES:
                return None
            raise
        return dict(reply.get("ObjectLockConfiguration") or {})

    # ------------------------------------------------------------ lifecycle of non-current versions

    def _lifecycle_rules(self) -> list[dict[str, Any]] | None:
        """The bucket's lifecycle rules ([] when none), None when the server does not implement them."""
        try:
            reply = self._call("read the lifecycle configuration",
                               lambda c: c.get_bucket_lifecycle_configuration(Bucket=self.location.bucket))
        except StorageError as exc:
            code = client_code(exc)
            if code in _NO_LIFECYCLE_CODES:
                return []
            if code in UNSUPPORTED_CODES:
                return None
            raise
        return list(reply.get("Rules") or [])

    def lifecycle_state(self) -> dict[str, Any]:
        """Is drtool's rule (expire non-current versions after their lock) set on this bucket?"""
        assert self.lock is not None
        wanted = lifecycle_rules(self.location, self.lock)
        rules = self._lifecycle_rules()
        if rules is None:
            return {"state": "unsupported", "rules": wanted}
        missing = missing_rules(rules, wanted)
        return {"state": "missing" if missing else "set", "rules": wanted, "missing": [r["ID"] for r in missing]}

    def ensure_lifecycle(self) -> str:
        """Set the rule unless it is there (other rules of the bucket are kept). Returns a short
        description for BucketStatus; a refusal is described, never raised (it costs storage,
        not safety: locked versions are never deleted early either way)."""
        assert self.lock is not None
        wanted = lifecycle_rules(self.location, self.lock)
        rules = self._lifecycle_rules()
        if rules is None:
            return "lifecycle rules unsupported (non-current versions are kept until removed by hand)"
        if not missing_rules(rules, wanted):
            return f"lifecycle rule set (non-current versions expire after {self.lock.noncurrent_days} days)"
        merged = merge_lifecycle(rules, wanted)
        try:
            self._call("set the lifecycle rule for non-current versions",
                       lambda c: c.put_bucket_lifecycle_configuration(
                           Bucket=self.location.bucket, LifecycleConfiguration={"Rules": merged}))
        except StorageError as exc:
            return f"lifecycle rule missing and not set ({exc.message.splitlines()[0]})"
        return f"lifecycle rule set now (non-current versions expire after {self.lock.noncurrent_days} days)"
