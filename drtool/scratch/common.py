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


def claim_dir(path: Path, owner: str | None = None) -> Path:
    """A persistent directory for a server that stays: new or empty, 0700, owned by `owner`.

    Parents that do not exist are created 0711 (enterable, not listable), so the
    server's OS user can reach its directory; an existing parent it cannot enter
    is an error that names it (nothing is chmod-ed behind the admin's back).
    """
    from drtool.errors import RestoreRefused, UsageError

    path = Path(path).absolute()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RestoreRefused(f"{path} already exists and is not an empty directory; nothing was written",
                             hint="choose another --data-dir, or move the old server away first")
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for parent in reversed(missing[1:]):
        parent.mkdir(mode=0o711)
        parent.chmod(0o711)
    if owner and os.geteuid() == 0:
        for parent in path.parents:
            st = parent.stat()
            if not st.st_mode & 0o001:
                raise UsageError(f"the {owner} OS user cannot enter {parent} (mode {st.st_mode & 0o777:o}), "
                                 f"so it cannot reach {path}",
                                 hint=f"choose a --data-dir below a directory others may enter, or chmod o+x {parent}")
    path.mkdir(mode=0o700, exist_ok=True)
    if owner and os.geteuid() == 0:
        shutil.chown(path, owner, owner)
    path.chmod(0o700)
    return path
