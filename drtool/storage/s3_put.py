"""One S3 PutObject with AWS Signature Version 4, from the standard library.

Every run ends by writing its signed record next to the repository: one small object.
boto3 costs ~0.46 s of CPU to import and to build a client (bench/README.md), paid by every
nightly backup on a machine whose cores the dump already fills. This signs and sends that
one request in about a millisecond. Everything else drtool does with S3 (bucket checks,
Object Lock, listings, rollback) stays on boto3 (s3_client.py), and a store that already
has its boto3 client uses it for records too.

What it does as boto3 does for a PutObject: path-style URL, SigV4 over the SHA-256 of the
body, Content-MD5 (S3 requires it where Object Lock applies), one retry after a 5xx answer
or a dropped connection, proxies from the environment (urllib), TLS checked against the
system's CAs or AWS_CA_BUNDLE. Errors are returned as (code, HTTP status, message) for the
caller's error mapping; transport failures as `Unreachable`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
RETRY_AFTER_S = 0.5


@dataclass(frozen=True)
class Refused:
    """S3 answered with an error."""
    code: str
    status: int
    message: str


class Unreachable(Exception):
    """No answer: connection refused or reset, DNS, timeout."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def signed_headers(method: str, host: str, path: str, body: bytes, *, access_key: str, secret_key: str,
                   region: str, content_type: str, now: datetime) -> dict[str, str]:
    """The headers of a SigV4-signed request without a query string (pure: tested against
    AWS's published example)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    headers = {
        "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324 - S3's integrity header
        "content-type": content_type,
        "host": host,
        "x-amz-content-sha256": payload,
        "x-amz-date": amz_date,
    }
    names = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={names}, "
                                f"Signature={signature}")
    return headers


def object_path(bucket: str, key: str) -> str:
    """The path-style, URI-encoded path of an object (S3 encodes each segment once)."""
    return "/" + "/".join(quote(part, safe="-_.~") for part in [bucket, *key.split("/")])


def put_object(endpoint_url: str, bucket: str, key: str, body: bytes, *, access_key: str, secret_key: str,
               region: str, content_type: str, timeout: float, attempts: int = 2) -> Refused | None:
    """PUT one object; None when stored, Refused when S3 said no; raises Unreachable."""
    host = endpoint_url.split("://", 1)[1].rstrip("/")
    path = object_path(bucket, key)
    context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None) \
        if endpoint_url.startswith("https") else None
    for attempt in range(1, attempts + 1):
        headers = signed_headers("PUT", host, path, body, access_key=access_key, secret_key=secret_key,
                                 region=region, content_type=content_type, now=datetime.now(timezone.utc))
        request = urllib.request.Request(endpoint_url.rstrip("/") + path, data=body, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:  # noqa: S310
                reply.read()
            return None
        except urllib.error.HTTPError as exc:
            refused = _refusal(exc.code, exc.read() or b"")
            if exc.code < 500 or attempt == attempts:
                return refused
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if attempt == attempts:
                raise Unreachable(str(reason), timed_out=isinstance(reason, TimeoutError)) from None
        time.sleep(RETRY_AFTER_S)
    raise AssertionError("unreachable")   # pragma: no cover - the loop always returns or raises


def _refusal(status: int, body: bytes) -> Refused:
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return Refused(code.group(1) if code else str(status), status, message.group(1) if message else "")
