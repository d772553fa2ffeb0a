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
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from drtool.engine.restic import JsonLineReader, ProgressFn, Restic
from drtool.errors import Cancelled, CommandError, DrtoolError, ProducerFailed

__all__ = ["Cancelled", "stream_to_restic", "backup_paths", "backup_bytes"]
from drtool.execute import Process, stop_process

log = logging.getLogger(__name__)

CHUNK = 1 << 20


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
) -> StreamResult:
    """Back up one producer's stdout as `filename`; commit only if the producer succeeded."""
    started = time.monotonic()
    proc, pw = restic.start(stdin_backup_args(filename, tags, host), stdin=True)
    reader = JsonLineReader(proc, on_progress)
    producer: Process | None = None
    try:
        producer = producer_start()
        relayed = _relay(producer, proc, cancel)
        code = producer.wait(60)
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{what}: cancelled; the partial stream was not kept")
        if code != 0:
            raise ProducerFailed(producer.argv, code, producer.stderr_tail(), what=what,
                                 hint="no snapshot was kept for this stream; fix the cause and run again")
        if relayed == 0:
            raise ProducerFailed(producer.argv, code, "the dump was empty (0 bytes)", what=what,
                                 hint="an empty dump is never a valid backup; check the source")
        # The gate: only now may restic see EOF and commit.
        assert proc.stdin is not None
        proc.stdin.close()
        rcode = proc.wait(3600)
        reader.join(30)
        if rcode != 0:
            raise restic._error(rcode, proc.stderr_tail(), ["backup"])
        summary = reader.summary or {}
        snap = summary.get("snapshot_id")
        if not snap:
            raise CommandError(proc.argv, rcode, "restic finished without reporting a snapshot id", what="restic backup")
        return StreamResult(filename, snap, relayed, int(summary.get("data_added", 0)), time.monotonic() - started)
    except BaseException:
        _abort(restic, proc, producer, tags)
        raise
    finally:
        pw.close()


def _relay(producer: Process, restic_proc: Process, cancel: threading.Event | None) -> int:
    """Copy producer stdout to restic stdin; returns bytes copied. Never closes restic's stdin."""
    src = producer.stdout
    dst = restic_proc.stdin
    assert dst is not None
    splice = _splice_fds(src, dst)
    read = getattr(src, "read1", src.read)
    total = 0
    while True:
        if cancel is not None and cancel.is_set():
            producer.kill()
            break
        try:
            if splice:
                # pipe -> pipe inside the kernel: no copies through Python for local dumps.
                moved = os.splice(splice[0], splice[1], CHUNK)
            else:
                chunk = read(CHUNK)
                moved = len(chunk)
                if moved:
                    dst.write(chunk)
        except BrokenPipeError:
            # restic died: stop the producer; the caller reports restic's error.
            producer.kill()
            raise CommandError(restic_proc.argv, restic_proc.wait(30), restic_proc.stderr_tail(),
                               what="restic backup") from None
        if not moved:
            break
        total += moved
    return total


def _splice_fds(src: object, dst: object) -> tuple[int, int] | None:
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
    stop_process(proc, grace=20)
    try:
        leftovers = restic.snapshots(tags=list(tags))
        if leftovers:
            log.warning("removing %d snapshot(s) of an aborted stream", len(leftovers))
            restic.forget_ids([s.id for s in leftovers])
    except DrtoolError:
        log.warning("could not verify that the aborted stream left no snapshot", exc_info=True)


def backup_bytes(restic: Restic, data: bytes, *, filename: str, tags: Sequence[str], host: str) -> str:
    """Store a small blob (fingerprint, config bundle) as its own snapshot; returns the id."""
    result = restic.run(stdin_backup_args(filename, tags, host), input=data, timeout=600)
    for line in reversed(result.text.splitlines()):
        if '"summary"' in line:
            import json
            return json.loads(line)["snapshot_id"]
    raise CommandError(result.argv, 0, "restic did not report a snapshot id", what="restic backup")


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
) -> tuple[str, dict[str, Any]]:
    """`restic backup PATHS`; returns (snapshot id, summary). Exit 3 (some files unreadable) fails."""
    args = backup_args(tags, host)
    for pattern in excludes:
        args += ["--exclude", pattern]
    if one_file_system:
        args.append("--one-file-system")
    args += ["--", *paths]
    proc, pw = restic.start(args)
    reader = JsonLineReader(proc, on_progress)
    try:
        while True:
            try:
                code = proc.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    stop_process(proc, grace=20)
                    reader.join(5)
                    # restic may have saved the snapshot just before the interrupt arrived:
                    # a cancelled run must leave nothing behind.
                    saved = (reader.summary or {}).get("snapshot_id")
                    if saved:
                        restic.forget_ids([saved])
                    raise Cancelled("files backup cancelled; restic was interrupted before committing") from None
        reader.join(30)
    finally:
        pw.close()
    summary = reader.summary or {}
    if code == 3:
        # The snapshot was written but some files could not be read: a backup with holes is a
        # failure, and the snapshot must not stand as the latest one.
        if summary.get("snapshot_id"):
            restic.forget_ids([summary["snapshot_id"]])
        detail = "; ".join(reader.errors[:5]) or proc.stderr_tail()
        raise CommandError(proc.argv, code, f"some files could not be read: {detail}", what="restic backup",
                           hint="the snapshot is incomplete; fix permissions or exclude the paths")
    if code != 0:
        raise restic._error(code, proc.stderr_tail(), ["backup"])
    snap = summary.get("snapshot_id")
    if not snap:
        raise CommandError(proc.argv, code, "restic finished without reporting a snapshot id", what="restic backup")
    return snap, summary


