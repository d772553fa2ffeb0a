"""Use case: the second (and third) copy of 3-2-1-1-0: a backup's complete snapshot set copied
into each repository of the policy's `copies:`, with that repository's own password and
credentials (`restic copy`, drtool.engine.restic_copy).

    copy_backup(settings, policy, handle, dest_name, backup) -> RunRecord     (kind "copy")

One recorded run per copy (local catalog, signed record beside the policy's repository,
notifications: a copy that fails is a `copy_failed` alert, never a silent gap). What is
copied: every snapshot of the backup run (streams, fingerprints, files) and this host's
newest configuration bundle, so the copy alone recovers. Verified afterwards in the copy
itself: every source has the run's complete set (a database source's fingerprint.json is
there), and the bundle is there.
"""

from __future__ import annotations

from typing import Any

from drtool.actions.common import RepoHandle, open_repo, preflight_once, restic_host
from drtool.actions.lifecycle import EventFn, RunLifecycle
from drtool.actions.select import snapshot_sets
from drtool.catalog import RunRecord
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import DrtoolError, RepositoryError


class CopyIncomplete(RepositoryError):
    """restic copy ended, but the copy lacks part of the backup's set."""


class CopyFailed(RepositoryError):
    """The copy into one repository failed; the message names it (the exit code is the cause's)."""

    @classmethod
    def wrap(cls, dest_name: str, url: str, exc: DrtoolError) -> "CopyFailed":
        err = cls(f"copy to repository {dest_name} ({url}) failed: {exc.message}", hint=exc.hint)
        err.exit_code, err.transient = exc.exit_code, exc.transient
        return err


def copy_backup(settings: Settings, policy: Policy, handle: RepoHandle, dest_name: str, backup: RunRecord, *,
                trigger: str = "manual", emit: EventFn | None = None) -> RunRecord:
    """Copy the backup run's snapshots (and the newest configuration bundle) into `dest_name`."""
    with RunLifecycle(settings, "copy", policy.name, trigger=trigger, emit=emit) as lc:
        lc.handle = handle                   # the record lives beside the policy's repository
        run = lc.record
        url = settings.config.repositories[dest_name].url
        run.details.update({"repository": dest_name, "url": url, "from": handle.name, "backup_run": backup.id})
        try:
            _copy(settings, policy, handle, open_repo(settings, dest_name), backup, run, emit)
        except DrtoolError as exc:
            raise CopyFailed.wrap(dest_name, url, exc) from exc
    return lc.record


def _copy(settings: Settings, policy: Policy, handle: RepoHandle, dest: RepoHandle, backup: RunRecord,
          run: RunRecord, emit: EventFn | None) -> None:
    from drtool.engine.restic_copy import copy_snapshots

    ids = list(backup.snapshots) + _bundle_ids(handle, backup, restic_host(settings))
    run.details["source_snapshots"] = len(ids)
    run.details["preflight"] = preflight_once(dest, on_event=emit)
    output = copy_snapshots(dest.restic, handle.restic.access, ids).text
    run.details["copied"] = output.count(" saved")
    run.details["verified"] = verify_copy(dest, policy, backup.id, host=restic_host(settings))
    run.snapshots = run.details["verified"]["snapshots"]


def _bundle_ids(handle: RepoHandle, backup: RunRecord, host: str) -> list[str]:
    """The configuration bundle to copy: the one this run stored, else the newest of this host."""
    stored = (backup.details.get("config_bundle") or {}).get("snapshot")
    if stored:
        return [] if stored in backup.snapshots else [stored]
    from drtool.actions.bundle import BUNDLE_TAGS

    bundles = handle.restic.snapshots(tags=list(BUNDLE_TAGS), host=host)
    return [bundles[-1].id] if bundles else []


def verify_copy(dest: RepoHandle, policy: Policy, run_id: str, *, host: str) -> dict[str, Any]:
    """Every source of the policy has run `run_id`'s complete set in `dest` (its fingerprint, for a
    database source), and `dest` has a configuration bundle of `host`. Raises CopyIncomplete."""
    from drtool.actions.bundle import BUNDLE_TAGS

    listing = dest.restic.snapshots(tags=["drtool"], host=host)
    found: dict[str, Any] = {"sources": {}, "snapshots": []}
    missing = []
    for source in policy.sources:
        mine = [s for s in listing if s.tag("policy") == policy.name and s.tag("source") == source.name]
        sets = [s for s in snapshot_sets(dest.restic, policy, source, host=host, listing=mine) if s.run_id == run_id]
        if not sets:
            missing.append(source.name)
            continue
        found["sources"][source.name] = sets[-1].to_dict()
        found["snapshots"] += sets[-1].to_dict()["snapshots"]
    bundle = [s for s in listing if all(t in s.tags for t in BUNDLE_TAGS)]
    found["config_bundle"] = bundle[-1].id if bundle else None
    if missing or not bundle:
        what = [f"no complete set of run {run_id} for {', '.join(missing)}"] if missing else []
        what += [] if bundle else ["no configuration bundle"]
        raise CopyIncomplete(f"the copy in {dest.repository.url} is incomplete: {'; '.join(what)}",
                             hint="the copy's run record has restic's output; the next backup copies again")
    return found
