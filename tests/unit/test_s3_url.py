"""Parsing restic S3 URLs, catalog key layout and BucketStatus text (pure, no network)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drtool.errors import StorageError
from drtool.secrets import Secret
from drtool.storage.s3 import BucketStatus, S3Location, S3Store, parse_s3_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3:http://127.0.0.1:9000/bucket/prefix", S3Location("127.0.0.1:9000", "bucket", "prefix", False)),
        ("s3:https://s3.example.org/bucket", S3Location("s3.example.org", "bucket", "", True)),
        ("s3:https://s3.example.org/bucket/", S3Location("s3.example.org", "bucket", "", True)),
        ("s3:s3.example.org/bucket/hosts/db1", S3Location("s3.example.org", "bucket", "hosts/db1", True)),
        ("s3://s3.example.org/bucket/p", S3Location("s3.example.org", "bucket", "p", True)),
        ("s3:http://[::1]:9000/my.bucket_1/a/b/", S3Location("[::1]:9000", "my.bucket_1", "a/b", False)),
    ],
)
def test_parse_s3_url_valid_forms_give_location(url: str, expected: S3Location) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("/srv/restic", "does not start with s3:"),
        ("s3:", "endpoint host is missing"),
        ("s3:http:///bucket", "endpoint host is missing"),
        ("s3:http://127.0.0.1:9000", "bucket name is missing"),
        ("s3:http://127.0.0.1:9000/", "bucket name is missing"),
        ("s3:ftp://host/bucket", "scheme 'ftp' is not http or https"),
        ("s3:http://host/Bad_Bucket", "bucket name 'Bad_Bucket' is not valid"),
        ("s3:http://host/ab", "bucket name 'ab' is not valid"),
        ("s3:http://host/bucket/a/../b", "'..'"),
        ("s3:http://host/bucket/a//b", "empty"),
        ("s3:http://user:pw@host/bucket", "credentials in the URL"),
        ("s3:http://host:port/bucket", "is not a host name or host:port"),
    ],
)
def test_parse_s3_url_bad_url_says_why_and_how(url: str, why: str) -> None:
    with pytest.raises(StorageError) as info:
        parse_s3_url(url)
    text = str(info.value)
    assert why in text
    assert "s3:http://HOST:PORT/BUCKET/PREFIX" in text  # the fix is shown


def test_location_endpoint_url_follows_secure_flag() -> None:
    assert parse_s3_url("s3:http://127.0.0.1:9/b-1").endpoint_url == "http://127.0.0.1:9"
    assert parse_s3_url("s3:host/b-1").endpoint_url == "https://host"


def test_catalog_prefix_is_beside_the_repository_not_inside() -> None:
    with_prefix = parse_s3_url("s3:http://127.0.0.1:9/bkt/hosts/db1")
    assert with_prefix.catalog_prefix == "hosts/db1.drtool/"
    assert not with_prefix.catalog_prefix.startswith("hosts/db1/")
    assert parse_s3_url("s3:http://127.0.0.1:9/bkt").catalog_prefix == ".drtool/"


def _store(url: str = "s3:http://127.0.0.1:9/bkt/repo") -> S3Store:
    return S3Store(parse_s3_url(url), Secret("unit-access-key"), Secret("unit-secret-key-123"), "eu-west-1")


def test_catalog_key_joins_relpath_under_catalog_prefix() -> None:
    assert _store().catalog_key("runs/r1.json") == "repo.drtool/runs/r1.json"


@pytest.mark.parametrize("relpath", ["", "/abs.json", "../escape.json", "runs//x.json", "runs/./x", "a\\b"])
def test_catalog_key_rejects_paths_that_escape_or_are_ambiguous(relpath: str) -> None:
    with pytest.raises(StorageError, match="invalid catalog path"):
        _store().catalog_key(relpath)


def test_env_for_restic_has_values_and_region() -> None:
    env = _store().env_for_restic()
    assert env == {"AWS_ACCESS_KEY_ID": "unit-access-key", "AWS_SECRET_ACCESS_KEY": "unit-secret-key-123",
                   "AWS_DEFAULT_REGION": "eu-west-1"}


def test_missing_credentials_fall_back_to_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-key-456")
    store = S3Store(parse_s3_url("s3:http://127.0.0.1:9/bkt"), None, None, "us-east-1")
    assert store.env_for_restic()["AWS_SECRET_ACCESS_KEY"] == "env-secret-key-456"


def test_no_credentials_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    store = S3Store(parse_s3_url("s3:http://127.0.0.1:9/bkt"), None, None, "us-east-1")
    with pytest.raises(StorageError, match="no S3 access key id for http://127.0.0.1:9/bkt") as info:
        store.env_for_restic()
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_repr_shows_location_not_secrets() -> None:
    assert "unit-secret" not in repr(_store()) and "http://127.0.0.1:9/bkt/repo" in repr(_store())


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (BucketStatus(True, "Enabled", True), ["created", "versioning enabled", "Object Lock enabled"]),
        (BucketStatus(False, "Suspended", False), ["exists", "versioning suspended", "Object Lock off"]),
        (BucketStatus(False, None, None), ["exists", "not reported", "Object Lock unknown"]),
    ],
)
def test_bucket_status_describe_reads_plainly(status: BucketStatus, words: list[str]) -> None:
    text = status.describe()
    for word in words:
        assert word in text


def test_importing_storage_does_not_import_boto3() -> None:
    # A fresh interpreter: other tests in this process may already have imported boto3.
    code = "import sys, drtool.storage.s3; sys.exit('boto3' in sys.modules or 'botocore' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
