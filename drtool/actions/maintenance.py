"""Use cases: apply retention (forget + prune) and check repository integrity.

forget applies the policy's retention in its repository and in each of its `copies:`. An
immutable repository is reached through its maintenance path, and what prune really frees
there is reported (drtool.actions.immutable_maintenance)."""

from __future__ import annotations

import threading
from datetime import timedelta

from drtool.actions.common import RepoHandle, open_repo, policy_tags, restic_host
from drtool.actions.immutable_maintenance import Freed, maintenance_handle
from drtool.actions.lifecycle import RunLifecycle
from drtool.actions.select import snapshot_sets
from drtool.catalog import RunRecord, new_run_id, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import Cancelled
from drtool.locking import PolicyLock
from drtool.retention import keep_indices

# Snapshots of a run that never wrote its fingerprint are debris of a crash;
# they are only removed once clearly older than any run that could still be going.
DEBRIS_AGE = timedelta(hours=6)
BUNDLES_KEPT = 30


def forget_policy(settings: Settings, policy: Policy, *, trigger: str = "manual", prune: bool = True,
                  dry_run: bool = False, wait: bool = True, cancel: threading.Event | None = None) -> RunRecord:
    """Apply the policy's retention to this host's sets (never another host's), then prune."""
    run_id = new_run_id("forget")
    lock = PolicyLock(settings.state_dir, policy.name, wait=wait, timeout=6 * 3600)
    lock.acquire(run_id)
    try:
        with RunLifecycle(settings, "forget", policy.name, trigger=trigger, run_id=run_id) as lc:
            lc.handle = maintenance_handle(settings, policy.repository)
            _forget(settings, policy, lc.handle, lc.record.details, prune=prune, dry_run=dry_run, cancel=cancel,
                    trigger=trigger)
            for name in policy.copies:          # the same retention in every copy
                copy = lc.record.details.setdefault("copies", {}).setdefault(name, {})
                _forget(settings, policy, maintenance_handle(settings, name), copy, prune=prune, dry_run=dry_run,
                        cancel=cancel, trigger=trigger)
        return lc.record
    finally:
        lock.release()


def _forget(settings: Settings, policy: Policy, handle: RepoHandle, details: dict, *, prune: bool, dry_run: bool,
            cancel: threading.Event | None, trigger: str) -> None:
    host = restic_host(settings)        # never another host's snapshots, whatever the tags say
    details["host"] = host
    now = utcnow()
    forget_ids: list[str] = []
    report: dict[str, dict[str, int]] = {}
    kept_sets: dict[str, list] = {}
    for source in policy.sources:
        retention = source.retention or policy.retention
        listing = handle.restic.snapshots(tags=policy_tags(policy, source.name), host=host)
        sets = snapshot_sets(handle.restic, policy, source, host=host, listing=listing)
        kept = keep_indices([s.time for s in sets], retention, now)
        drop = [s for i, s in enumerate(sets) if i not in kept]
        kept_sets[source.name] = [s for i, s in enumerate(sets) if i in kept]
        complete_runs = {s.run_id for s in sets}
        debris = [snap for snap in listing
                  if snap.tag("run") not in complete_runs and source.kind != "files"
                  and now - snap.time > DEBRIS_AGE]
        for s in drop:
            forget_ids += [x.id for x in ([s.files] if s.files else s.streams.values())]
        forget_ids += [d.id for d in debris]
        report[source.name] = {"kept": len(kept), "forgotten": len(drop), "debris": len(debris)}
    wal_ids, wal_report = _wal_retention(handle, policy, host, kept_sets)
    forget_ids += wal_ids
    report.update(wal_report)
    bundles = _old_bundles(handle, host)
    forget_ids += bundles
    report["(configuration bundles)"] = {"kept": BUNDLES_KEPT, "forgotten": len(bundles), "debris": 0}
    details["sources"] = report
    details["forgotten_ids"] = len(forget_ids)
    details["dry_run"] = dry_run
    if dry_run:
        return
    _stop_if(cancel)
    freed = Freed.start(handle)            # Object Lock: nothing is freed at once; say what happened
    handle.restic.forget_ids(forget_ids)
    if prune and forget_ids:
        _stop_if(cancel)
        handle.restic.run(["prune"], timeout=12 * 3600, cancel=cancel)
    freed.finish(details, policy=policy.name, trigger=trigger)


def check_repository(settings: Settings, policy: Policy, *, read_data_subset: str | None = None,
                     trigger: str = "manual", cancel: threading.Event | None = None) -> RunRecord:
    with RunLifecycle(settings, "check", policy.name, trigger=trigger) as lc:
        lc.record.details["read_data_subset"] = read_data_subset
        lc.handle = handle = open_repo(settings, policy.repository)
        output = handle.restic.check(read_data_subset, cancel=cancel)
        lc.record.details["output_tail"] = output[-1500:]
    return lc.record


def _wal_retention(handle: RepoHandle, policy: Policy, host: str, kept_sets: dict[str, list]) -> \
        tuple[list[str], dict[str, dict[str, int]]]:
    """PITR sources: WAL batches go with the base backups they no longer serve (drtool/actions/pitr_retention.py)."""
    from drtool.actions.wal_ship import pitr_sources
    if not pitr_sources(policy):
        return [], {}
    from drtool.actions.pitr_retention import wal_to_forget
    return wal_to_forget(handle, policy, host, kept_sets)


def _old_bundles(handle, host: str) -> list[str]:  # noqa: ANN001
    """This host's configuration bundles beyond the newest BUNDLES_KEPT (one per configuration change)."""
    from drtool.actions.bundle import BUNDLE_TAGS

    snaps = handle.restic.snapshots(tags=list(BUNDLE_TAGS), host=host)
    return [s.id for s in snaps[:-BUNDLES_KEPT]] if len(snaps) > BUNDLES_KEPT else []


def _stop_if(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled before the repository was changed")
