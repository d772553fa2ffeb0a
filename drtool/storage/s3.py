"""The boto3 adapter: one S3Store per repository, built from its concepts.

restic talks to the bucket itself; drtool needs boto3 to answer "can we reach it, do the
credentials work, does the bucket exist, is it versioned / locked?", to keep small JSON
objects (run records, drill reports) offsite beside the restic repository, and to keep the
repository's objects locked (Object Lock) and roll them back after an attack:

    s3_url.py      parse_s3_url, S3Location (pure)
    s3_client.py   credentials, the lazily built boto3 client, error mapping, API call counts
    s3_bucket.py   preflight, BucketStatus, versioning / Object Lock required, lifecycle rule
    s3_records.py  drtool's records under `<prefix>.drtool/`
    s3_lock.py     listing, retention, versions (lock extension, rollback)
    lock_rules.py  what to lock until when, the rollback plan (pure)

boto3 is imported inside functions only, so importing this module (and `drtool --help`)
stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from drtool.secrets import Secret
from drtool.storage.lock_rules import LockSettings
from drtool.storage.s3_bucket import BucketMixin, BucketStatus
from drtool.storage.s3_client import S3Client
from drtool.storage.s3_lock import LockMixin
from drtool.storage.s3_records import DEFAULT_LIST_LIMIT, MAX_OBJECT_BYTES, RecordsMixin
from drtool.storage.s3_url import CATALOG_SUFFIX, S3Location, parse_s3_url

if TYPE_CHECKING:  # pragma: no cover - typing only
    from drtool.config.models import Repository, S3Settings

__all__ = ["CATALOG_SUFFIX", "DEFAULT_LIST_LIMIT", "MAX_OBJECT_BYTES", "BucketStatus", "S3Client", "S3Location",
           "S3Store", "lock_settings", "parse_s3_url", "store_from_repository"]


class S3Store(LockMixin, BucketMixin, RecordsMixin):
    """One bucket (and repository prefix) on one endpoint, with one lazily created boto3 client."""

    lock: LockSettings | None = None


def lock_settings(repo: Repository) -> LockSettings | None:
    """The Object Lock a repository asks for (`immutable:` with a compliance/governance mode)."""
    imm = getattr(repo, "immutable", None)
    if imm is None or imm.mode not in ("compliance", "governance") or not repo.is_s3:
        return None
    return LockSettings("COMPLIANCE" if imm.mode == "compliance" else "GOVERNANCE", int(imm.days))


def store_from_repository(repo: Repository, s3: S3Settings | None = None,
                          env: Mapping[str, str] | None = None) -> S3Store | None:
    """The store of an S3 repository (None for other backends), its secrets resolved
    (`s3`: other credentials for the same bucket, e.g. the repository's maintenance ones;
    `env`: credentials already resolved for restic, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    e.g. from a recovery kit: used instead of resolving the configuration's references again)."""
    if not repo.is_s3:
        return None
    location = parse_s3_url(repo.url)
    settings = s3 or repo.s3
    if s3 is None and env and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        region = env.get("AWS_DEFAULT_REGION") or (repo.s3.region if repo.s3 else "us-east-1")
        store = S3Store(location, Secret(env["AWS_ACCESS_KEY_ID"]), Secret(env["AWS_SECRET_ACCESS_KEY"]), region)
    elif settings is None:
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        store = S3Store(location, None, None, region)
    else:
        access = settings.access_key_id.resolve() if settings.access_key_id else None
        secret = settings.secret_access_key.resolve() if settings.secret_access_key else None
        store = S3Store(location, access, secret, settings.region)
    store.lock = lock_settings(repo)
    return store
