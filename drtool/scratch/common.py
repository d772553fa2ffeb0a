"""Helpers shared by scratch instances: free loopback ports, private temp dirs."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (loopback only, by design)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_dir(prefix: str, owner: str | None = None, base: str | None = None) -> Path:
    """A new 0700 directory; chowned to `owner` (e.g. postgres) when running as root."""
    path = Path(tempfile.mkdtemp(prefix=f"drtool-{prefix}-", dir=base))
    if owner and os.geteuid() == 0:
        shutil.chown(path, owner, owner)
    path.chmod(0o700)
    return path
