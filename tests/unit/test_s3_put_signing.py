"""The standard-library SigV4 PutObject (drtool/storage/s3_put.py) signs exactly as botocore does.

botocore is the reference: the same request (method, path-style URL, headers, body, time) signed by
botocore's S3SigV4Auth must carry the same Authorization header. The request itself reaching real
S3 servers (rclone, moto with Object Lock) is covered by every integration test that reads a run
record back from the bucket.
"""

from __future__ import annotations

from datetime import datetime, timezone
from unittest import mock

import pytest

from drtool.storage.s3_put import _refusal, object_path, signed_headers

NOW = datetime(2026, 12, 7, 8, 15, 30, tzinfo=timezone.utc)
ACCESS, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("key,body,region", [
    ("siak.drtool/runs/20261207T081530Z-backup-1a2b3c.json", b'{"status": "success"}', "us-east-1"),
    ("hosts/db 1.drtool/drills/ä ö+x.json", b"", "eu-central-1"),
    ("a/b/c.json", bytes(range(256)) * 100, "ap-southeast-3"),
], ids=["record", "odd-names-empty", "binary"])
def test_signature_is_botocores(key: str, body: bytes, region: str) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    host = "127.0.0.1:9000"
    ours = signed_headers("PUT", host, object_path("bucket-x", key), body, access_key=ACCESS, secret_key=SECRET,
                          region=region, content_type="application/json", now=NOW)
    request = AWSRequest(method="PUT", url=f"http://{host}{object_path('bucket-x', key)}", data=body,
                         headers={k: v for k, v in ours.items() if k not in ("authorization", "x-amz-date")})
    auth = S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth.add_auth(request)
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]
    assert request.headers["Authorization"] == ours["authorization"]


def test_object_path_encodes_each_segment_once() -> None:
    assert object_path("b", "x y/ä+%.json") == "/b/x%20y/%C3%A4%2B%25.json"


def test_refusal_reads_the_s3_error_document() -> None:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code>'
            b"<Message>The request signature we calculated does not match</Message></Error>")
    refused = _refusal(403, body)
    assert (refused.code, refused.status) == ("SignatureDoesNotMatch", 403)
    assert refused.message.startswith("The request signature")
    assert _refusal(502, b"<html>bad gateway</html>").code == "502"
