"""The boto3 adapter: S3 bucket checks and drtool's offsite catalog objects.

restic talks to the bucket itself; drtool only needs boto3 to answer "can we
reach it, do the credentials work, does the bucket exist, is it versioned /
locked?" and to keep small JSON objects (run records, drill reports) offsite,
beside the restic repository:

    s3:http://127.0.0.1:9000/bucket/hosts/db1     restic repository (restic's folders)
    bucket/hosts/db1.drtool/runs/<run id>.json     drtool run records
    bucket/hosts/db1.drtool/drills/<id>.json       drtool drill reports

boto3 is imported inside functions only, so importing this module (and
`drtool --help`) stays fast. Every botocore failure becomes a StorageError that
names the endpoint and bucket, never the credentials.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from drtool.errors import StorageError
from drtool.secrets import Secret, redact

if TYPE_CHECKING:  # pragma: no cover - typing only
    from drtool.config.models import Repository

log = logging.getLogger(__name__)

T = TypeVar("T")

CATALOG_SUFFIX = ".drtool"
# Catalog objects are small; a bigger one is a bug or tampering, not data to load into memory.
MAX_OBJECT_BYTES = 16 * 1024 * 1024
DEFAULT_LIST_LIMIT = 10_000

# S3 bucket naming (3-63 chars of lowercase letters, digits, dots, hyphens; underscores
# still exist on old buckets and on rclone/minio, so they are accepted).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidSecurity", "AuthorizationHeaderMalformed"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
# Answers meaning "this server does not do that feature", not "something is broken".
_UNSUPPORTED_CODES = {"NotImplemented", "MethodNotAllowed", "501", "405", "InvalidRequest",
                      "AccessDenied", "403"}
_NO_LOCK_CODES = {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"}


# ---------------------------------------------------------------- URL parsing (pure)

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


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class BucketStatus:
    created: bool
    versioning: Literal["Enabled", "Suspended"] | None    # None: off, or the server does not say
    object_lock: bool | None                               # None: the server does not say

    def describe(self) -> str:
        parts = ["bucket created" if self.created else "bucket exists"]
        parts.append({"Enabled": "versioning enabled", "Suspended": "versioning suspended",
                      None: "versioning off or not reported"}[self.versioning])
        parts.append({True: "Object Lock enabled", False: "Object Lock off",
                      None: "Object Lock unknown (server does not report it)"}[self.object_lock])
        return ", ".join(parts)


# ---------------------------------------------------------------- the store

class S3Store:
    """One bucket (and repository prefix) on one endpoint, with one lazily created boto3 client."""

    def __init__(
        self,
        location: S3Location,
        access_key: Secret | None,
        secret_key: Secret | None,
        region: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_attempts: int = 2,
        page_size: int = 1000,
    ) -> None:
        self.location = location
        # Absent in config: the standard AWS_* variables, wrapped so they are masked too.
        self._access_key = access_key or _env_secret("AWS_ACCESS_KEY_ID")
        self._secret_key = secret_key or _env_secret("AWS_SECRET_ACCESS_KEY")
        self.region = region
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.page_size = page_size
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.location.where()})"

    # ------------------------------------------------------------ credentials and client

    def _credentials(self) -> tuple[Secret, Secret]:
        if self._access_key is None or self._secret_key is None:
            missing = "access key id" if self._access_key is None else "secret access key"
            raise StorageError(
                f"no S3 {missing} for {self.location.where()}",
                hint="set s3.access_key_id and s3.secret_access_key in drtool.yaml, "
                     "or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            )
        return self._access_key, self._secret_key

    def env_for_restic(self) -> dict[str, str]:
        """Variables for restic's environment only (never argv, never logged)."""
        access, secret = self._credentials()
        return {"AWS_ACCESS_KEY_ID": access.reveal(), "AWS_SECRET_ACCESS_KEY": secret.reveal(),
                "AWS_DEFAULT_REGION": self.region}

    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        access, secret = self._credentials()
        config = Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # Few retries: a dead endpoint must fail in seconds, not minutes.
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            # Path style: rclone/minio on loopback have no per-bucket DNS names.
            s3={"addressing_style": "path"},
        )
        # A private session with explicit keys: boto3 never walks its credential chain
        # (which would probe the EC2 metadata address) or picks up ambient profiles.
        session = boto3.session.Session(
            aws_access_key_id=access.reveal(), aws_secret_access_key=secret.reveal(),
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.location.endpoint_url, config=config)

    # ------------------------------------------------------------ preflight

    def preflight(self, create_bucket: bool) -> BucketStatus:
        """Endpoint reachable, credentials accepted, bucket present (or created); feature report."""
        created = False
        if not self._bucket_exists():
            if not create_bucket:
                raise StorageError(
                    f"bucket {self.location.bucket!r} does not exist at {self.location.endpoint_url}",
                    hint="create it (e.g. `aws s3 mb s3://BUCKET` or the provider's console), "
                         "or set s3.create_bucket: true in drtool.yaml",
                )
            created = self._create_bucket()
        return BucketStatus(created, self._versioning(), self._object_lock())

    def _bucket_exists(self) -> bool:
        """A GET listing rather than HEAD: its error body tells bad credentials from a missing bucket."""
        try:
            self._call("check the bucket", lambda c: c.list_objects_v2(Bucket=self.location.bucket, MaxKeys=1))
            return True
        except StorageError as exc:
            if _client_code(exc) in _MISSING_BUCKET_CODES:
                return False
            raise

    def _create_bucket(self) -> bool:
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket}
        if self.region != "us-east-1":  # AWS rejects an explicit us-east-1 constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("create the bucket", lambda c: c.create_bucket(**kwargs))
        except StorageError as exc:
            code = _client_code(exc)
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
            if _client_code(exc) in _UNSUPPORTED_CODES:
                return None
            raise  # the endpoint went away: a real failure
        # No Status: never enabled (AWS, moto) or not implemented (rclone): both "not on".
        status = reply.get("Status")
        return status if status in ("Enabled", "Suspended") else None

    def _object_lock(self) -> bool | None:
        try:
            reply = self._call("read the Object Lock configuration",
                               lambda c: c.get_object_lock_configuration(Bucket=self.location.bucket))
        except StorageError as exc:
            code = _client_code(exc)
            if code in _NO_LOCK_CODES:
                return False  # the server says explicitly: no lock on this bucket
            if code in _UNSUPPORTED_CODES:
                return None
            raise
        enabled = reply.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        # rclone answers with an empty configuration: it does not implement Object Lock.
        return None if enabled is None else enabled == "Enabled"

    # ------------------------------------------------------------ catalog objects

    def catalog_key(self, relpath: str) -> str:
        """The object key of a catalog path such as 'runs/<id>.json'."""
        parts = relpath.split("/")
        if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in relpath:
            raise StorageError(f"invalid catalog path {relpath!r}",
                               hint="use a relative path like runs/<run id>.json without '..' or empty parts")
        return self.location.catalog_prefix + relpath

    def put_bytes(self, relpath: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if len(data) > MAX_OBJECT_BYTES:
            raise StorageError(f"catalog object {relpath} is {len(data)} bytes, above the {MAX_OBJECT_BYTES} limit")
        key = self.catalog_key(relpath)
        self._call(f"write {key}", lambda c: c.put_object(
            Bucket=self.location.bucket, Key=key, Body=data, ContentType=content_type))

    def get_bytes(self, relpath: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        key = self.catalog_key(relpath)
        try:
            reply = self._call(f"read {key}", lambda c: c.get_object(Bucket=self.location.bucket, Key=key))
        except StorageError as exc:
            if _client_code(exc) in _MISSING_KEY_CODES:
                return None
            raise
        return self._read_body(key, reply)

    def _read_body(self, key: str, reply: dict[str, Any]) -> bytes:
        body = reply["Body"]
        try:
            # Read one byte past the limit: memory stays bounded and an oversize object is detected.
            data = self._call(f"read {key}", lambda _c: body.read(MAX_OBJECT_BYTES + 1))
        finally:
            body.close()
        if len(data) > MAX_OBJECT_BYTES:
            raise StorageError(f"catalog object {key} in {self.location.where()} is larger than "
                               f"{MAX_OBJECT_BYTES} bytes", hint="it is not a drtool record; remove it")
        return data

    def put_json(self, relpath: str, obj: Any) -> None:
        # redact(): a record must never carry a secret offsite, whatever a caller put in it.
        text = redact(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))
        self.put_bytes(relpath, text.encode(), content_type="application/json")

    def get_json(self, relpath: str) -> Any:
        """The decoded object, or None when it does not exist."""
        data = self.get_bytes(relpath)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"catalog object {self.catalog_key(relpath)} in {self.location.where()} "
                               f"is not valid JSON: {exc}", hint="delete or repair the object") from None

    def list_json(self, relprefix: str = "", *, limit: int = DEFAULT_LIST_LIMIT) -> list[str]:
        """Catalog paths (relative, e.g. 'runs/x.json') of the JSON objects under relprefix, sorted."""
        rel = relprefix.strip("/")
        prefix = self.catalog_key(rel) + "/" if rel else self.location.catalog_prefix
        found: list[str] = []
        token: str | None = None
        while True:
            page = self._list_page(prefix, token)
            found.extend(o["Key"][len(self.location.catalog_prefix):] for o in page.get("Contents", [])
                         if o["Key"].endswith(".json"))
            if len(found) > limit:
                raise StorageError(f"more than {limit} catalog objects under {prefix} in {self.location.where()}",
                                   hint="prune old records or ask for a narrower prefix")
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return sorted(found)

    def _list_page(self, prefix: str, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix, "MaxKeys": self.page_size}
        if token:
            kwargs["ContinuationToken"] = token
        return self._call(f"list {prefix}", lambda c: c.list_objects_v2(**kwargs))

    # ------------------------------------------------------------ error mapping

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run one boto3 call; every failure becomes a StorageError saying what, where and what to do."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        try:
            return fn(client)
        except ClientError as exc:
            raise self._client_error(what, exc) from exc
        except BotoCoreError as exc:
            raise self._transport_error(what, exc) from exc

    def _client_error(self, what: str, exc: Any) -> StorageError:
        code = _code(exc)
        where = self.location.where()
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _AUTH_CODES:
            return StorageError(
                f"S3 endpoint {self.location.endpoint_url} rejected the credentials ({code}) "
                f"while trying to {what} in {where}",
                hint="check s3.access_key_id / s3.secret_access_key in drtool.yaml (or AWS_ACCESS_KEY_ID / "
                     "AWS_SECRET_ACCESS_KEY) and that the machine's clock is right",
            )
        if code in ("AccessDenied", "403", "Forbidden"):
            return StorageError(
                f"access denied by {self.location.endpoint_url} while trying to {what} in {where}",
                hint="the credentials are refused or lack permission on this bucket; "
                     "check the keys and the bucket policy",
            )
        if code in _MISSING_BUCKET_CODES:
            return StorageError(f"bucket {self.location.bucket!r} does not exist at {self.location.endpoint_url}",
                                hint="run the preflight with bucket creation allowed, or create the bucket")
        message = exc.response.get("Error", {}).get("Message") or ""
        return StorageError(f"S3 error while trying to {what} in {where}: {code} (HTTP {status}) {message}".rstrip(),
                            hint="see the S3 provider's documentation for this error code")

    def _transport_error(self, what: str, exc: Exception) -> StorageError:
        from botocore.exceptions import (
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        where = self.location.endpoint_url
        if isinstance(exc, ConnectTimeoutError):
            happened = f"connecting to S3 endpoint {where} timed out after {self.connect_timeout:g}s"
        elif isinstance(exc, ReadTimeoutError):
            happened = f"S3 endpoint {where} did not answer within {self.read_timeout:g}s"
        elif isinstance(exc, EndpointConnectionError):
            happened = f"cannot connect to S3 endpoint {where}"
        elif isinstance(exc, NoCredentialsError):
            return StorageError(f"no S3 credentials for {self.location.where()}",
                                hint="set s3.access_key_id / s3.secret_access_key or export AWS_* variables")
        else:
            happened = f"talking to S3 endpoint {where} failed: {type(exc).__name__}: {exc}"
        return StorageError(f"{happened} (while trying to {what} in bucket {self.location.bucket!r})",
                            hint="check the repository URL (host, port, http/https), that the server is "
                                 "running, and that the network or firewall lets this machine reach it")


def _client_code(exc: StorageError) -> str | None:
    """The S3 error code behind a StorageError, if the server answered with one."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    return _code(cause) if isinstance(cause, ClientError) else None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or
               exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "unknown")


def _env_secret(name: str) -> Secret | None:
    value = os.environ.get(name)
    return Secret(value) if value else None


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Secret):
        return repr(value)  # "Secret(***)": the value itself never travels
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} in a catalog JSON object")


# ---------------------------------------------------------------- from config

def store_from_repository(repo: Repository, env: Mapping[str, str] | None = None) -> S3Store | None:
    """The store of an S3 repository (None for other backends), its secrets resolved.

    `env`: credentials already resolved for restic (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    e.g. from a recovery kit): used instead of resolving the configuration's references again."""
    if not repo.is_s3:
        return None
    location = parse_s3_url(repo.url)
    if env and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        region = env.get("AWS_DEFAULT_REGION") or (repo.s3.region if repo.s3 else "us-east-1")
        return S3Store(location, Secret(env["AWS_ACCESS_KEY_ID"]), Secret(env["AWS_SECRET_ACCESS_KEY"]), region)
    settings = repo.s3
    if settings is None:
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return S3Store(location, None, None, region)
    access = settings.access_key_id.resolve() if settings.access_key_id else None
    secret = settings.secret_access_key.resolve() if settings.secret_access_key else None
    return S3Store(location, access, secret, settings.region)
