"""Shared fixtures: a real S3 server (rclone serve s3) and a drtool setup around it."""

from __future__ import annotations

import functools
import os
import shutil

import pytest

from tests.support.services import S3Server, start_rclone_s3


def _need(program: str) -> None:
    if shutil.which(program) is None and not os.environ.get("CI"):
        pytest.skip(f"{program} is not installed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    _need("rclone")
    server = start_rclone_s3(tmp_path_factory.mktemp("s3") / "data")
    yield server
    server.stop()


@pytest.fixture()
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test."""
    import re
    import uuid
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:36].strip("-") + "-" + uuid.uuid4().hex[:8]
    (s3_server.root / name).mkdir(parents=True, exist_ok=True)
    _wait_until_listed(s3_server, name)
    return name


@functools.cache
def _head_client(endpoint: str, access_key: str, secret_key: str):  # noqa: ANN202 - a boto3 client
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}))


def _wait_until_listed(server: S3Server, name: str, timeout: float = 15.0) -> None:
    """rclone caches its folder list for --dir-cache-time (1 s here): a client asking at once
    may be told the bucket does not exist, and restic then fails on MakeBucket with
    BucketAlreadyExists (seen in CI under load). Wait until rclone answers HEAD with 200."""
    import time

    from botocore.exceptions import ClientError

    client = _head_client(server.endpoint, server.access_key, server.secret_key)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.head_bucket(Bucket=name)
            return
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
