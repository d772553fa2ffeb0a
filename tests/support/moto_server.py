"""moto's S3 server on loopback, for tests that need Object Lock / versioning semantics rclone lacks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import free_port, wait_port

# moto accepts any credentials; these only have to be well-formed.
MOTO_ACCESS_KEY = "moto-access-key"
MOTO_SECRET_KEY = "moto-secret-key-0123456789"


@dataclass
class MotoServer:
    endpoint: str
    port: int
    proc: subprocess.Popen
    access_key: str = MOTO_ACCESS_KEY
    secret_key: str = MOTO_SECRET_KEY

    def repo_url(self, bucket: str, prefix: str) -> str:
        """The restic URL of a repository there (same shape as the rclone fixture's, for make_env)."""
        return f"s3:{self.endpoint}/{bucket}/{prefix}"

    def client(self):  # noqa: ANN201 - a boto3 S3 client with moto's dummy keys
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_moto_s3(log_dir: Path, port: int | None = None) -> MotoServer:
    """`python -m moto.server -H 127.0.0.1 -p PORT`; state lives in memory and dies with it."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    # Dummy credentials in its environment: moto must never find real ones on this machine.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": MOTO_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": MOTO_SECRET_KEY,
           "AWS_EC2_METADATA_DISABLED": "true"}
    with open(log_dir / f"moto-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    try:
        wait_port(port, proc, timeout=30)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return MotoServer(f"http://127.0.0.1:{port}", port, proc)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server for the whole session (import this fixture into the test module)."""
    pytest.importorskip("moto.server")
    server = start_moto_s3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
