"""Parsing restic S3 repository URLs (pure): endpoint, bucket, prefix, and where drtool's own
objects live beside the repository (`<prefix>.drtool/`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from drtool.errors import StorageError

CATALOG_SUFFIX = ".drtool"

# S3 bucket naming (3-63 chars of lowercase letters, digits, dots, hyphens; underscores
# still exist on old buckets and on rclone/minio, so they are accepted).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    endpoint: str          # host[:port], no scheme
    bucket: str
    prefix: str            # "" or a cleaned path without leading/trailing "/"
    secure: bool           # https?

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def repo_prefix(self) -> str:
        """Key prefix of restic's own objects (config, keys/, data/...)."""
        return f"{self.prefix}/" if self.prefix else ""

    @property
    def catalog_prefix(self) -> str:
        """Key prefix of drtool's own objects: a sibling of the restic folder, never inside it."""
        return f"{self.prefix}{CATALOG_SUFFIX}/" if self.prefix else f"{CATALOG_SUFFIX}/"

    def where(self) -> str:
        """Human description for messages: endpoint and bucket, no credentials."""
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{self.endpoint_url}/{path}"


def parse_s3_url(url: str) -> S3Location:
    """Parse a restic S3 repository URL the way restic does.

    s3:http://host:port/bucket/prefix   scheme given (http or https)
    s3:https://host/bucket
    s3:host/bucket/prefix               no scheme: https, like restic
    s3://host/bucket/prefix             restic's alternative spelling, https
    """
    if not url.startswith("s3:"):
        raise _bad_url(url, "it does not start with s3:")
    rest = url[3:]
    if rest.startswith(("http://", "https://")):
        scheme, _, rest = rest.partition("://")
        secure = scheme == "https"
    elif rest.startswith("//"):
        rest, secure = rest[2:], True
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", rest):
        raise _bad_url(url, f"scheme {rest.split(':', 1)[0]!r} is not http or https")
    else:
        secure = True
    endpoint, _, path = rest.partition("/")
    bucket, _, prefix = path.partition("/")
    return S3Location(_check_endpoint(url, endpoint), _check_bucket(url, bucket),
                      _clean_prefix(url, prefix), secure)


def _bad_url(url: str, why: str) -> StorageError:
    return StorageError(
        f"invalid S3 repository URL {url!r}: {why}",
        hint="write it as s3:http://HOST:PORT/BUCKET/PREFIX, s3:https://HOST/BUCKET "
             "or s3:HOST/BUCKET/PREFIX (https)",
    )


def _check_endpoint(url: str, endpoint: str) -> str:
    if not endpoint:
        raise _bad_url(url, "the endpoint host is missing")
    if "@" in endpoint:
        # restic never takes credentials in the URL; refusing keeps them out of logs.
        raise _bad_url(url, "credentials in the URL are not supported (use s3.access_key_id / AWS_* variables)")
    if not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$", endpoint):
        raise _bad_url(url, f"endpoint {endpoint!r} is not a host name or host:port")
    return endpoint


def _check_bucket(url: str, bucket: str) -> str:
    if not bucket:
        raise _bad_url(url, "the bucket name is missing after the endpoint")
    if not _BUCKET_RE.match(bucket):
        raise _bad_url(url, f"bucket name {bucket!r} is not valid (3-63 characters: "
                            "lowercase letters, digits, '.', '-')")
    return bucket


def _clean_prefix(url: str, prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    parts = prefix.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _bad_url(url, f"prefix {prefix!r} has empty, '.' or '..' parts")
    return prefix
