"""The attack drill on an S3 repository: with the repository's own (production) credentials, try
what ransomware would do to one pack, and report what the store let through.

    attack_s3(store, rescue_dir) -> AttackReport

The target is the smallest current pack (data/); its bytes are kept (in memory and in
`rescue_dir`, 0600) before the first attempt, and after every attempt drtool checks the locked
version (it still exists, same ETag, lock not shorter) and puts back what an attempt changed:
its own new version or delete marker, a shortened lock, suspended versioning, and, if a store
really deleted the version, the pack itself (restic names packs by their content hash, so the
same bytes under the same key are the same pack). Against a store that enforces Object Lock
the repository ends exactly as it was, plus one overwrite version and one delete marker removed
again; against one that does not, it ends usable and the report says what got through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from drtool.errors import StorageError
from drtool.storage.attempts import Attempt, AttackReport
from drtool.storage.s3_client import client_code

MAX_TARGET_BYTES = 256 << 20
GARBAGE = b"drtool attack drill: ransomware would have written this over the pack\n"


@dataclass
class Target:
    key: str
    version_id: str
    etag: str
    mode: str | None
    until: datetime | None
    body: bytes
    rescue: Path | None = None


def attack_s3(store: Any, rescue_dir: Path) -> AttackReport:
    target = _pick(store, rescue_dir)
    versioning, lock_config = store._versioning(), store.lock_configuration()
    attempts = []
    try:
        for attack in (_delete_version, _bulk_delete, _shorten, _shorten_bypass, _overwrite, _delete_marker):
            attempts.append(attack(store, target))
        attempts.append(_suspend_versioning(store, versioning))
        attempts.append(_remove_lock_configuration(store, lock_config))
    finally:
        _make_whole(store, target)
    if target.rescue is not None:
        target.rescue.unlink(missing_ok=True)
    return AttackReport(store.location.where(), target.key, attempts)


def _pick(store: Any, rescue_dir: Path) -> Target:
    packs = [o for o in store.current_objects([store.location.repo_prefix + "data/"])]
    if not packs:
        raise StorageError(f"no pack under {store.location.where()}/data to attack",
                           hint="run a backup first; the attack drill needs a real pack to try")
    pack = min(packs, key=lambda o: o.size)
    if pack.size > MAX_TARGET_BYTES:
        raise StorageError(f"the smallest pack of {store.location.where()} is {pack.size} bytes; drtool keeps a "
                           f"copy of the target in memory and refuses above {MAX_TARGET_BYTES}")
    head = store.head(pack.key) or {}
    version = str(head.get("VersionId") or "null")
    body = store._call(f"read {pack.key}", lambda c: c.get_object(
        Bucket=store.location.bucket, Key=pack.key, **({} if version == "null" else {"VersionId": version})
    )["Body"].read())
    rescue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    rescue = rescue_dir / pack.key.rsplit("/", 1)[-1]
    fd = os.open(rescue, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)        # if drtool dies mid-drill, the pack is here (same name, same bytes)
    return Target(pack.key, version, str(head.get("ETag", "")), head.get("ObjectLockMode"),
                  head.get("ObjectLockRetainUntilDate"), body, rescue)


# ---------------------------------------------------------------- attempts

def _try(store: Any, fn: Callable[[Any], Any]) -> tuple[Any, StorageError | None]:
    try:
        return store._call("attack", fn), None
    except StorageError as exc:
        return None, exc


def _refused(name: str, call: str, exc: StorageError) -> Attempt:
    return Attempt(name, call, "refused", f"{client_code(exc) or 'error'}: {exc.message.splitlines()[0][:200]}")


def _judged(store: Any, t: Target, name: str, call: str, accepted: str) -> Attempt:
    """The call was accepted: is the locked version still there, same content, lock no shorter?"""
    damage = _damage(store, t)
    said = f"accepted ({accepted})" if accepted else "accepted"
    if damage is None:
        return Attempt(name, call, "intact", f"{said}; the locked version is untouched")
    return Attempt(name, call, "got-through", f"{said}: {damage}", restored=_repair(store, t))


def _damage(store: Any, t: Target) -> str | None:
    head = store.head(t.key, None if t.version_id == "null" else t.version_id)
    if head is None:
        return f"version {t.version_id} of the pack is gone"
    if str(head.get("ETag", "")) != t.etag:
        return "the pack's content changed"
    until = head.get("ObjectLockRetainUntilDate")
    if t.until is not None and (until is None or until < t.until):
        now = f"{until:%Y-%m-%d %H:%M}Z" if until else "never (no lock)"
        return f"its lock ends {now} instead of {t.until:%Y-%m-%d %H:%M}Z"
    return None


def _delete_version(store: Any, t: Target) -> Attempt:
    name, call = "delete the pack by version id", "DeleteObject(VersionId)"
    _, exc = _try(store, lambda c: c.delete_object(Bucket=store.location.bucket, Key=t.key, VersionId=t.version_id))
    return _refused(name, call, exc) if exc else _judged(store, t, name, call, "deleted")


def _bulk_delete(store: Any, t: Target) -> Attempt:
    name, call = "bulk delete with version ids", "DeleteObjects(VersionId)"
    reply, exc = _try(store, lambda c: c.delete_objects(Bucket=store.location.bucket, Delete={
        "Objects": [{"Key": t.key, "VersionId": t.version_id}], "Quiet": False}))
    if exc:
        return _refused(name, call, exc)
    errors = [e for e in (reply or {}).get("Errors", []) if e.get("Key") == t.key]
    if errors:       # HTTP 200 with a per-key error: refused
        return Attempt(name, call, "refused", f"{errors[0].get('Code')}: {errors[0].get('Message', '')}"[:200])
    return _judged(store, t, name, call, "reported deleted")


def _shorten(store: Any, t: Target, *, bypass: bool = False) -> Attempt:
    name = "shorten the pack's retention" + (", bypassing governance" if bypass else "")
    call = "PutObjectRetention(earlier date" + (", BypassGovernanceRetention)" if bypass else ")")
    now = datetime.now(timezone.utc)
    # Earlier than its lock, still in the future (a date in the past is refused for that alone).
    earlier = max(now + timedelta(hours=1), (t.until or now + timedelta(days=2)) - timedelta(days=1))
    kwargs: dict[str, Any] = {"Bucket": store.location.bucket, "Key": t.key, "VersionId": t.version_id,
                              "Retention": {"Mode": t.mode or "GOVERNANCE", "RetainUntilDate": earlier}}
    if bypass:
        kwargs["BypassGovernanceRetention"] = True
    _, exc = _try(store, lambda c: c.put_object_retention(**kwargs))
    return _refused(name, call, exc) if exc else _judged(store, t, name, call, "")


def _shorten_bypass(store: Any, t: Target) -> Attempt:
    return _shorten(store, t, bypass=True)


def _overwrite(store: Any, t: Target) -> Attempt:
    name, call = "overwrite the pack", "PutObject(same key)"
    reply, exc = _try(store, lambda c: c.put_object(Bucket=store.location.bucket, Key=t.key, Body=GARBAGE))
    if exc:
        return _refused(name, call, exc)
    attempt = _judged(store, t, name, call, "a new version")
    _undo_new_version(store, t, (reply or {}).get("VersionId"))
    return attempt


def _delete_marker(store: Any, t: Target) -> Attempt:
    name, call = "delete the pack", "DeleteObject(no version)"
    reply, exc = _try(store, lambda c: c.delete_object(Bucket=store.location.bucket, Key=t.key))
    if exc:
        return _refused(name, call, exc)
    attempt = _judged(store, t, name, call, "a delete marker")
    _undo_new_version(store, t, (reply or {}).get("VersionId"))
    return attempt


def _suspend_versioning(store: Any, before: str | None) -> Attempt:
    name, call = "suspend the bucket's versioning", "PutBucketVersioning(Suspended)"
    _, exc = _try(store, lambda c: c.put_bucket_versioning(Bucket=store.location.bucket,
                                                           VersioningConfiguration={"Status": "Suspended"}))
    if exc:
        return _refused(name, call, exc)
    if store._versioning() != "Suspended" or before != "Enabled":
        return Attempt(name, call, "intact", "accepted; versioning is unchanged")
    _, undo = _try(store, lambda c: c.put_bucket_versioning(Bucket=store.location.bucket,
                                                            VersioningConfiguration={"Status": "Enabled"}))
    restored = "versioning enabled again" if undo is None else f"could not enable it again: {undo.message}"
    return Attempt(name, call, "got-through", "accepted: versioning was suspended", restored=restored)


def _remove_lock_configuration(store: Any, before: dict[str, Any] | None) -> Attempt:
    name, call = "remove the bucket's Object Lock configuration", "PutObjectLockConfiguration(no rule)"
    _, exc = _try(store, lambda c: c.put_object_lock_configuration(
        Bucket=store.location.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}))
    if exc:
        return _refused(name, call, exc)
    after = store.lock_configuration()
    if after == before:
        return Attempt(name, call, "intact", "accepted without a change (the bucket has no default retention); "
                       "the credentials hold s3:PutBucketObjectLockConfiguration, which a backup identity should not")
    restored = None
    if before and before.get("ObjectLockEnabled") == "Enabled":
        _, undo = _try(store, lambda c: c.put_object_lock_configuration(Bucket=store.location.bucket,
                                                                        ObjectLockConfiguration=before))
        restored = "configuration put back" if undo is None else f"could not put it back: {undo.message}"
    return Attempt(name, call, "got-through", f"accepted: the configuration is now {after}", restored=restored)


# ---------------------------------------------------------------- putting things back

def _undo_new_version(store: Any, t: Target, version_id: str | None) -> None:
    """Remove the version or delete marker an attempt added (never locked: drtool did not lock it)."""
    if version_id and version_id != t.version_id:
        _try(store, lambda c: c.delete_object(Bucket=store.location.bucket, Key=t.key, VersionId=version_id))


def _repair(store: Any, t: Target) -> str:
    head = store.head(t.key, None if t.version_id == "null" else t.version_id)
    if head is not None and str(head.get("ETag", "")) == t.etag:
        if t.until is not None and t.mode:
            _, exc = _try(store, lambda c: c.put_object_retention(
                Bucket=store.location.bucket, Key=t.key, VersionId=t.version_id,
                Retention={"Mode": t.mode, "RetainUntilDate": t.until}))
            return "lock extended back to its old date" if exc is None else f"lock not restored: {exc.message}"
        return "nothing to put back"
    return _put_back(store, t)


def _put_back(store: Any, t: Target) -> str:
    reply, exc = _try(store, lambda c: c.put_object(Bucket=store.location.bucket, Key=t.key, Body=t.body))
    if exc:
        return f"COULD NOT PUT THE PACK BACK ({exc.message}); its bytes are in {t.rescue}"
    new = str((reply or {}).get("VersionId") or "null")
    t.version_id, t.etag = new, str((store.head(t.key) or {}).get("ETag", t.etag))
    if t.until is not None and t.mode:
        _try(store, lambda c: c.put_object_retention(Bucket=store.location.bucket, Key=t.key, VersionId=new,
                                                    Retention={"Mode": t.mode, "RetainUntilDate": t.until}))
    return "the pack was written back from the copy taken before the drill, and locked again"


def _make_whole(store: Any, t: Target) -> None:
    """Whatever happened, the pack's current content is the original again."""
    head = store.head(t.key)
    if head is None or str(head.get("ETag", "")) != t.etag:
        _put_back(store, t)
