"""S3Store against real servers: rclone serve s3 (conftest) and moto (Object Lock, versioning)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from drtool.config.models import Repository
from drtool.errors import StorageError
from drtool.secrets import Secret
from drtool.storage.s3 import S3Store, parse_s3_url, store_from_repository
from tests.support.moto_server import (  # noqa: F401
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    MotoServer,
    moto_s3,
)
from tests.support.services import S3Server, free_port

pytestmark = pytest.mark.integration


def _store(server: S3Server, bucket: str, prefix: str = "repo", *, secret: str | None = None,
           access: str | None = None, **kwargs: float) -> S3Store:
    return S3Store(parse_s3_url(server.repo_url(bucket, prefix)), Secret(access or server.access_key),
                   Secret(secret or server.secret_key), "us-east-1", **kwargs)


@pytest.fixture()
def live_bucket(s3_server: S3Server, bucket: str) -> str:
    """The conftest bucket, made known to rclone through the S3 API.

    rclone caches its bucket list (--dir-cache-time, 5 min), so a folder made on disk
    after the first listing stays invisible; CreateBucket on it refreshes the cache.
    """
    from botocore.exceptions import ClientError

    try:
        _store(s3_server, bucket).client().create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
            raise
    return bucket


# ---------------------------------------------------------------- preflight

def test_preflight_existing_bucket_reports_unknown_features_on_rclone(s3_server: S3Server, live_bucket: str) -> None:
    status = _store(s3_server, live_bucket).preflight(create_bucket=False)
    assert (status.created, status.versioning, status.object_lock) == (False, None, None)
    assert "Object Lock unknown" in status.describe()


def test_preflight_missing_bucket_is_created_when_allowed(s3_server: S3Server, live_bucket: str) -> None:
    name = f"{live_bucket}-new"
    store = _store(s3_server, name)
    assert store.preflight(create_bucket=True).created is True
    assert (s3_server.root / name).is_dir()
    assert store.preflight(create_bucket=True).created is False  # second time: it exists


def test_preflight_missing_bucket_not_allowed_says_how(s3_server: S3Server, live_bucket: str) -> None:
    name = f"{live_bucket}-absent"
    with pytest.raises(StorageError) as info:
        _store(s3_server, name).preflight(create_bucket=False)
    text = str(info.value)
    assert f"bucket '{name}' does not exist at {s3_server.endpoint}" in text
    assert "create_bucket: true" in text
    assert not (s3_server.root / name).exists()


def test_preflight_wrong_secret_key_is_rejected_without_leaking_it(s3_server: S3Server, live_bucket: str) -> None:
    wrong = "wrong-secret-key-for-test-9876"
    with pytest.raises(StorageError) as info:
        _store(s3_server, live_bucket, secret=wrong).preflight(create_bucket=True)
    text = str(info.value)
    assert "rejected the credentials (SignatureDoesNotMatch)" in text
    assert s3_server.endpoint in text and live_bucket in text
    # Not even masked: the message never tried to include a secret.
    assert wrong not in text and s3_server.secret_key not in text and "***" not in text
    assert not (s3_server.root / live_bucket / "repo.drtool").exists()


def test_preflight_unknown_access_key_is_rejected(s3_server: S3Server, live_bucket: str) -> None:
    with pytest.raises(StorageError, match=r"rejected the credentials \(InvalidAccessKeyId\)"):
        _store(s3_server, live_bucket, access="no-such-access-key").preflight(create_bucket=False)


def test_preflight_dead_endpoint_fails_fast_and_clearly() -> None:
    port = free_port()  # nobody listens there
    store = S3Store(parse_s3_url(f"s3:http://127.0.0.1:{port}/some-bucket/repo"),
                    Secret("dead-access-key"), Secret("dead-secret-key-123"), "us-east-1")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.preflight(create_bucket=True)
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert f"cannot connect to S3 endpoint http://127.0.0.1:{port}" in text
    assert "server is running" in text


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port whose kernel accepts TCP connections that nobody ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_preflight_silent_endpoint_times_out(silent_port: int) -> None:
    store = S3Store(parse_s3_url(f"s3:http://127.0.0.1:{silent_port}/some-bucket"),
                    Secret("silent-access-key"), Secret("silent-secret-key-123"), "us-east-1",
                    read_timeout=0.5, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"did not answer within 0.5s"):
        store.preflight(create_bucket=False)
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- catalog objects

def test_json_round_trip_lands_beside_the_repository(s3_server: S3Server, live_bucket: str) -> None:
    store = _store(s3_server, live_bucket, "hosts/db1")
    record = {"run": "r1", "ok": True, "at": datetime(2024, 5, 1, 2, 3, tzinfo=UTC), "n": [1, 2]}
    store.put_json("runs/r1.json", record)
    assert store.get_json("runs/r1.json") == {**record, "at": "2024-05-01T02:03:00+00:00"}
    assert (s3_server.root / live_bucket / "hosts" / "db1.drtool" / "runs" / "r1.json").is_file()
    assert not (s3_server.root / live_bucket / "hosts" / "db1").exists()  # restic's folder stays untouched


def test_catalog_at_bucket_root_when_prefix_is_empty(s3_server: S3Server, live_bucket: str) -> None:
    store = _store(s3_server, live_bucket, "")
    store.put_bytes("kit/blob.bin", b"\x00\x01binary")
    assert store.get_bytes("kit/blob.bin") == b"\x00\x01binary"
    assert (s3_server.root / live_bucket / ".drtool" / "kit" / "blob.bin").is_file()


def test_get_missing_object_returns_none(s3_server: S3Server, live_bucket: str) -> None:
    store = _store(s3_server, live_bucket)
    assert store.get_json("runs/nope.json") is None
    assert store.get_bytes("runs/nope.bin") is None


def test_get_json_on_garbage_is_a_clear_error(s3_server: S3Server, live_bucket: str) -> None:
    store = _store(s3_server, live_bucket)
    store.put_bytes("runs/bad.json", b"{not json")
    with pytest.raises(StorageError, match=r"repo.drtool/runs/bad.json .* is not valid JSON"):
        store.get_json("runs/bad.json")


def test_put_json_masks_known_secrets(s3_server: S3Server, live_bucket: str) -> None:
    leaked = Secret("a-password-that-must-not-travel").reveal()
    store = _store(s3_server, live_bucket)
    store.put_json("runs/leak.json", {"stderr": f"auth failed for {leaked}"})
    raw = (s3_server.root / live_bucket / "repo.drtool" / "runs" / "leak.json").read_text()
    assert leaked not in raw and "***" in raw


def test_list_json_follows_pages_and_filters(s3_server: S3Server, live_bucket: str) -> None:
    store = _store(s3_server, live_bucket, page_size=2)
    names = [f"runs/2024-05-0{i}.json" for i in range(1, 6)]
    for name in reversed(names):
        store.put_json(name, {"name": name})
    store.put_bytes("runs/notes.txt", b"not a record")
    store.put_json("drills/d1.json", {})
    store.put_json("runsx/other.json", {})  # shares the string prefix "runs", not the folder
    assert store.list_json("runs") == names  # 5 records over 3+ pages, sorted, txt skipped
    assert store.list_json("runs/") == names
    assert store.list_json("drills") == ["drills/d1.json"]
    assert len(store.list_json()) == 7
    assert store.list_json("nothing-here") == []


def test_list_json_over_limit_refuses_instead_of_truncating(s3_server: S3Server, live_bucket: str) -> None:
    store = _store(s3_server, live_bucket, page_size=2)
    for i in range(4):
        store.put_json(f"runs/{i}.json", {})
    with pytest.raises(StorageError, match="more than 3 catalog objects under repo.drtool/runs/"):
        store.list_json("runs", limit=3)


# ---------------------------------------------------------------- from config

def test_store_from_repository_resolves_secret_refs(s3_server: S3Server, live_bucket: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRT_S3_KEY", s3_server.access_key)
    monkeypatch.setenv("DRT_S3_SECRET", s3_server.secret_key)
    repo = Repository.model_validate({
        "url": s3_server.repo_url(live_bucket, "cfg"), "password": {"env": "DRT_RESTIC_PW"},
        "s3": {"access_key_id": {"env": "DRT_S3_KEY"}, "secret_access_key": {"env": "DRT_S3_SECRET"},
               "region": "eu-west-1"},
    })
    store = store_from_repository(repo)
    assert store is not None and store.location.prefix == "cfg"
    assert store.env_for_restic()["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert store.preflight(create_bucket=False).created is False


def test_store_from_repository_without_s3_settings_uses_aws_env(s3_server: S3Server, live_bucket: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    repo = Repository.model_validate({"url": s3_server.repo_url(live_bucket, "env"), "password": {"env": "X"}})
    store = store_from_repository(repo)
    assert store is not None and store.region == "us-east-1"
    store.put_json("runs/e.json", {"ok": 1})
    assert json.loads((s3_server.root / live_bucket / "env.drtool" / "runs" / "e.json").read_text()) == {"ok": 1}


def test_store_from_repository_local_repo_is_none() -> None:
    assert store_from_repository(Repository.model_validate({"url": "/srv/restic", "password": {"env": "X"}})) is None


# ---------------------------------------------------------------- moto: Object Lock and versioning

def _moto_store(server: MotoServer, bucket: str) -> S3Store:
    return S3Store(parse_s3_url(f"s3:{server.endpoint}/{bucket}/repo"), Secret(MOTO_ACCESS_KEY),
                   Secret(MOTO_SECRET_KEY), "us-east-1")


def test_preflight_reports_object_lock_and_versioning_on_locked_bucket(moto_s3: MotoServer) -> None:  # noqa: F811
    store = _moto_store(moto_s3, "locked-bucket")
    store.client().create_bucket(Bucket="locked-bucket", ObjectLockEnabledForBucket=True)
    status = store.preflight(create_bucket=False)
    assert (status.created, status.versioning, status.object_lock) == (False, "Enabled", True)
    assert "versioning enabled, Object Lock enabled" in status.describe()


def test_preflight_reports_no_object_lock_on_plain_bucket(moto_s3: MotoServer) -> None:  # noqa: F811
    status = _moto_store(moto_s3, "plain-bucket").preflight(create_bucket=True)
    assert (status.created, status.versioning, status.object_lock) == (True, None, False)
