"""Which snapshot set to restore: latest, by id, before a time, or random within a window.

A database source's backup is a set of restic snapshots sharing a `run=` tag
(one per stream, plus fingerprint.json written last). Only sets that carry a
fingerprint are complete; others are ignored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from drtool.actions.common import policy_tags
from drtool.config.models import Policy, Source
from drtool.engine.restic import Restic, Snapshot
from drtool.errors import DrtoolError, UsageError
from drtool.tags import FINGERPRINT_STREAM



@dataclass
class SnapshotSet:
    source: str
    run_id: str
    time: datetime                       # when the backup of this source was taken
    streams: dict[str, Snapshot] = field(default_factory=dict)   # database streams
    files: Snapshot | None = None        # files sources

    @property
    def primary(self) -> Snapshot:
        if self.files is not None:
            return self.files
        return self.streams.get(FINGERPRINT_STREAM) or next(iter(self.streams.values()))

    @property
    def host(self) -> str:
        return self.primary.hostname

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "run": self.run_id, "time": self.time.isoformat(), "host": self.host,
                "id": self.primary.id, "short_id": self.primary.short_id,
                "snapshots": sorted(s.id for s in ([self.files] if self.files else self.streams.values()))}


def snapshot_sets(restic: Restic, policy: Policy, source: Source, *, host: str | None,
                  listing: list[Snapshot] | None = None, no_lock: bool = False) -> list[SnapshotSet]:
    """Complete snapshot sets of one source taken by `host`, oldest first (from `listing` if
    already fetched).

    `host` is required, and None (every host) must be asked for explicitly: several machines
    may share one repository and policy name, and a set of another host restored, verified or
    forgotten as if it were ours is how one host's retention deletes another's backups.
    """
    if listing is not None:
        snaps = [s for s in listing if host is None or s.hostname == host]
    elif no_lock:
        snaps = restic.snapshots(tags=policy_tags(policy, source.name), host=host, no_lock=True)
    else:   # `restic` may also be a cached listing (recover) that takes tags and host only
        snaps = restic.snapshots(tags=policy_tags(policy, source.name), host=host)
    if source.kind == "files":
        return [_files_set(source.name, s) for s in snaps if s.tag("stream") is None or _is_tar(s)]
    by_run: dict[str, SnapshotSet] = {}
    for snap in snaps:
        run, stream = snap.tag("run"), snap.tag("stream")
        if not run or not stream:
            continue
        entry = by_run.setdefault(run, SnapshotSet(source.name, run, snap.time))
        entry.streams[stream] = snap
        entry.time = min(entry.time, snap.time)
    complete = [s for s in by_run.values() if FINGERPRINT_STREAM in s.streams]
    return sorted(complete, key=lambda s: s.time)


def _is_tar(snap: Snapshot) -> bool:
    return (snap.tag("stream") or "").endswith(".tar")


def _files_set(source: str, snap: Snapshot) -> SnapshotSet:
    """A tree snapshot, or a tar stream taken from a remote host without restic."""
    run = snap.tag("run") or snap.short_id
    if _is_tar(snap):
        return SnapshotSet(source, run, snap.time, streams={snap.tag("stream"): snap})
    return SnapshotSet(source, run, snap.time, files=snap)


def choose(sets: list[SnapshotSet], selector: Any, *, now: datetime | None = None,
           rng: random.Random | None = None) -> SnapshotSet:
    """Pure choice among complete sets (oldest first): latest, a run or snapshot id, the newest
    before a time, or a random one within a window (a playbook's `snapshot:`)."""
    if not sets:
        raise DrtoolError("no complete backup of this source exists in the repository",
                          hint="run `drtool backup POLICY` first")
    if selector in (None, "latest"):
        return sets[-1]
    if isinstance(selector, str):
        return _by_id(sets, selector)
    if getattr(selector, "before", None) is not None:
        return _before(sets, selector.before)
    if getattr(selector, "random_within", None) is not None:
        return _random_within(sets, selector.random_within, now or datetime.now(timezone.utc), rng)
    raise UsageError(f"unknown snapshot selector {selector!r}")


def _by_id(sets: list[SnapshotSet], wanted: str) -> SnapshotSet:
    """A run id, or a prefix (6 characters at least) of one of the set's snapshot ids."""
    for s in sets:
        ids = {s.run_id} | {snap.id for snap in ([s.files] if s.files else s.streams.values())}
        if wanted == s.run_id or (len(wanted) >= 6 and any(i.startswith(wanted) for i in ids)):
            return s
    raise UsageError(f"no complete snapshot set matches {wanted!r}", hint="list them with `drtool snapshots POLICY`")


def _before(sets: list[SnapshotSet], before: datetime) -> SnapshotSet:
    eligible = [s for s in sets if s.time < before]
    if not eligible:
        raise DrtoolError(f"no backup was taken before {before.isoformat()}")
    return eligible[-1]


def _random_within(sets: list[SnapshotSet], within: float, now: datetime,
                   rng: random.Random | None) -> SnapshotSet:
    eligible = [s for s in sets if s.time >= now - timedelta(seconds=within)]
    if not eligible:
        raise DrtoolError(f"no backup within the last {within:.0f}s to choose from")
    return (rng or random.Random()).choice(eligible)
