"""Shared fixtures: a real S3 server (rclone serve s3) and a drtool setup around it."""

from __future__ import annotations

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
    return name
