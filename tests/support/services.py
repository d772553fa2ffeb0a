"""Real services for tests: started on 127.0.0.1 with random ports in temp dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from drtool.storage.local_s3 import LocalS3, start_local_s3


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


S3Server = LocalS3


def start_rclone_s3(root: Path, port: int | None = None, access_key: str = "drtest-access",
                    secret_key: str = "drtest-secret-0123456789") -> LocalS3:
    """`rclone serve s3` on loopback (the product's own launcher); sub-folders are buckets."""
    return start_local_s3(root, port=port, access_key=access_key, secret_key=secret_key)


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
