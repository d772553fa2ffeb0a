"""Use case: remove what earlier runs could not clean up themselves.

Two kinds of debris are listed in the catalog (drtool/catalog.py `debris` table):
- `interrupted`: the run's drtool died (SIGKILL, OOM, power). Its children died with
  it, so no stream it gated was committed by design; if restic still managed to
  commit one (the instant between drtool's death and the kernel's SIGKILL), that
  snapshot belongs to a set without fingerprint.json, which no drtool command and no
  runbook ever restores. It is removed here anyway, with every incomplete set and
  every tar stream of that run. Complete sets (fingerprint present) and tree
  snapshots of files sources (restic commits those whole or not at all) are kept.
- `rollback`: a failed source's committed streams could not be forgotten (the storage
  was down, which may be why the source failed).

The next backup of the repository (under its policy lock) removes both, then the
entry, and with them the stale locks the dead restic processes left (`restic unlock`,
which keeps the locks of live processes and of other hosts).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from drtool.actions.common import RepoHandle
from drtool.actions.unlock import remove_stale_locks
from drtool.catalog import Catalog
from drtool.config.loader import Settings
from drtool.engine.restic import Snapshot
from drtool.errors import DrtoolError, StateError
from drtool.tags import FINGERPRINT_STREAM
from drtool.events import EventFn, Notice

log = logging.getLogger(__name__)


def record_rollback_debris(settings: Settings, handle: RepoHandle, run_id: str, tags: list[str]) -> None:
    try:
        Catalog(settings.state_dir).add_debris(run_id, handle.repository.url, tags, "rollback")
    except StateError as exc:
        log.warning("cannot note the streams of run %s for removal: %s", run_id, exc.message)


def clean_debris(catalog: Catalog, handle: RepoHandle, host: str,
                 emit: EventFn | None = None) -> list[dict[str, Any]]:
    """Forget the debris of this repository; returns what was removed (run, reason, snapshot ids)."""
    removed = []
    entries = catalog.debris(handle.repository.url)
    if entries:      # a dead drtool's restic, or one stopped because the storage was down, left its lock
        _remove_dead_locks(handle)
    for entry in entries:
        try:
            listing = handle.restic.snapshots(tags=entry["tags"], host=host)
            doomed = debris_snapshots(listing, rollback=entry["reason"] == "rollback")
            handle.restic.forget_ids([s.id for s in doomed])
            catalog.clear_debris(entry["run_id"], entry["repository"], entry["tags"])
        except DrtoolError as exc:
            log.warning("debris of run %s not removed yet: %s", entry["run_id"], exc.message.splitlines()[0])
            continue
        if doomed:
            removed.append({"run": entry["run_id"], "reason": entry["reason"], "snapshots": [s.id for s in doomed]})
            if emit:
                emit(Notice(f"removed {len(doomed)} snapshot(s) left by {entry['reason']} run {entry['run_id']}"))
    return removed


def _remove_dead_locks(handle: RepoHandle) -> None:
    """A dead drtool's restic died by SIGKILL and left its lock (so did a restic given up on
    because its storage stopped answering). A backup's shared lock does not meet it, so nothing
    else would remove it, and a bare `restic prune` from the runbook would stop on it. `restic
    unlock` removes only stale locks (dead processes here, or 30 minutes old)."""
    try:
        left = remove_stale_locks(handle)
    except DrtoolError as exc:
        log.warning("stale locks of an interrupted run not removed yet: %s", exc.message.splitlines()[0])
        return
    for info in left:
        log.warning("stale lock %s (%s) is still in the repository after `restic unlock`; "
                    "`drtool unlock POLICY` shows it", info.id[:8], info.why)


def debris_snapshots(listing: list[Snapshot], *, rollback: bool) -> list[Snapshot]:
    """Pure: which snapshots of one run go. A rollback removes the run's streams (they failed);
    an interrupted run loses its incomplete sets and tar streams, and keeps what is complete."""
    by_source: dict[str | None, list[Snapshot]] = defaultdict(list)
    for snap in listing:
        by_source[snap.tag("source")].append(snap)
    doomed: list[Snapshot] = []
    for snaps in by_source.values():
        streams = [s for s in snaps if s.tag("stream")]
        if not streams:
            continue                                     # a tree snapshot: committed whole or not at all
        names = {s.tag("stream") for s in streams}
        if rollback or FINGERPRINT_STREAM not in names:
            doomed += streams
    return sorted(doomed, key=lambda s: s.time)
