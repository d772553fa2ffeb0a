"""Use case: recover a policy from nothing but the recovery kit and its passphrase.

On a fresh machine (no drtool.yaml, empty state dir) this:

1. opens the kit (scrypt + AES-GCM; a wrong passphrase or altered kit stops here),
2. opens each repository with the escrow password (a revoked key stops here),
3. reads the configuration bundle from the repository and checks its signed
   manifest against the kit's public key, giving in-memory Settings,
4. lists the complete snapshot sets of every policy the kit covers,
5. checks every target before writing anything (refusal changes nothing),
6. restores the chosen policy: databases into a new production PostgreSQL /
   MariaDB that stays running under a persistent data dir (durable once the
   load is over, with a systemd unit to keep it running; see
   drtool.actions.recovered_server), or a named PostgreSQL server; files under
   a target root (or their original paths, only when asked),
7. verifies: database row counts (and content hashes, where the backup recorded
   them) against fingerprint.json, file trees against
   the snapshot listing (content hashes by `restic restore --verify`),
8. reports the time each step took and the achieved recovery time vs the
   policy's RTO target.

The restic cache lives in a temporary directory removed afterwards: nothing
is written to HOME or a state dir. S3 credentials: the kit's, else the old
configuration's references, else AWS_* (drtool.actions.kit_open); the report
says which.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.actions.bundle import Bundle, read_config_bundle
from drtool.actions.common import RepoHandle, restic_host
from drtool.actions.kit_open import SnapshotListing, open_kit_file, open_repository_with_source
from drtool.actions.lifecycle import RunLifecycle
from drtool.actions.machine_key import ensure_machine_key
from drtool.actions.select import FINGERPRINT_STREAM, SnapshotSet, choose, snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import Policy, Source
from drtool.crypto.kit import Kit
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import DrtoolError, RestoreRefused, UsageError
from drtool.events import EventFn, StepDone, StepStarted, ignore



@dataclass
class RecoverOptions:
    policy: str | None = None
    target_root: Path | None = None          # files (and SQLite files) go below this
    original_paths: bool = False             # files back to where they were (explicit only)
    pg_target: str | None = None             # postgresql://user@host:port[/db]; default: a new scratch server
    selector: str = "latest"                 # latest, a run id or snapshot id
    force: bool = False                      # restore over non-empty targets
    list_only: bool = False
    host: str | None = None                  # whose backups; default the kit's host
    data_dir: Path | None = None             # where recovered servers live; default <state_dir>/recovered
    identity: Path | None = None             # a custodian's age / SSH identity, for kits sealed to keys
    state_dir: Path | None = None            # where this machine records the recovery; default the bundle's
    dry_run: bool = False                    # say what would be recovered; restore and start nothing
    at: str | None = None                    # PITR sources: base backup + WAL to this moment ("latest" or a time)
    machine_key: bool = True                 # this machine's own restic key (drtool/actions/machine_key.py)


@dataclass
class RecoveryReport:
    kit: dict[str, Any]
    recoverable: dict[str, Any]
    policy: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovery_time_s: float = 0.0
    rto_target_s: float | None = None
    host: str | None = None                   # whose backups were recovered
    credentials: dict[str, str | None] = field(default_factory=dict)   # repository -> where S3 keys came from
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None                 # the recovery's run record (catalog + offsite)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rto_met(self) -> bool | None:
        return None if self.rto_target_s is None else self.recovery_time_s <= self.rto_target_s

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "host": self.host, "ok": self.ok, "recovery_time_s": round(self.recovery_time_s, 3),
                "rto_target_s": self.rto_target_s, "rto_met": self.rto_met, "steps": self.steps,
                "sources": self.sources, "connections": self.connections, "problems": self.problems,
                "recoverable": self.recoverable, "kit": self.kit, "credentials": self.credentials,
                "notes": self.notes, "run_id": self.run_id, **({"dry_run": True} if self.dry_run else {})}


class _Clock:
    """Times the recovery's steps; `started_s` is each step's start from the recovery's start
    (sources are restored at the same time, so their steps overlap)."""

    def __init__(self, report: RecoveryReport, emit: EventFn, origin: float) -> None:
        self.report, self.emit, self.origin = report, emit, origin

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        self.emit(StepStarted(name))
        started = time.monotonic()
        try:
            return fn()
        finally:
            took = time.monotonic() - started
            self.report.steps.append({"step": name, "started_s": round(started - self.origin, 3),
                                      "duration_s": round(took, 3)})
            self.emit(StepDone(name, round(took, 3)))


def recover(kit_path: Path, passphrase: str, options: RecoverOptions | None = None, *,
            on_event: EventFn | None = None) -> RecoveryReport:
    options = options or RecoverOptions()
    emit = on_event or ignore
    started = time.monotonic()
    kit: Kit = open_kit_file(kit_path, passphrase, identity=options.identity)
    report = RecoveryReport(kit=kit.summary(), recoverable={})
    clock = _Clock(report, emit, started)
    report.steps.append({"step": "open kit", "started_s": 0.0, "duration_s": round(time.monotonic() - started, 3)})
    with tempfile.TemporaryDirectory(prefix="drtool-recover-") as work:
        work_dir = Path(work)
        cache = work_dir / "restic-cache"
        opened = clock.step("open repositories", lambda: {
            entry.name: open_repository_with_source(entry, cache) for entry in kit.repositories})
        restics = {name: restic for name, (restic, _creds) in opened.items()}
        report.credentials = {name: creds.source for name, (_r, creds) in opened.items()}
        bundle_repo = kit.config_bundle.repository if kit.config_bundle else kit.repositories[0].name
        bundle_tags = kit.config_bundle.tags if kit.config_bundle else ("drtool", "kind=config")
        if bundle_repo not in restics:
            raise DrtoolError(f"the kit names repository {bundle_repo!r} for the config bundle but holds no access to it")
        wanted = options.host or kit.hostname
        bundle: Bundle = clock.step("read configuration bundle",
                                    lambda: read_config_bundle(restics[bundle_repo], bundle_tags, host=wanted))
        bundle.verify(kit.signing_public_key)
        # A repository may hold several hosts' backups of the same policy: only this one's count.
        host = wanted or bundle.snapshot.hostname
        report.host = host
        settings = bundle.settings(work_dir / "config")
        policies = _kit_policies(kit, settings, restics)
        sets = clock.step("list snapshots", lambda: _catalog(policies, restics, host))
        report.recoverable = _describe(policies, sets)
        if options.list_only:
            report.recovery_time_s = time.monotonic() - started
            return report
        policy = _pick_policy(options.policy, policies, report.recoverable)
        report.policy, report.rto_target_s = policy.name, policy.targets.rto
        if options.dry_run:
            # Nothing is restored, started or recorded: only the repository is read.
            dry_handle = RepoHandle(policy.repository, restics[policy.repository], settings)
            report.sources, report.dry_run = _dry_run(dry_handle, policy, sets[policy.name], options), True
            report.recovery_time_s = time.monotonic() - started
            return report
        # The recovery is a run like any other: recorded (on this machine's state dir), published
        # signed next to the repository with the kit's credentials, and announced.
        run_settings = settings.with_state_dir(options.state_dir) if options.state_dir else settings
        handle = RepoHandle(policy.repository, restics[policy.repository], run_settings)
        if options.machine_key:
            # The recovered machine is the new server: its key, kept in the recovery's state dir,
            # spares every restic process of this recovery (and of its later backups) the escrow
            # key's ~0.5 s derivation. Never in a dry run or a listing: those write nothing.
            escrow = next(e.escrow_key_id for e in kit.repositories if e.name == policy.repository)
            made = clock.step("make this machine's key", lambda: ensure_machine_key(
                handle, restic_host(run_settings), label=f"escrow:{escrow}"))
            if made and not made.get("made"):
                report.notes.append(f"no machine key: {made.get('error')}")
        with RunLifecycle(run_settings, "recover", policy.name, handle=handle, emit=emit) as lc:
            _recover_policy(policy, handle, sets, options, report, clock, settings)
            report.recovery_time_s = time.monotonic() - started
            lc.record.details["recovery"] = report.to_dict()
            if report.problems:
                lc.conclude("failed", "; ".join(report.problems)[:2000])
        report.run_id = lc.record.id
        if lc.error is not None:
            raise lc.error                       # recorded and notified; the CLI reports it
    report.recovery_time_s = time.monotonic() - started
    return report


def _recover_policy(policy: Policy, handle: RepoHandle, sets: dict[str, dict[str, list[SnapshotSet]]],
                    options: RecoverOptions, report: RecoveryReport, clock: _Clock, settings: Settings) -> None:
    root = _data_root(policy, options, settings, report)
    plans = _plan_targets(policy, options, root)    # refuses before anything is written
    chosen = {s.name: choose(sets[policy.name][s.name], options.selector) for s in policy.sources}
    with ExitStack() as cleanup:
        shared = _Shared(cleanup)
        outcomes = _restore_all(policy.sources, lambda s: clock.step(f"restore {s.name}", lambda: _restore(
            handle, s, chosen[s.name], plans[s.name], options, shared, report)))
        for source, outcome in zip(policy.sources, outcomes, strict=True):
            report.sources.append(outcome)
            report.problems += [f"{source.name}: {p}" for p in outcome.get("problems", [])]
        cleanup.pop_all()      # success: the recovered servers stay running for the users


def _restore_all(sources: list[Source], restore_one: Callable[[Source], dict[str, Any]]) -> list[dict[str, Any]]:
    """Database servers and file trees at the same time, outcomes in the policy's order: a files
    tree comes down while the database server starts and loads, instead of after it. Sources
    that write below the target root (files, SQLite) go one after another in the policy's order:
    a tree's check would otherwise meet the file another one is writing. If one source fails,
    the others still finish (their servers are torn down with the failed recovery) and the
    first error is raised."""
    trees = [s for s in sources if s.kind in ("files", "sqlite")]
    servers = [s for s in sources if s not in trees]
    lanes = [lane for lane in ([trees] + [[s] for s in servers]) if lane]
    if len(lanes) < 2:
        return [restore_one(s) for s in sources]
    from concurrent.futures import ThreadPoolExecutor

    def run_lane(lane: list[Source]) -> dict[str, dict[str, Any]]:
        return {s.name: restore_one(s) for s in lane}

    with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="recover") as pool:
        futures = [pool.submit(run_lane, lane) for lane in lanes]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    done = {name: outcome for f in futures for name, outcome in f.result().items()}
    return [done[s.name] for s in sources]


class _Shared:
    """The recovery's ExitStack, for sources restored in threads of their own."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._lock = threading.Lock()

    def callback(self, fn: Callable[[], Any]) -> None:
        with self._lock:
            self._stack.callback(fn)


# ---------------------------------------------------------------- what can be recovered

def _kit_policies(kit: Kit, settings: Settings, restics: dict[str, Restic]) -> dict[str, Policy]:
    wanted = kit.policies or list(settings.policies)
    return {name: settings.policies[name] for name in wanted
            if name in settings.policies and settings.policies[name].repository in restics}


def _catalog(policies: dict[str, Policy], restics: dict[str, Restic],
             host: str) -> dict[str, dict[str, list[SnapshotSet]]]:
    """Complete snapshot sets of `host` for every source of every policy; one listing per repository."""
    listings = {name: SnapshotListing(restic) for name, restic in restics.items()
                if any(p.repository == name for p in policies.values())}
    return {name: {s.name: snapshot_sets(listings[policy.repository], policy, s, host=host)  # type: ignore[arg-type]
                   for s in policy.sources}
            for name, policy in policies.items()}


def _describe(policies: dict[str, Policy], sets: dict[str, dict[str, list[SnapshotSet]]]) -> dict[str, Any]:
    return {name: {"repository": policy.repository, "rto": policy.targets.rto, "sources": {
                s.name: {"kind": s.kind, "sets": [x.to_dict() for x in sets[name][s.name]][-5:]}
                for s in policy.sources}}
            for name, policy in policies.items()}


def _pick_policy(name: str | None, policies: dict[str, Policy], recoverable: dict[str, Any]) -> Policy:
    if name is not None:
        if name not in policies:
            raise UsageError(f"the kit cannot recover policy {name!r}; it covers: {', '.join(sorted(policies)) or 'none'}")
        return policies[name]
    usable = [p for p, info in recoverable.items() if all(s["sets"] for s in info["sources"].values())]
    if len(policies) == 1:
        return next(iter(policies.values()))
    if len(usable) == 1:
        return policies[usable[0]]
    raise UsageError(f"the kit covers several policies ({', '.join(sorted(policies))}); choose one with --policy",
                     hint="`drtool recover --kit FILE --list` shows what each one holds")


# ---------------------------------------------------------------- dry run

def _dry_run(handle: RepoHandle, policy: Policy, sets: dict[str, list[SnapshotSet]],
             options: RecoverOptions) -> list[dict[str, Any]]:
    """Per source: the set, where it would go (and what is there now), bytes, checks."""
    from drtool.actions.dry_run import database_plan, files_plan, target_state

    if options.target_root is not None and options.original_paths:
        raise UsageError("give --target-root DIR or --to-original-paths, not both")
    out = []
    for source in policy.sources:
        chosen = choose(sets[source.name], options.selector)
        entry: dict[str, Any] = {"source": source.name, "kind": source.kind, "snapshot": chosen.to_dict()}
        if source.kind in ("files", "sqlite"):
            paths = source.spec.paths if source.kind == "files" else [source.spec.path]
            if options.target_root is None and not options.original_paths:
                raise UsageError(f"source {source.name} holds files: give --target-root DIR "
                                 "(or --to-original-paths to put them back where they were)")
            root = Path("/") if options.original_paths else options.target_root.resolve()  # type: ignore[union-attr]
            entry["targets"] = {str(root / p.lstrip("/")): target_state(root / p.lstrip("/")) for p in paths}
        if source.kind == "files":
            entry.update(files_plan(handle.restic, chosen))
        else:
            entry.update(database_plan(handle.restic, source, chosen))
            if source.kind != "sqlite":
                entry["target"] = options.pg_target if source.kind == "postgres" and options.pg_target else \
                    f"a new {source.kind} server that stays running (not started in a dry run)"
        out.append(entry)
    return out


# ---------------------------------------------------------------- targets, checked first

@dataclass
class _Plan:
    kind: str
    directory: Path | None = None            # files: restic --target; sqlite: where the file goes
    url: str | None = None                   # postgres: a named server


def _data_root(policy: Policy, options: RecoverOptions, settings: Settings, report: RecoveryReport) -> Path | None:
    from drtool.actions.recovered_server import data_root, temporary_warning

    if not any(s.kind == "mariadb" or (s.kind == "postgres" and not options.pg_target) for s in policy.sources):
        return None
    root = data_root(options.data_dir, settings.config.state_dir)
    warning = temporary_warning(root)
    if warning:
        report.notes.append(warning)
    return root


def _plan_targets(policy: Policy, options: RecoverOptions, servers_root: Path | None = None) -> dict[str, _Plan]:
    if options.target_root is not None and options.original_paths:
        raise UsageError("give --target-root DIR or --to-original-paths, not both")
    plans: dict[str, _Plan] = {}
    for source in policy.sources:
        if source.kind in ("files", "sqlite"):
            paths = source.spec.paths if source.kind == "files" else [source.spec.path]
            if options.original_paths:
                root = Path("/")
                for p in paths:
                    _check_free(Path(p), options.force, is_file=source.kind == "sqlite")
            elif options.target_root is not None:
                root = options.target_root.resolve()
                for p in paths:
                    _check_free(root / p.lstrip("/"), options.force, is_file=source.kind == "sqlite")
            else:
                raise UsageError(f"source {source.name} holds files: give --target-root DIR "
                                 "(or --to-original-paths to put them back where they were)")
            plans[source.name] = _Plan(source.kind, directory=root)
        elif source.kind == "postgres" and options.pg_target:
            if options.at is not None and source.spec.pitr is not None:
                raise UsageError(f"source {source.name}: a point-in-time recovery (--at) needs a server of its own; "
                                 "leave out --pg-target (drtool starts one under --data-dir)")
            plans[source.name] = _Plan("postgres", url=options.pg_target)
        else:
            instance = servers_root / policy.name / source.name if servers_root else None
            if instance is not None:
                _check_free(instance, False, is_file=False)
            plans[source.name] = _Plan(source.kind, directory=instance)
    return plans


def _check_free(path: Path, force: bool, *, is_file: bool) -> None:
    if force or not os.path.lexists(path):
        return
    if is_file or not path.is_dir() or any(path.iterdir()):
        raise RestoreRefused(f"{path} already exists and is not empty; nothing was written",
                             hint="choose another --target-root, or pass --force to restore over it")


# ---------------------------------------------------------------- restoring one source

def _restore(handle: RepoHandle, source: Source, chosen: SnapshotSet, plan: _Plan, options: RecoverOptions,
             cleanup: _Shared, report: RecoveryReport) -> dict[str, Any]:
    base = {"source": source.name, "kind": source.kind, "snapshot": chosen.to_dict()}
    if source.kind == "files":
        return {**base, **_restore_files(handle.restic, chosen, plan, options)}
    return {**base, **_restore_database(handle, source, chosen, plan, options, cleanup, report)}


def _restore_files(restic: Restic, chosen: SnapshotSet, plan: _Plan, options: RecoverOptions) -> dict[str, Any]:
    from drtool.actions.restore import restore_files_set as restore_set
    from drtool.actions.restore import verify_files_set as verify_set

    assert plan.directory is not None
    root = plan.directory
    if root == Path("/"):
        # The whole root is not ours to compare; restic --verify re-reads every restored file.
        restore_set(restic, chosen, root, force=True)
        return {"target": "/ (original paths)", "verified": "content hashes (restic restore --verify)",
                "problems": []}
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    restore_set(restic, chosen, root, force=True)    # emptiness of the paths was checked first
    diff = verify_set(restic, chosen, root)
    return {"target": str(root), "files_checked": diff.checked, "bytes": diff.bytes,
            "verified": not diff.problems, "problems": diff.problems}


def _restore_database(handle: RepoHandle, source: Source, chosen: SnapshotSet, plan: _Plan,
                      options: RecoverOptions, cleanup: _Shared, report: RecoveryReport) -> dict[str, Any]:
    from drtool.execute import LocalRunner
    from drtool.sources import database_source
    from drtool.sources.base import DbTarget, verify_restored

    if options.at is not None and source.kind == "postgres" and source.spec.pitr is not None:
        return _restore_pitr(handle, source, plan, options, report)
    reader = ResticStreamReader(handle.restic, chosen.streams)
    expected = json.loads(reader.read_bytes(FINGERPRINT_STREAM))
    server = None
    if source.kind == "postgres" and plan.url:
        from drtool.actions.restore import parse_db_target
        target = parse_db_target("postgres", plan.url)
    elif source.kind in ("postgres", "mariadb"):
        server = _start_server(source, expected, plan, report, cleanup)
        target = server.target()
    else:  # sqlite
        assert plan.directory is not None
        dest = plan.directory / source.spec.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = DbTarget(kind="sqlite", host=None, path=dest)
    db = database_source(source, LocalRunner())
    result = db.restore(reader, target, force=options.force)
    server_info = _finish_server(server, source, report) if server is not None else None
    names = result.databases
    check = verify_restored(db, target, names, expected)
    return {"target": target.describe(), "databases": names, "rows": check.rows, "server": server_info,
            "phases": [{"name": p.name, "duration_s": round(p.duration_s, 3), "bytes": p.bytes} for p in result.phases],
            "verified": check.ok, "problems": check.problems, "verification": check.summary()}


def _restore_pitr(handle: RepoHandle, source: Source, plan: _Plan, options: RecoverOptions,
                  report: RecoveryReport) -> dict[str, Any]:
    """Base backup + WAL to `--at` into a new production server (drtool/actions/pitr.py); checked by the
    recovery itself (every fetch succeeded, every complete segment replayed), not by row counts."""
    from drtool.actions.pitr import parse_at, restore_to_directory

    assert plan.directory is not None and report.policy is not None
    policy = handle.settings.policies[report.policy]
    out = restore_to_directory(handle.restic, policy, source, parse_at(options.at or "latest"), plan.directory,
                               host=report.host)
    report.connections.append("\n".join([
        f"{source.name}: PostgreSQL recovered to {out['target']} ({out['recovered_to']}) on 127.0.0.1:{out['port']}, "
        f"data in {out['data_dir']}, durable", f"  connect:       {out['connect']}",
        f"  password:      {out['password_file']} (readable by you only)",
        f"  stop:          {' '.join(out['service']['stop'])}", f"  unit:          {out['service']['unit_file']}"]))
    return {"target": f"postgres://postgres@127.0.0.1:{out['port']}/", "databases": source.spec.database_names,
            "pitr": out,
            "verified": True, "problems": []}


def _start_server(source: Source, fingerprint: dict[str, Any], plan: _Plan, report: RecoveryReport,
                  cleanup: _Shared) -> Any:
    """A production server under the data root; torn down again only if recover fails."""
    from drtool.actions import recovered_server as rs
    from drtool.actions.drill.context import pg_major

    assert plan.directory is not None and report.policy is not None
    root = plan.directory.parent.parent
    if source.kind == "postgres":
        server = rs.start_postgres(root, report.policy, source, pg_major(fingerprint))
    else:
        server = rs.start_mariadb(root, report.policy, source)
    cleanup.callback(server.teardown)
    return server


def _finish_server(server: Any, source: Source, report: RecoveryReport) -> dict[str, Any]:
    """Load settings off, synced, checkpointed; then say how to connect and keep it running."""
    from drtool.actions import recovered_server as rs

    assert report.policy is not None
    finish = rs.finish_postgres if source.kind == "postgres" else rs.finish_mariadb
    info = finish(server, report.policy)
    report.connections.append(rs.connection_text(source.name, source.kind, info))
    info.pop("_service")
    return info


__all__ = ["RecoverOptions", "RecoveryReport", "recover"]
