"""Dump streams into restic with a commit gate.

restic 0.14 has no --stdin-from-command, and `restic backup --stdin` commits
a snapshot as soon as its stdin reaches EOF, whatever produced it. So drtool
holds the stream: it relays the producer's stdout into restic's stdin and
closes restic's stdin (letting it commit) only after the producer exited 0
with at least one byte. On any failure it interrupts restic while its stdin
is still open, so restic exits without writing a snapshot; as a second line
of defence any snapshot tagged with this run and stream is then forgotten.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from drtool.engine.relay import RelayResult, StreamCheck, relay
from drtool.engine.restic import JsonLineReader, ProgressFn, Restic, summary_snapshot_id
from drtool.errors import Cancelled, CommandError, DrtoolError, ProducerFailed, SourceError
from drtool.execute import Process, stop_process

__all__ = ["Cancelled", "stream_to_restic", "backup_paths", "backup_bytes"]

log = logging.getLogger(__name__)

DEFAULT_STALL_S = 600.0              # a dump that sends nothing for 10 minutes is stuck
DEFAULT_STREAM_TIMEOUT_S = 24 * 3600.0


@dataclass
class StreamResult:
    stream: str
    snapshot_id: str
    bytes_in: int
    data_added: int
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def backup_args(tags: Sequence[str], host: str) -> list[str]:
    args = ["backup", "--json", "--host", host]
    for tag in tags:
        args += ["--tag", tag]
    return args


def stdin_backup_args(filename: str, tags: Sequence[str], host: str) -> list[str]:
    return [*backup_args(tags, host), "--stdin", "--stdin-filename", filename]


def stream_to_restic(
    restic: Restic,
    producer_start: Callable[[], Process],
    *,
    filename: str,
    tags: Sequence[str],
    host: str,
    what: str,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    check: StreamCheck | None = None,
    stall: float | None = DEFAULT_STALL_S,
    timeout: float | None = DEFAULT_STREAM_TIMEOUT_S,
) -> StreamResult:
    """Back up one producer's stdout as `filename`; commit only if the producer succeeded.

    `check` sees every byte on the way (e.g. proves a pg_dump archive is complete) and may
    veto the commit; `stall` / `timeout` stop a dump that hangs (no byte for `stall`
    seconds, or longer than `timeout` in all)."""
    started = time.monotonic()
    proc, pw = restic.start(stdin_backup_args(filename, tags, host), stdin=True)
    reader = JsonLineReader(proc, on_progress)
    watch = restic.watch_retries(proc)          # a storage that stopped answering: stop restic
    producer: Process | None = None
    try:
        producer = producer_start()
        # stop_dst=False: on a stall or cancel only the producer is killed here; restic is then
        # interrupted by _abort with its stdin still open, so it never commits.
        moved = relay(producer, proc, what=what, cancel=cancel, stall=stall, timeout=timeout, check=check,
                      close_dst=False, stop_dst=False)
        if moved.consumer_quit:
            # restic died: stop the producer; report restic's own error.
            producer.kill()
            code = proc.wait(30)
            raise watch.error() if watch.gave_up_after is not None else restic.error(code, proc.stderr_tail(),
                                                                                    ["backup"])
        code = producer.wait(60)
        _refuse_incomplete(moved, producer, code, what, check)
        # The gate: only now may restic see EOF and commit.
        assert proc.stdin is not None
        proc.stdin.close()
        rcode = proc.wait(3600)
        reader.join(30)
        summary = reader.summary or {}
        snap = summary.get("snapshot_id")
        # Given up on after the snapshot was saved (stuck removing its lock): the stream is committed.
        if rcode != 0 and not (watch.gave_up_after is not None and snap):
            raise watch.error() if watch.gave_up_after is not None else restic.error(rcode, proc.stderr_tail(),
                                                                                    ["backup"])
        if not snap:
            raise CommandError(proc.argv, rcode, "restic finished without reporting a snapshot id", what="restic backup")
        return StreamResult(filename, snap, moved.copied, int(summary.get("data_added", 0)), time.monotonic() - started)
    except BaseException:
        _abort(restic, proc, producer, tags)
        raise
    finally:
        watch.close()
        pw.close()


def _refuse_incomplete(moved: RelayResult, producer: Process, code: int, what: str,
                       check: StreamCheck | None) -> None:
    """Raise unless the stream is whole: the relay ran to EOF, the producer exited 0 with at
    least one byte, and the stream check (if any) is satisfied."""
    if moved.stopped == "cancelled":
        raise Cancelled(f"{what}: cancelled; the partial stream was not kept")
    if moved.stopped in ("stalled", "timeout"):
        why = ("no data arrived for too long (the dump stalled)" if moved.stopped == "stalled"
               else "it ran longer than its time limit")
        raise ProducerFailed(producer.argv, None, f"{what} stopped: {why}", what=what,
                             hint="no snapshot was kept for this stream; see the source's stall_timeout / "
                                  "timeout settings, and why the dump hangs (locks, a dead server)")
    if code != 0:
        raise ProducerFailed(producer.argv, code, producer.stderr_tail(), what=what,
                             hint="no snapshot was kept for this stream; fix the cause and run again")
    if moved.copied == 0:
        raise ProducerFailed(producer.argv, code, "the dump was empty (0 bytes)", what=what,
                             hint="an empty dump is never a valid backup; check the source")
    if check is not None:
        try:
            check.finish()
        except DrtoolError as exc:
            raise ProducerFailed(producer.argv, code, f"the dump exited 0 but is not complete: {exc.message}",
                                 what=what, hint="no snapshot was kept for this stream; the dump was cut short "
                                                 "(disk, network or a killed server process)") from None


def _abort(restic: Restic, proc: Process, producer: Process | None, tags: Sequence[str]) -> None:
    """Stop everything without letting restic commit, then make sure nothing was committed."""
    if producer is not None and producer.poll() is None:
        producer.kill()
        try:
            producer.wait(30)
        except Exception:  # noqa: BLE001
            pass
    # SIGINT while stdin is still open: restic runs its cleanup (removes its lock) and exits
    # 130 without saving a snapshot.
    stop_process(proc, grace=_cleanup_grace(restic))
    try:
        leftovers = restic.snapshots(tags=list(tags))
        if leftovers:
            log.warning("removing %d snapshot(s) of an aborted stream", len(leftovers))
            restic.forget_ids([s.id for s in leftovers])
    except DrtoolError as exc:
        # The next backup lists such snapshots as debris (the caller's rollback records them).
        log.warning("could not verify that the aborted stream left no snapshot: %s", exc.message.splitlines()[0])


def _cleanup_grace(restic: Restic) -> float:
    """How long an interrupted restic may take to remove its lock. Against a storage this run
    already gave up on it cannot (it would retry for the whole grace): the lock it leaves is
    stale, and the next run's `restic unlock` removes it."""
    return 2.0 if restic.storage_down else 20.0


def _why_stop(cancel: threading.Event | None, started: float, last_change: float, stall: float | None,
              timeout: float | None) -> str | None:
    now = time.monotonic()
    if cancel is not None and cancel.is_set():
        return "cancelled"
    if timeout and now - started > timeout:
        return f"it ran longer than its time limit ({timeout:.0f}s)"
    if stall and now - last_change > stall:
        return f"restic read no new file or byte for {stall:.0f}s (stalled)"
    return None


def _stop_files_backup(restic: Restic, proc: Process, reader: JsonLineReader) -> None:
    stop_process(proc, grace=20)
    reader.join(5)
    # restic may have saved the snapshot just before the interrupt arrived: a stopped run
    # must leave nothing behind.
    saved = (reader.summary or {}).get("snapshot_id")
    if saved:
        restic.forget_ids([saved])


class PendingSnapshot:
    """A `restic backup --stdin` started before its data exists (the fingerprint of a dump).

    restic opens the repository, derives the key and loads the index while the dump runs
    (half a second of a backup's fixed cost), then waits on its stdin. `commit(data)` writes
    the bytes and closes stdin: the gate opens, restic saves the snapshot. `abort()`
    interrupts it with stdin still open: nothing is committed, as for a failed stream.
    Watched like a stream's restic: a storage that dies before the commit is given up on after
    wait_unavailable (restic alone would retry the commit for minutes)."""

    def __init__(self, restic: Restic, *, filename: str, tags: Sequence[str], host: str) -> None:
        self.restic = restic
        self.tags = list(tags)
        self._proc, self._pw = restic.start(stdin_backup_args(filename, tags, host), stdin=True)
        self._reader = JsonLineReader(self._proc, None)
        self._watch = restic.watch_retries(self._proc)
        self._done = False

    def commit(self, data: bytes) -> str:
        assert self._proc.stdin is not None and not self._done
        self._done = True
        try:
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.close()           # the gate
            except (BrokenPipeError, OSError):
                pass                               # restic died early: its exit status says why
            code = self._proc.wait(600)
            self._reader.join(30)
        finally:
            self._close()
        snap = (self._reader.summary or {}).get("snapshot_id")
        if self._watch.gave_up_after is not None and not snap:
            raise self._watch.error()
        if code != 0 and self._watch.gave_up_after is None:    # given up on after saving: committed
            raise self.restic.error(code, self._proc.stderr_tail(), ["backup"])
        if not snap:
            raise CommandError(self._proc.argv, code, "restic did not report a snapshot id", what="restic backup")
        return snap

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            stop_process(self._proc, grace=_cleanup_grace(self.restic))   # SIGINT, stdin open: nothing saved
        finally:
            self._close()

    def _close(self) -> None:
        self._watch.close()
        self._pw.close()


def backup_bytes(restic: Restic, data: bytes, *, filename: str, tags: Sequence[str], host: str) -> str:
    """Store a small blob (fingerprint, config bundle) as its own snapshot; returns the id."""
    result = restic.run(stdin_backup_args(filename, tags, host), input=data, timeout=600)
    snapshot_id = summary_snapshot_id(result.text)
    if not snapshot_id:
        raise CommandError(result.argv, 0, "restic did not report a snapshot id", what="restic backup")
    return snapshot_id


def backup_paths(
    restic: Restic,
    paths: Sequence[str],
    *,
    excludes: Sequence[str],
    one_file_system: bool,
    tags: Sequence[str],
    host: str,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    stall: float | None = DEFAULT_STALL_S,
    timeout: float | None = DEFAULT_STREAM_TIMEOUT_S,
) -> tuple[str, dict[str, Any]]:
    """`restic backup PATHS`; returns (snapshot id, summary). Exit 3 (some files unreadable) fails.

    Stopped (nothing committed) when cancelled, when restic read no new file or byte for `stall`
    seconds (a hung NFS mount), or after `timeout` seconds in all."""
    args = backup_args(tags, host)
    for pattern in excludes:
        args += ["--exclude", pattern]
    if one_file_system:
        args.append("--one-file-system")
    args += ["--", *paths]
    proc, pw = restic.start(args)
    reader = JsonLineReader(proc, on_progress)
    started = time.monotonic()
    watch = restic.watch_retries(proc)
    try:
        while True:
            try:
                code = proc.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                why = _why_stop(cancel, started, reader.last_change, stall, timeout)
                if why is not None:
                    _stop_files_backup(restic, proc, reader)
                    if why == "cancelled":
                        raise Cancelled("files backup cancelled; restic was interrupted before committing") from None
                    raise SourceError(f"files backup stopped: {why}; nothing was committed",
                                      hint="see the source's stall_timeout / timeout, and what blocks reading "
                                           "the files (a hung network file system?)") from None
        reader.join(30)
    finally:
        watch.close()
        pw.close()
    summary = reader.summary or {}
    if watch.gave_up_after is not None and not summary.get("snapshot_id"):
        raise watch.error()
    if code == 3:
        # The snapshot was written but some files could not be read: a backup with holes is a
        # failure, and the snapshot must not stand as the latest one.
        if summary.get("snapshot_id"):
            restic.forget_ids([summary["snapshot_id"]])
        detail = "; ".join(reader.errors[:5]) or proc.stderr_tail()
        raise CommandError(proc.argv, code, f"some files could not be read: {detail}", what="restic backup",
                           hint="the snapshot is incomplete; fix permissions or exclude the paths")
    if code != 0 and watch.gave_up_after is None:       # given up on after saving: committed
        raise restic.error(code, proc.stderr_tail(), ["backup"])
    snap = summary.get("snapshot_id")
    if not snap:
        raise CommandError(proc.argv, code, "restic finished without reporting a snapshot id", what="restic backup")
    vanished = [line.removesuffix(" does not exist, skipping").strip()
                for line in proc.stderr_tail().splitlines() if line.endswith("does not exist, skipping")]
    if vanished:
        # restic exits 0 when a path is missing: that snapshot has a hole and must not stand.
        restic.forget_ids([snap])
        raise SourceError(f"{', '.join(vanished)} did not exist when restic read it; the snapshot was removed",
                          hint="a path of the files source is missing: fix the policy or the file system")
    return snap, summary


