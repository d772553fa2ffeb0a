"""Process helpers: timed runs, /proc VmHWM polling of one process, argv-only pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass


@dataclass
class Run:
    seconds: float
    returncode: int
    peak_rss_kib: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""


def _vmhwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class HwmPoller:
    """Polls VmHWM (peak RSS, KiB) of exactly one pid: the process itself, never its children."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = _vmhwm(self.pid)
            if value is None:
                return
            self.peak = max(self.peak, value)
            self._stop.wait(self.interval)

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        return self.peak or None


def timed(argv: list[str], *, env: dict[str, str] | None = None, rss: bool = False,
          capture: bool = True, timeout: float = 3600) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    poller = HwmPoller(proc.pid) if rss else None
    out, err = proc.communicate(timeout=timeout)
    elapsed = time.perf_counter() - start
    peak = poller.stop() if poller else None
    return Run(elapsed, proc.returncode, peak, out or b"", err or b"")


def timed_pipe(producer: list[str], consumer: list[str], *, env_producer: dict[str, str],
               env_consumer: dict[str, str], timeout: float = 3600) -> Run:
    """producer | consumer, argv lists, no shell; the wall time until both have exited."""
    start = time.perf_counter()
    prod = subprocess.Popen(producer, env=env_producer, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cons = subprocess.Popen(consumer, env=env_consumer, stdin=prod.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert prod.stdout is not None
    prod.stdout.close()
    perr_box: list[bytes] = []
    t = threading.Thread(target=lambda: perr_box.append(prod.stderr.read()), daemon=True)  # type: ignore[union-attr]
    t.start()
    out, err = cons.communicate(timeout=timeout)
    prod.wait(timeout)
    t.join()
    elapsed = time.perf_counter() - start
    code = prod.returncode or cons.returncode
    return Run(elapsed, code, None, out, (perr_box[0] if perr_box else b"") + err)


def restic_summary(stdout: bytes) -> dict:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if obj.get("message_type") == "summary":
                return obj
    return {}


def check(run: Run, what: str) -> Run:
    if run.returncode != 0:
        raise RuntimeError(f"{what} exited {run.returncode}:\n{run.stderr.decode('utf-8', 'replace')[-3000:]}"
                           f"\n{run.stdout.decode('utf-8', 'replace')[-1000:]}")
    return run


def pause_stats() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
