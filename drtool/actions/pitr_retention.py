"""Retention of WAL batches, decided together with the base backups the policy keeps (pure + one read).

    ids, report = wal_to_forget(handle, policy, host, kept_sets)     # called by maintenance._forget

The rules, per PITR source:
- every kept base backup stays recoverable: no batch holding WAL at or after the oldest
  kept base backup's start segment is forgotten;
- nothing older than the oldest kept base backup is kept: a batch whose newest segment is
  before that start segment goes;
- a batch that holds only a copy of the segment being written (no complete segment, no
  history file), when a later batch holds that segment complete or a longer copy of it,
  is superseded and goes (the newest batch always stays): between two retention runs a
  quiet server adds one such batch per wal_ship, and they would otherwise pile up;
- with no base backup kept (pitr just switched on, the first one still to come) nothing goes.
Only this host's batches are looked at, like every other snapshot retention decides about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drtool.actions.common import RepoHandle
from drtool.actions.pitr import base_backup, read_chain
from drtool.actions.wal_ship import pitr_sources
from drtool.config.models import Policy
from drtool.sources.pg_basebackup import BASE_STREAM
from drtool.sources.wal_chain import BaseBackup
from drtool.sources.wal_names import Batch


def doomed_batches(batches: Sequence[Batch], kept: Sequence[BaseBackup]) -> list[Batch]:
    """Pure: the batches retention forgets: those holding nothing a kept base backup still needs
    (see the module docstring)."""
    if not kept or not batches:
        return []
    start = min(kept, key=lambda b: b.stop_time).start_segno
    newest = max(batches, key=lambda b: (b.upto or b.time, b.time))

    def superseded(batch: Batch) -> bool:
        seg, size = batch.partial  # type: ignore[misc]
        return any(seg in other.complete or (other.partial is not None and other.partial[0] == seg
                                             and (other.partial[1], other.time) > (size, batch.time))
                   for other in batches if other is not batch)

    def needed(batch: Batch) -> bool:
        if batch is newest or batch.histories or any(s.segno >= start for s in batch.complete):
            return True
        return batch.partial is not None and batch.partial[0].segno >= start and not superseded(batch)

    return [b for b in batches if not needed(b)]


def wal_to_forget(handle: RepoHandle, policy: Policy, host: str, kept_sets: dict[str, list[Any]]) -> \
        tuple[list[str], dict[str, dict[str, int]]]:
    """Snapshot ids of WAL batches to forget, and a report line per PITR source."""
    ids: list[str] = []
    report: dict[str, dict[str, int]] = {}
    cache = handle.settings.state_dir / "pitr"
    for source in pitr_sources(policy):
        chain = read_chain(handle.restic, policy, source, host=host, cache_dir=cache)
        kept = [b for s in kept_sets.get(source.name, []) if BASE_STREAM in s.streams
                for b in [base_backup(handle.restic, s, cache)] if b is not None]
        doomed = doomed_batches(chain.batches, kept)
        ids += [b.snapshot_id for b in doomed]
        report[f"{source.name} (WAL)"] = {"kept": len(chain.batches) - len(doomed), "forgotten": len(doomed),
                                          "debris": 0}
    return ids, report
