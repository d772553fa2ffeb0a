"""The S3 client every S3 concept builds on: credentials, one lazily built boto3 client,
and the one place a boto3 call runs (`_call`), where every botocore failure becomes a
StorageError that names the endpoint and bucket, never the credentials.

boto3 is imported inside functions only, so importing this module (and `drtool --help`)
stays fast. `calls` counts the S3 API operations this client made, by name (run records
and bench/ report them: what a lock extension costs).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from drtool.errors import StorageError
from drtool.secrets import Secret
from drtool.storage.s3_url import S3Location

log = logging.getLogger(__name__)

T = TypeVar("T")

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidSecurity", "AuthorizationHeaderMalformed"}
MISSING_BUCKET_CODES = {"NoSuchBucket"}
MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
# Answers meaning "this server does not do that feature", not "something is broken".
UNSUPPORTED_CODES = {"NotImplemented", "MethodNotAllowed", "501", "405", "InvalidRequest",
                     "AccessDenied", "403"}


class S3Client:
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
        pool_size: int = 10,
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
        self.pool_size = pool_size
        self.calls: Counter[str] = Counter()
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
            # Lock extension runs one call per object in a thread pool of this size.
            max_pool_connections=self.pool_size,
        )
        # A private session with explicit keys: boto3 never walks its credential chain
        # (which would probe the EC2 metadata address) or picks up ambient profiles.
        session = boto3.session.Session(
            aws_access_key_id=access.reveal(), aws_secret_access_key=secret.reveal(),
            region_name=self.region,
        )
        client = session.client("s3", endpoint_url=self.location.endpoint_url, config=config)
        client.meta.events.register("before-call.s3", self._count)
        return client

    def _count(self, model: Any = None, **_kwargs: Any) -> None:
        if model is not None:
            with self._client_lock:        # pool threads count concurrently
                self.calls[model.name] += 1


    def put_repository_file(self, relpath: str, data: bytes) -> None:
        """Write one of restic's own files (e.g. keys/<id>) under the repository prefix."""
        key = self.location.repo_prefix + relpath
        if self._client is None:
            self.put_object_light(key, data, "application/octet-stream")
            return
        self._call(f"write {key}", lambda c: c.put_object(Bucket=self.location.bucket, Key=key, Body=data))

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

    def put_object_light(self, key: str, data: bytes, content_type: str) -> None:
        """PutObject without boto3 (s3_put.py: ~1 ms instead of ~0.46 s of CPU to load boto3
        and build its client), with the same errors as `_call`."""
        from drtool.storage.s3_put import Unreachable, put_object

        access, secret = self._credentials()
        what = f"write {key}"
        with self._client_lock:
            self.calls["PutObject"] += 1
        try:
            refused = put_object(self.location.endpoint_url, self.location.bucket, key, data,
                                 access_key=access.reveal(), secret_key=secret.reveal(), region=self.region,
                                 content_type=content_type, timeout=self.read_timeout, attempts=self.max_attempts)
        except Unreachable as exc:
            where = self.location.endpoint_url
            happened = (f"S3 endpoint {where} did not answer within {self.read_timeout:g}s" if exc.timed_out
                        else f"cannot connect to S3 endpoint {where} ({exc.reason})")
            raise StorageError(f"{happened} (while trying to {what} in bucket {self.location.bucket!r})",
                               hint=_UNREACHABLE_HINT) from None
        if refused is not None:
            raise self._refusal(what, refused.code, refused.status, refused.message)

    def _client_error(self, what: str, exc: Any) -> StorageError:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return self._refusal(what, error_code(exc), status, exc.response.get("Error", {}).get("Message") or "")

    def _refusal(self, what: str, code: str, status: int | None, message: str) -> StorageError:
        """The error for an S3 answer refusing `what` (error code, HTTP status, S3's message)."""
        where = self.location.where()
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
        if code in MISSING_BUCKET_CODES:
            return StorageError(f"bucket {self.location.bucket!r} does not exist at {self.location.endpoint_url}",
                                hint="run the preflight with bucket creation allowed, or create the bucket")
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
                            hint=_UNREACHABLE_HINT)


_UNREACHABLE_HINT = ("check the repository URL (host, port, http/https), that the server is running, and that "
                     "the network or firewall lets this machine reach it")




def client_code(exc: StorageError) -> str | None:
    """The S3 error code behind a StorageError, if the server answered with one."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    return error_code(cause) if isinstance(cause, ClientError) else None


def error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or
               exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "unknown")


def _env_secret(name: str) -> Secret | None:
    value = os.environ.get(name)
    return Secret(value) if value else None
