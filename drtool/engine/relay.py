"""The one byte relay: a producer's stdout into a consumer's stdin, for every stream drtool moves.

    result = relay(pg_dump, restic, what="pg_dump of siak", close_dst=False,
                   cancel=event, stall=600, timeout=86400, check=archive_check)

Used by the backup pipeline (dump -> restic, whose stdin stays open: closing it is the
commit gate's decision, not the relay's), restores (restic dump -> pg_restore / mariadb /
tar) and remote restores (over an SSH channel). What it does for all of them:

- copies with os.splice (pipe to pipe inside the kernel) when both ends are local pipes
  and nobody needs to see the bytes; otherwise through Python in 1 MiB chunks;
- tees the bytes into a file (`tee`) and/or a stream check (`check.feed`, e.g. a parser
  that proves a pg_dump custom archive is complete) when asked;
- a watchdog thread stops both ends when `cancel` is set, when no byte moved for `stall`
  seconds, or when `timeout` seconds passed; the result says which (`stopped`);
- a consumer that stops reading (BrokenPipe) ends the copy, or, with a tee, only the
  forwarding (the tee still needs the whole stream).

It never raises for those events: the caller knows what a stall or a quitting consumer
means for its guarantee (the backup pipeline must not commit; a restore reports it).
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from drtool.execute import Process, stop_process

CHUNK = 1 << 20
WATCH_INTERVAL = 0.5
# Each read through Python has a fixed cost (a new bytes object, the check's feed, the write),
# and a producer that writes 4-8 KiB at a time wakes a reader that keeps up after every write:
# a 770 MB pg_dump arrived in 16,000 reads of 47 KiB. When a read found the pipe nearly empty,
# waiting 2 ms lets it fill: ~1,000 reads, 0.3-0.5 s less CPU per GB beside pg_dump and restic.
# A 1 MiB pipe fills in 2 ms only above 500 MB/s, and then reads are full and nobody waits.
BATCH_BELOW = CHUNK // 4
BATCH_WAIT_S = 0.002


class StreamCheck(Protocol):
    """Sees every byte of a stream as it passes; `finish` raises if the stream is not whole."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


@dataclass
class FileSink:
    """A file as the consumer of a relay (a download into a temp file): a Process with only stdin."""

    def __init__(self, out: IO[bytes], name: str = "file") -> None:
        self.stdin = out
        self.argv = [name]

    def poll(self) -> int | None:
        return None

    def kill(self) -> None:
        """Nothing to stop: the producer is stopped instead."""

    def terminate(self) -> None:
        """Nothing to stop."""

    def wait(self, timeout: float | None = None) -> int:
        return 0


@dataclass
class RelayResult:
    copied: int
    consumer_quit: bool = False          # the consumer stopped reading before the end
    stopped: str | None = None           # "cancelled", "stalled" or "timeout" when the watchdog stopped it

    @property
    def complete(self) -> bool:
        return not self.consumer_quit and self.stopped is None


class _Watchdog:
    def __init__(self, stop: Callable[[], None], *, cancel: threading.Event | None, stall: float | None,
                 timeout: float | None) -> None:
        self.stopped: str | None = None
        self._stop, self._cancel, self._stall, self._timeout = stop, cancel, stall, timeout
        self._started = self._last = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if cancel is not None or stall or timeout:
            self._thread = threading.Thread(target=self._watch, name="relay-watchdog", daemon=True)
            self._thread.start()

    def progress(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(WATCH_INTERVAL):
            now = time.monotonic()
            if self._cancel is not None and self._cancel.is_set():
                reason = "cancelled"
            elif self._timeout and now - self._started > self._timeout:
                reason = "timeout"
            elif self._stall and now - self._last > self._stall:
                reason = "stalled"
            else:
                continue
            self.stopped = reason
            self._stop()
            return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(5)


def relay(src: Process, dst: Process | FileSink, *, what: str = "stream", cancel: threading.Event | None = None,
          stall: float | None = None, timeout: float | None = None, tee: IO[bytes] | None = None,
          check: StreamCheck | None = None, close_dst: bool = True, stop_dst: bool = True) -> RelayResult:
    """Copy src.stdout into dst.stdin until EOF (see the module docstring). `stop_dst=False` leaves
    the consumer running when the watchdog fires (the caller stops it its own way). A consumer
    that quit and *failed* (exit status not 0) also ends the tee: the copy is of no use then."""
    assert dst.stdin is not None
    out = dst.stdin

    def stop() -> None:
        src.kill()
        if stop_dst:
            stop_process(dst, grace=5)

    watchdog = _Watchdog(stop, cancel=cancel, stall=stall, timeout=timeout)
    result = RelayResult(0)
    batch = widen_pipe(src.stdout)
    widen_pipe(out)
    try:
        fds = None if (tee is not None or check is not None) else splice_fds(src.stdout, out)
        if fds is not None:
            result.copied, result.consumer_quit = _splice(fds, watchdog)
        else:
            result.copied, result.consumer_quit = _copy(src, out, watchdog, tee, check, dst, batch=batch)
        if close_dst and not result.consumer_quit:
            try:
                out.close()
            except (BrokenPipeError, OSError, ValueError):
                result.consumer_quit = True
    finally:
        watchdog.close()
    result.stopped = watchdog.stopped
    if result.consumer_quit and (tee is None or consumer_failed(dst)):
        stop_process(src, grace=2)
    return result


def _splice(fds: tuple[int, int], watchdog: _Watchdog) -> tuple[int, bool]:
    total = 0
    while True:
        try:
            moved = os.splice(fds[0], fds[1], CHUNK)
        except BrokenPipeError:
            return total, True
        if not moved:
            return total, False
        total += moved
        watchdog.progress()


def _copy(src: Process, out: IO[bytes], watchdog: _Watchdog, tee: IO[bytes] | None,
          check: StreamCheck | None, out_owner: Process | FileSink, *, batch: bool = False) -> tuple[int, bool]:
    """`batch`: the source is a pipe that holds CHUNK bytes, so short reads may wait for it to fill."""
    read = getattr(src.stdout, "read1", src.stdout.read)
    total, quit_ = 0, False
    while True:
        try:
            chunk = read(CHUNK)
        except (OSError, ValueError):
            break                                    # the producer's pipe was closed under us (killed)
        if not chunk:
            break
        total += len(chunk)
        watchdog.progress()
        if tee is not None:
            tee.write(chunk)
        if check is not None:
            check.feed(chunk)
        if quit_:
            if consumer_failed(out_owner):
                break
            continue                                 # only completing the tee
        try:
            out.write(chunk)
        except (BrokenPipeError, OSError, ValueError):
            quit_ = True
            if tee is None:
                break
        if batch and len(chunk) < BATCH_BELOW:
            time.sleep(BATCH_WAIT_S)
    return total, quit_


def widen_pipe(end: object, size: int = CHUNK) -> bool:
    """Let a pipe hold `size` bytes instead of 64 KiB: a stream copied through Python (checked,
    teed) then moves in 1 MiB reads and writes, not 64 KiB ones (16x fewer calls and feeds:
    0.6 -> 0.4 s of CPU for a 229 MB checked dump). Best effort: other kinds of file, or a
    user over the kernel's pipe-user-pages limit, keep what they have. True when `end` is a
    pipe that now holds `size` bytes."""
    try:
        fd = end.fileno()  # type: ignore[attr-defined]
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and hasattr(fcntl, "F_SETPIPE_SZ"):
            return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size) >= size
    except (AttributeError, OSError, ValueError):
        pass
    return False


def consumer_failed(consumer: Process | FileSink) -> bool:
    code = consumer.poll()
    return code not in (None, 0)


def splice_fds(src: object, dst: object) -> tuple[int, int] | None:
    """Both ends as pipe fds when os.splice can join them (local processes, Linux), else None."""
    if not hasattr(os, "splice"):
        return None
    try:
        src_fd, dst_fd = src.fileno(), dst.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None   # e.g. an SSH channel: relayed through Python
    if any(not stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (src_fd, dst_fd)):
        return None
    # Nothing has read the producer's stdout before the relay, so no bytes sit in Python's
    # buffer that splice would skip.
    return src_fd, dst_fd
