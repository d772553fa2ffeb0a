"""Use case: take a policy's snapshots (files and database dumps) into its repository.

    backup_policy(settings, policy) -> RunRecord

Under the policy lock and inside the run lifecycle (drtool/actions/lifecycle.py):
reach the host, check the repository the first time this machine uses it (later
runs need no probe: restic opens the repository before it reads a byte of its
stdin, so a wrong password stops each dump within its first 64 KiB), remove
the debris of earlier runs, run the before-hooks, then back up every source. A
source is all or nothing. A source that failed for a transient cause (storage
throttled or unreachable, a lock) is tried again, up to `retries` times, and only
the failed sources run again: one run, several attempts, all in its record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

from drtool.actions.common import RepoHandle, learn_key_hint, open_repo, policy_tags, preflight_once, restic_host
from drtool.actions.debris import clean_debris, record_rollback_debris
from drtool.actions.follow_ups import after_backup
from drtool.actions.hooks import run_hooks
from drtool.actions.machine_key import ensure_machine_key
from drtool.actions.lifecycle import RunLifecycle
from drtool.catalog import RunRecord, new_run_id, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Policy, Source
from drtool.engine.pipeline import Cancelled, PendingSnapshot, backup_paths, stream_to_restic
from drtool.errors import DrtoolError, SourceError
from drtool.locking import PolicyLock
from drtool.tags import FINGERPRINT_STREAM
from drtool.events import EventFn, Notice, Progress, SourceDone, SourceFailed, SourceStarted, StreamStarted, ignore

log = logging.getLogger(__name__)



class BackupFailed(DrtoolError):
    """Some sources of the run failed; the others' snapshots stand on their own."""


def plan(settings: Settings, policy: Policy) -> dict[str, Any]:
    """What a backup would do (for --dry-run): touches nothing."""
    repo = settings.config.repositories[policy.repository]
    return {
        "policy": policy.name,
        "repository": repo.url,
        "host": policy.host or "local",
        "sources": [_describe_source(s) for s in policy.sources],
        "hooks": {"before": len(policy.hooks.before), "after": len(policy.hooks.after),
                  "on_failure": len(policy.hooks.on_failure)},
        "retries": policy.retries,
    }


def _describe_source(source: Source) -> dict[str, Any]:
    spec = source.spec
    if source.kind == "files":
        return {"name": source.name, "kind": "files", "paths": spec.paths, "exclude": spec.exclude}
    if source.kind == "sqlite":
        return {"name": source.name, "kind": "sqlite", "path": spec.path}
    return {"name": source.name, "kind": source.kind, "databases": spec.database_names}


def backup_policy(settings: Settings, policy: Policy, *, dry_run: bool = False, wait: bool = False,
                  trigger: str = "manual", on_event: EventFn | None = None,
                  cancel: threading.Event | None = None) -> RunRecord:
    emit = on_event or ignore
    run_id = new_run_id("backup")
    if dry_run:
        run = RunRecord(run_id, policy.name, "backup", "running", utcnow(), trigger=trigger)
        run.details["plan"] = plan(settings, policy)
        return run.finish("success")
    lock = PolicyLock(settings.state_dir, policy.name, wait=wait)
    lock.acquire(run_id)
    try:
        with RunLifecycle(settings, "backup", policy.name, trigger=trigger, emit=emit, run_id=run_id) as lc:
            lc.on_failure.append(lambda run: _on_failure_hooks(policy, run))
            # Secrets resolve here, inside the run: a reference that does not resolve tonight is a
            # recorded, alerted failure (exit 2: configuration), not a silent unit failure.
            lc.handle = open_repo(settings, policy.repository)
            _run(settings, policy, lc.handle, lc, emit, cancel)
        return lc.record
    finally:
        lock.release()


def _run(settings: Settings, policy: Policy, handle: RepoHandle, lc: RunLifecycle, emit: EventFn,
         cancel: threading.Event | None) -> None:
    run = lc.record
    # The targets travel with the signed record: a fleet view reading the bucket has no policy file.
    run.details["targets"] = {"rpo_s": policy.targets.rpo, "rto_s": policy.targets.rto}
    _reach_host(settings, policy)
    run.details["preflight"] = preflight_once(handle, on_event=emit)
    # Before the first stream, so every restic process of this run (the first one too) opens
    # the repository without its ~0.5 s key derivation. Once per repository and machine.
    made = ensure_machine_key(handle, restic_host(settings))
    if made:
        run.details["machine_key"] = made
    if lc.catalog is not None and not handle.repository.append_only:   # append-only: forget removes debris
        removed = clean_debris(lc.catalog, handle, restic_host(settings), emit)
        if removed:
            run.details["debris_removed"] = removed
    run_hooks("before", policy.hooks.before, timeout=policy.hooks.timeout, env=_hook_env(policy, run))
    failures = _with_retries(settings, policy, handle, lc, emit, cancel)
    if not failures:   # a failed run adds nothing to the repository but its record
        failures = _store_bundle(settings, handle, run, emit)
    if failures:
        done = [s.name for s in policy.sources if s.name not in failures]
        raise BackupFailed(f"{len(failures)} of {len(policy.sources)} sources failed: "
                           + "; ".join(f"{name}: {_one_line(exc)}" for name, exc in failures.items())
                           + (f" (complete: {', '.join(done)})" if done else ""))
    run_hooks("after", policy.hooks.after, timeout=policy.hooks.timeout, env=_hook_env(policy, run))
    learn_key_hint(handle)          # once per repository and machine; a no-op afterwards
    after_backup(settings, policy, handle, lc, emit, cancel)     # lock extension, copies: runs of their own


def _with_retries(settings: Settings, policy: Policy, handle: RepoHandle, lc: RunLifecycle, emit: EventFn,
                  cancel: threading.Event | None) -> dict[str, DrtoolError]:
    """Back up every source; retry the ones that failed for a transient cause. Returns the failures."""
    run = lc.record
    pending = list(policy.sources)
    attempts: list[dict[str, Any]] = []
    run.details["attempts"] = attempts
    while True:
        failures = _backup_sources(settings, policy, handle, run, pending, emit, cancel)
        attempts.append({"attempt": len(attempts) + 1, "sources": [s.name for s in pending],
                         "failed": {name: _one_line(exc) for name, exc in failures.items()}})
        retry = failures and all(exc.transient for exc in failures.values()) and len(attempts) <= policy.retries
        if not retry:
            return failures
        emit(Notice(f"{', '.join(failures)} failed for a transient cause; trying again in {policy.retry_wait:.0f}s "
                    f"(attempt {len(attempts) + 1} of {policy.retries + 1})"))
        if (cancel or threading.Event()).wait(policy.retry_wait):
            raise Cancelled("cancelled while waiting to retry")
        pending = [s for s in pending if s.name in failures]


def _backup_sources(settings: Settings, policy: Policy, handle: RepoHandle, run: RunRecord, sources: list[Source],
                    emit: EventFn, cancel: threading.Event | None) -> dict[str, DrtoolError]:
    failures: dict[str, DrtoolError] = {}
    host = restic_host(settings)
    results: dict[str, Any] = run.details.setdefault("sources", {})
    for source in sources:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before all sources were backed up")
        emit(SourceStarted(source.name, source.kind))
        try:
            if source.kind == "files":
                results[source.name] = _backup_files(settings, policy, source, handle, run, host, emit, cancel)
            else:
                results[source.name] = _backup_database(settings, policy, source, handle, run, host, emit, cancel)
            done = results[source.name]
            emit(SourceDone(source.name, done.get("bytes_added"), list(done.get("snapshots", []))))
        except Cancelled:
            raise
        except DrtoolError as exc:
            results[source.name] = {"status": "failed", "error": str(exc), "transient": exc.transient}
            failures[source.name] = exc
            emit(SourceFailed(source.name, str(exc)))
    return failures


def _one_line(exc: DrtoolError) -> str:
    # A CommandError reads "pg_dump exited with code 0:" and then the cause on the next line:
    # the summary keeps both, or it would say nothing.
    lines = exc.message.splitlines()
    head = lines[0]
    if head.endswith(":") and len(lines) > 1:
        head += " " + lines[1].strip()
    return head + (f" ({exc.hint})" if exc.hint else "")


def _store_bundle(settings: Settings, handle: RepoHandle, run: RunRecord, emit: EventFn) -> dict[str, DrtoolError]:
    """Keep the configuration (drtool.yaml, policies, playbooks; secrets by reference) in the
    repository too, so recovery needs no file from the lost server."""
    marker, digest = _bundle_marker(settings, handle)
    if marker.exists() and marker.read_text() == digest:
        run.details["config_bundle"] = {"unchanged": True}   # the stored one is still current
        return {}
    from drtool.actions.bundle import store_config_bundle   # tarfile & co: only when storing one

    try:
        run.details["config_bundle"] = store_config_bundle(settings, handle, host=restic_host(settings),
                                                           run_id=run.id)
    except DrtoolError as exc:
        emit(Notice(f"configuration bundle not stored: {exc.message}"))
        return {"config bundle": exc}
    marker.write_text(digest)
    return {}


def _bundle_marker(settings: Settings, handle: RepoHandle):  # noqa: ANN202
    """(marker file, digest of the configuration as loaded) for this repository."""
    import hashlib
    from pathlib import Path

    from drtool.actions.common import state_path

    h = hashlib.sha256(handle.repository.url.encode())
    files = [settings.path] + sorted(Path(x.path) for x in [*settings.policies.values(), *settings.playbooks.values()]
                                     if x.path)
    for path in files:
        h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    key = hashlib.sha256(handle.repository.url.encode()).hexdigest()[:16]
    return state_path(settings, "repos", f"{key}.bundle"), h.hexdigest()


def _backup_files(settings: Settings, policy: Policy, source: Source, handle: RepoHandle, run: RunRecord,
                  host: str, emit: EventFn, cancel: threading.Event | None) -> dict[str, Any]:
    spec = source.spec
    if policy.host:
        from drtool.sources.remote_files import backup_remote_files
        return backup_remote_files(settings, policy, source, handle.restic, run, host, emit, cancel)
    missing = [p for p in spec.paths if not os.path.lexists(p)]
    if missing:
        # restic only warns "does not exist, skipping" and exits 0: a backup with a hole.
        raise SourceError(f"files source {source.name!r}: {', '.join(missing)} does not exist; nothing was backed up",
                          hint="fix the path in the policy, or remove it if the data moved")
    tags = policy_tags(policy, source.name, run_id=run.id)
    snap, summary = backup_paths(
        handle.restic, spec.paths, excludes=spec.exclude, one_file_system=spec.one_file_system,
        tags=tags, host=host, cancel=cancel, stall=source.stall_timeout, timeout=source.timeout,
        on_progress=lambda obj: emit(Progress(source.name, obj)),
    )
    run.snapshots.append(snap)
    added = int(summary.get("data_added", 0))
    run.bytes_added += added
    run.files_new += int(summary.get("files_new", 0))
    return {"status": "success", "snapshots": [snap], "bytes_added": added,
            "files": int(summary.get("total_files_processed", 0)),
            "bytes": int(summary.get("total_bytes_processed", 0))}


def _backup_database(settings: Settings, policy: Policy, source: Source, handle: RepoHandle, run: RunRecord,
                     host: str, emit: EventFn, cancel: threading.Event | None) -> dict[str, Any]:
    from drtool.sources import database_source

    runner = _runner(settings, policy)
    db = database_source(source, runner)
    snapshots: list[str] = []
    streams: dict[str, Any] = {}
    # The fingerprint's restic starts now and waits for its data: its key derivation and index
    # load overlap the dump instead of following it.
    pending = PendingSnapshot(handle.restic, filename=FINGERPRINT_STREAM, host=host,
                              tags=policy_tags(policy, source.name, run_id=run.id, stream=FINGERPRINT_STREAM))
    # A source is all or nothing: whatever fails (a dump, the fingerprint, closing the
    # consistent session), the streams this run already committed are forgotten.
    try:
        # closing(): an SSH runner holds a connection; a daemon would otherwise leak one per run.
        with closing(runner), db.open_dump() as session:
            def one(stream):  # noqa: ANN001, ANN202
                emit(StreamStarted(source.name, stream.name))
                return stream_to_restic(
                    handle.restic, stream.start, filename=stream.name,
                    tags=policy_tags(policy, source.name, run_id=run.id, stream=stream.name),
                    host=host, what=f"{source.kind} dump of {source.name}/{stream.name}", cancel=cancel,
                    check=stream.check() if stream.check else None,
                    stall=source.stall_timeout, timeout=source.timeout,
                    on_progress=lambda obj, s=stream.name: emit(Progress(source.name, obj, s)),
                )

            results = _in_pairs(one, session.streams)
            for stream, result in zip(session.streams, results, strict=True):
                snapshots.append(result.snapshot_id)
                streams[stream.name] = result.to_dict()
                run.bytes_added += result.data_added
            # The fingerprint goes last: its presence marks the source's set of streams as complete,
            # and it travels inside the repository so a drill on a fresh machine can verify against it.
            fingerprint = {**session.fingerprint, "run": run.id, "source": source.name,
                           "streams": sorted(streams),
                           "stream_bytes": {name: r["bytes_in"] for name, r in streams.items()}}
            fp_snap = pending.commit(json.dumps(fingerprint, sort_keys=True).encode())
    except BaseException:
        pending.abort()
        _roll_back(settings, handle, policy_tags(policy, source.name, run_id=run.id), run.id)
        raise
    snapshots.append(fp_snap)
    run.snapshots.extend(snapshots)
    return {"status": "success", "snapshots": snapshots, "streams": streams, "fingerprint": fingerprint,
            "bytes_added": sum(s["data_added"] for s in streams.values())}


def _runner(settings: Settings, policy: Policy):  # noqa: ANN202 - a Runner
    from drtool.remote import runner_for
    return runner_for(settings, policy.host)


def _reach_host(settings: Settings, policy: Policy) -> None:
    """Connect to the policy's host first: an unknown host key must stop the run before
    anything (bucket, repository) is touched, and be reported once, not once per source."""
    if policy.host is None:
        return
    from drtool.remote import runner_for

    runner = runner_for(settings, policy.host)
    try:
        runner.connect()
    finally:
        runner.close()


def _roll_back(settings: Settings, handle: RepoHandle, tags: list[str], run_id: str) -> None:
    """A source is all or nothing: forget the streams of this run that did commit. If the storage
    cannot be reached now (it may be why the source failed), the next backup removes them."""
    if handle.repository.append_only:        # the server refuses deletes: the maintenance forget removes them
        record_rollback_debris(settings, handle, run_id, tags)
        return
    try:
        handle.restic.forget_ids([snap.id for snap in handle.restic.snapshots(tags=tags)])
    except DrtoolError as exc:
        log.warning("could not remove the committed streams of a failed source (%s); the next backup will",
                    exc.message.splitlines()[0])
        record_rollback_debris(settings, handle, run_id, tags)


def _in_pairs(fn, items):  # noqa: ANN001, ANN202
    """Run fn over items two at a time (e.g. a database dump beside the small globals dump).

    Each restic process pays a key derivation of about half a second; overlapping
    two streams hides it. Two, not more: every stream is also a dump on the server.
    If one fails, the other still finishes and commits on its own merits (the
    source's set stays incomplete without its fingerprint, so it is never used).
    """
    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stream") as pool:
        futures = [pool.submit(fn, item) for item in items]
        results, first_error = [], None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after all finished
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def _hook_env(policy: Policy, run: RunRecord) -> dict[str, str]:
    return {"DRTOOL_POLICY": policy.name, "DRTOOL_RUN_ID": run.id, "DRTOOL_RUN_STATUS": run.status,
            "DRTOOL_RUN_ERROR": run.error or ""}


def _on_failure_hooks(policy: Policy, run: RunRecord) -> None:
    try:
        run_hooks("on_failure", policy.hooks.on_failure, timeout=policy.hooks.timeout, env=_hook_env(policy, run))
    except DrtoolError as exc:
        run.details["on_failure_hook_error"] = str(exc)
