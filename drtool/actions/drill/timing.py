"""Run one drill step against its timeout, and stop what it started when time is up.

The step runs in a worker thread inside its own `process_scope()` (see
drtool.execute): every program the step starts is recorded there. On expiry
(or Ctrl-C) exactly those processes and their children are interrupted
(SIGINT, so restic releases its repository locks), then killed after a short
grace; a concurrent daemon job's processes are never touched. Database
servers of scratch instances (postgres, mariadbd) are left alone: their
context manager owns them and tears them down like `always:`.

Linux only (/proc).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drtool.errors import Cancelled
from drtool.execute import process_scope

SERVER_COMMS = frozenset({"postgres", "mariadbd", "mysqld"})
STOP_GRACE_S = 3.0
JOIN_AFTER_STOP_S = 20.0


@dataclass
class Timed:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    duration_s: float = 0.0
    stopped: int = 0              # processes stopped because of the timeout
    still_running: bool = False   # the worker did not return after its processes were stopped


def call_with_timeout(fn: Callable[[], Any], timeout: float | None,
                      cancel: threading.Event | None = None) -> Timed:
    box: dict[str, Any] = {}
    started_pids: set[int] = set()

    def work() -> None:
        with process_scope() as pids:
            box["pids"] = pids
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as data
                box["error"] = exc

    def step_processes() -> set[int]:
        return set(box.get("pids", started_pids))

    worker = threading.Thread(target=work, name="drill-step", daemon=True)
    started = time.monotonic()
    worker.start()
    try:
        _join(worker, timeout, cancel)
    except KeyboardInterrupt:
        stop_processes(step_processes())
        worker.join(JOIN_AFTER_STOP_S)
        raise
    if worker.is_alive() and cancel is not None and cancel.is_set():
        stop_processes(step_processes())
        worker.join(JOIN_AFTER_STOP_S)
        return Timed(error=Cancelled("the step was cancelled (drtool is shutting down)"),
                     duration_s=time.monotonic() - started)
    if worker.is_alive():
        elapsed = time.monotonic() - started
        stopped = stop_processes(step_processes())
        worker.join(JOIN_AFTER_STOP_S)
        return Timed(timed_out=True, duration_s=elapsed, stopped=stopped, still_running=worker.is_alive())
    elapsed = time.monotonic() - started
    error = box.get("error")
    # A subprocess timeout inside the step that fires together with ours is the same event.
    timed_out = error is not None and timeout is not None and elapsed >= timeout - 0.05
    return Timed(box.get("value"), error, timed_out, elapsed)


def _join(worker: threading.Thread, timeout: float | None, cancel: threading.Event | None) -> None:
    """Wait for the step until its timeout, or until `cancel` is set (the daemon's SIGTERM)."""
    if cancel is None:
        worker.join(timeout)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while worker.is_alive() and not cancel.is_set():
        left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if left <= 0:
            return
        worker.join(left)


def descendants(root: int) -> set[int]:
    """Pids below `root`, not descending into database servers (their scratch owner stops them)."""
    children: dict[int, list[int]] = {}
    comms: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        head, _, rest = text.rpartition(")")
        pid = int(entry.name)
        comms[pid] = head.partition("(")[2]
        fields = rest.split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if comms.get(child) in SERVER_COMMS or child in found:
                continue
            found.add(child)
            todo.append(child)
    return found


def stop_processes(started: set[int], grace: float = STOP_GRACE_S) -> int:
    """Interrupt, then kill, the step's processes and their children; returns how many."""
    targets: set[int] = set()
    for pid in started:
        if _alive(pid) and _comm(pid) not in SERVER_COMMS:
            targets.add(pid)
            targets |= descendants(pid)
    for pid in targets:
        _signal(pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in targets):
        time.sleep(0.05)
    for pid in targets:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    return len(targets)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().partition("(")[2].rpartition(")")[0]
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"   # a zombie has stopped; its parent reaps it
