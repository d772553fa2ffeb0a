"""One run per policy at a time.

The lock is an flock() on a file under state_dir: the kernel drops it when
the holding process dies, however it dies, so a killed run never leaves a
lock behind and we never have to guess whether a holder is still alive.
The file's content (pid, start time, run id) is only for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from drtool.errors import LockError, StateError


class PolicyLock:
    def __init__(self, state_dir: Path, policy: str, *, wait: bool = False, timeout: float | None = None) -> None:
        self.path = state_dir / "locks" / f"{policy}.lock"
        self.policy = policy
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self, run_id: str = "") -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the lock of policy {self.policy!r} ({self.path}): {exc.strerror}",
                             hint=f"check free space and permissions of {self.path.parent.parent} (state_dir)") from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    holder = _read_holder(self.path)
                    os.close(fd)
                    raise LockError(f"policy {self.policy!r} is already running ({holder})",
                                    hint="wait for it to finish, or pass --wait to queue behind it") from None
                time.sleep(0.5)
        try:   # who holds it, for the message of a refused run: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time(), "run": run_id}).encode())
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "PolicyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    if not info:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')}, run {info.get('run') or '?'}, since {since}"
