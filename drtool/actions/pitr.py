"""Use case: point-in-time recovery of a PostgreSQL source, and what its WAL chain can recover.

    chain = read_chain(restic, policy, source, host=H)           # base backups + WAL batches
    view = analyse(chain.bases, chain.batches)                    # status: window, gaps, timelines
    plan = plan_for(chain, at)                                    # refuses a moment outside the window
    result = recover_into(server, restic, policy, source, plan)   # base restored, WAL replayed, promoted

`recover_into` is the one path every entry point takes (`drtool restore --at`, the drill step
`restore: {at: ...}`, `drtool recover --at`): the base backup streams from `restic dump` into
`tar -x` (as the postgres OS user), the broker of drtool/sources/wal_fetch.py serves the WAL
to PostgreSQL's restore_command, and afterwards the recovery is checked: no fetch failed,
and a recovery to the latest moment replayed every complete segment the plan holds.

Data loss is measured, not assumed: `achieved_rpo` is the time between the moment the
recovery stood for (its target, or now for "latest") and the newest canary row found in
the recovered cluster (drtool_canary, written by the shipper every `canary` seconds);
without a canary, the newest replayed commit (pg_last_xact_replay_timestamp()), which
counts an idle server's quiet time as loss (an upper bound).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drtool.actions.select import snapshot_sets
from drtool.actions.wal_canary import CANARY_TABLE
from drtool.config.models import Policy, Source
from drtool.engine.reader import ResticStreamReader, extract_dump
from drtool.engine.restic import Restic, Snapshot
from drtool.errors import DrtoolError, RestoreRefused, SourceError
from drtool.execute import LocalRunner
from drtool.scratch.pg_recovery import RecoveryEnd, RecoveryPostgres
from drtool.sources.pg_basebackup import BASE_STREAM
from drtool.sources.pg_physical import PITR_KEY
from drtool.sources.wal_chain import BaseBackup, OutsideWindow, RestorePlan, plan_restore
from drtool.sources.wal_fetch import WalBroker, client_python
from drtool.sources.wal_names import WAL_TAG, Batch, batch_from_tags, is_segment, parse_lsn, parse_segment
from drtool.tags import FINGERPRINT_STREAM, policy_tags

log = logging.getLogger(__name__)

RECOVERY_TIMEOUT_S = 24 * 3600.0


@dataclass
class Chain:
    bases: list[BaseBackup]
    batches: list[Batch]


def read_chain(restic: Any, policy: Policy, source: Source, *, host: str | None,
               listing: list[Snapshot] | None = None, cache_dir: Path | None = None) -> Chain:
    """Base backups (complete sets with base.tar) and WAL batches of one source and host.
    `cache_dir` keeps each base backup's facts (immutable, read from its fingerprint once)."""
    if listing is None:
        listing = restic.snapshots(tags=policy_tags(policy), host=host)
    mine = [s for s in listing if host is None or s.hostname == host]
    batches = [b for s in mine if s.tag(WAL_TAG) == source.name
               for b in [batch_from_tags(s.id, s.time, s.tags)] if b is not None]
    sets = snapshot_sets(restic, policy, source, host=host, listing=[s for s in mine if s.tag("source") == source.name])
    bases = [base_backup(restic, s, cache_dir) for s in sets if BASE_STREAM in s.streams]
    return Chain([b for b in bases if b is not None], batches)


def base_backup(restic: Restic, chosen: Any, cache_dir: Path | None) -> BaseBackup | None:
    fp_id = chosen.streams[FINGERPRINT_STREAM].id
    cached = cache_dir / f"{fp_id}.json" if cache_dir else None
    if cached is not None and cached.exists():
        info = json.loads(cached.read_text())
    else:
        fingerprint = json.loads(ResticStreamReader(restic, chosen.streams).read_bytes(FINGERPRINT_STREAM))
        info = fingerprint.get(PITR_KEY)
        if info is None:
            return None
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            cached.write_text(json.dumps(info))
    return BaseBackup(chosen.run_id, chosen.streams[BASE_STREAM].id, parse_lsn(info["start_lsn"]),
                      parse_lsn(info["stop_lsn"]), int(info["timeline"]), chosen.time,
                      datetime.fromisoformat(info["stop_time"]), info.get("sysid"), int(info["segsize"]),
                      info.get("major"), info.get("backup_from", "primary") != "standby")


def plan_for(chain: Chain, at: datetime | None) -> RestorePlan:
    """The restore plan, or one clear refusal (exit 2) before anything is written."""
    try:
        return plan_restore(chain.bases, chain.batches, at)
    except OutsideWindow as exc:
        raise RestoreRefused(f"{exc}; nothing was written",
                             hint="choose a moment inside the window (drtool status shows it), or `latest`") from None


def parse_at(text: str) -> datetime | None:
    """`latest` -> None; an ISO time (a time without offset is UTC)."""
    if text.strip().lower() == "latest":
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        from drtool.errors import UsageError
        raise UsageError(f"--at {text!r} is neither `latest` nor a time",
                         hint="write it like 2026-12-01T14:05:00+07:00 (no offset: UTC)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------ the recovery itself

@dataclass
class PitrResult:
    plan: RestorePlan
    end: RecoveryEnd
    phases: list[dict[str, Any]] = field(default_factory=list)
    wal_files: int = 0
    batches_fetched: int = 0
    canary: datetime | None = None
    achieved_rpo_s: float | None = None
    rpo_method: str = "none"
    reference: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        return {"base_backup": {"run": self.plan.base.run_id, "snapshot": self.plan.base.snapshot_id[:8],
                                "consistent_at": iso(self.plan.base.stop_time)},
                "target": iso(self.plan.target) or "latest", "recovery_point": iso(self.plan.recovery_point),
                "timeline": self.end.timeline, "recovered_to": self.end.reason,
                "last_replayed_commit": iso(self.end.last_replayed), "canary": iso(self.canary),
                "achieved_rpo_s": None if self.achieved_rpo_s is None else round(self.achieved_rpo_s, 3),
                "rpo_method": self.rpo_method, "wal_files_served": self.wal_files,
                "wal_batches_fetched": self.batches_fetched,
                "replayed_to_end": self.end.retried_without_target, "phases": self.phases}


def recover_into(server: RecoveryPostgres, restic: Restic, policy: Policy, source: Source, plan: RestorePlan, *,
                 port: int, timeout: float = RECOVERY_TIMEOUT_S, reference: datetime | None = None) -> PitrResult:
    """Restore `plan` into `server` (started: its directory exists), replay, promote, check, measure."""
    phases: list[dict[str, Any]] = []
    owner = "postgres" if os.geteuid() == 0 else None
    with WalBroker(restic, plan.files, plan.segsize, server.dir, owner) as broker:  # type: ignore[arg-type]
        broker.prefetch()                  # the WAL downloads while the base backup is extracted
        started = time.monotonic()
        nbytes = server.extract(lambda argv, runner: extract_dump(restic, plan.base.snapshot_id, "/" + BASE_STREAM,
                                                                  runner, str(server.data_dir), timeout=timeout))
        phases.append(_phase("download+extract base backup (WAL prefetched meanwhile)", started, nbytes))
        command = broker.restore_command(client_python())
        server.configure(command, plan.target, port)
        _preflight(server, command, broker)
        started = time.monotonic()
        end = server.recover(command, plan.target, timeout=timeout)
        phases.append(_phase("WAL fetch+replay+promote", started, None))
        _check_recovery(plan, end, broker)
        result = PitrResult(plan, end, phases, len(broker.served()), broker.batches_fetched)
    measure(server, policy, source, result, reference or plan.target or datetime.now(timezone.utc))
    return result


def _phase(name: str, started: float, nbytes: int | None) -> dict[str, Any]:
    took = time.monotonic() - started
    return {"name": name, "duration_s": round(took, 3), "bytes": nbytes,
            "throughput_mb_s": round(nbytes / took / 1e6, 2) if nbytes and took > 0 else None}


def _preflight(server: RecoveryPostgres, command: str, broker: WalBroker) -> None:
    """Run the restore_command once as PostgreSQL will (its OS user, the data directory) for a
    file no plan holds: it must reach the broker and answer "absent" (exit 1), not crash."""
    probe = command.replace("%f", "FFFFFFFF.history").replace("%p", "pg_wal/drtool-preflight")
    result = LocalRunner(user="postgres" if os.geteuid() == 0 else None).run(
        ["sh", "-c", probe], cwd=str(server.data_dir), timeout=60, check=False)
    asked = any(r.name == "FFFFFFFF.history" for r in broker.requests)
    if result.returncode != 1 or not asked:
        raise SourceError(f"the restore_command does not work as the postgres OS user (exit {result.returncode}): "
                          f"{result.stderr.decode('utf-8', 'replace').strip()[-500:] or 'no error text'}",
                          hint="the postgres user needs a python3 it may run (/usr/bin/python3)")


def _check_recovery(plan: RestorePlan, end: RecoveryEnd, broker: WalBroker) -> None:
    """Never an early end that looks like success: no fetch may have failed, and a recovery to the
    latest moment must have replayed every complete segment of the plan."""
    failed = broker.errors()
    if failed:
        raise SourceError(f"{len(failed)} WAL fetch(es) failed during recovery, e.g. {failed[0].name}: "
                          f"{failed[0].detail}", hint="the recovered cluster is incomplete; see the repository")
    if plan.target is not None and not end.retried_without_target:
        return
    served = set(broker.served())
    complete = sorted(n for n, ref in plan.files.items()
                      if is_segment(n) and ref.partial_bytes is None
                      and parse_segment(n, plan.segsize).segno >= plan.base.next_segno)
    missing = [n for n in complete if n not in served]
    if missing:
        raise SourceError(f"recovery ended before replaying {len(missing)} WAL segment(s) the repository holds "
                          f"(first: {missing[0]}); it is not the latest state",
                          hint="see the server log; a restore_command problem ends recovery early")


def measure(server: RecoveryPostgres, policy: Policy, source: Source, result: PitrResult,
            reference: datetime) -> None:
    """The data loss a real recovery standing for `reference` would have had (see module docstring)."""
    result.reference = reference
    pitr = source.spec.pitr  # type: ignore[union-attr]
    if pitr is not None and pitr.canary is not None:
        key = f"{policy.name}/{source.name}".replace("'", "''")
        try:
            value = server.socket_sql(f"SELECT CASE WHEN to_regclass('{CANARY_TABLE}') IS NOT NULL THEN "
                                      f"(SELECT at FROM {CANARY_TABLE} WHERE source = '{key}') END",
                                      pitr.canary_database)
        except DrtoolError as exc:
            log.warning("canary not readable in the recovered cluster: %s", exc.message.splitlines()[0])
            value = ""
        if value:
            result.canary = datetime.fromisoformat(value)
            result.achieved_rpo_s = max(0.0, (reference - result.canary).total_seconds())
            result.rpo_method = "canary"
            return
    if result.end.last_replayed is not None:
        result.achieved_rpo_s = max(0.0, (reference - result.end.last_replayed).total_seconds())
        result.rpo_method = "last replayed commit (upper bound: quiet time counts as loss)"


# ------------------------------------------------------------------ a durable server in a directory

def restore_to_directory(restic: Restic, policy: Policy, source: Source, at: datetime | None, instance: Path, *,
                         host: str | None, port: int | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """`drtool restore --at` / `drtool recover --at`: a new production server in `instance`
    (new or empty), left running; its superuser password in `instance/password` (0600)."""
    from drtool.actions.recovered_server import port_free
    from drtool.scratch.common import free_port
    from drtool.scratch.service import postgres_unit, unit_name, write_service

    chain = read_chain(restic, policy, source, host=host, cache_dir=cache_dir)
    plan = plan_for(chain, at)                       # outside the window: refused, nothing written
    _refuse_busy(instance)
    instance.mkdir(parents=True, exist_ok=True, mode=0o711)
    instance.chmod(0o711)
    wanted = port or source.spec.port  # type: ignore[union-attr]
    server = RecoveryPostgres(plan.base.major or 15, durable=True, home=instance / "server")
    password = secrets.token_urlsafe(24)
    try:
        server.start()
        result = recover_into(server, restic, policy, source, plan, port=wanted if port_free(wanted) else free_port())
        settings = server.settle(password)
        _write_private(instance / "password", password + "\n")
        _write_private(instance / "postgres.pgpass", f"127.0.0.1:{server.port}:*:postgres:{password}\n")
    except BaseException:
        server.stop()
        for name in ("password", "postgres.pgpass"):
            (instance / name).unlink(missing_ok=True)
        raise
    user = "postgres" if os.geteuid() == 0 else _me()
    service = write_service(instance, unit_name("postgres", f"{policy.name}-{source.name}"), postgres_unit(
        f"PostgreSQL {server.major} recovered by drtool to {result.to_dict()['target']} "
        f"(policy {policy.name}, source {source.name})", user, server.bin_dir, server.data_dir),  # type: ignore[arg-type]
        server.start_argv(), server.stop_argv())
    psql = os.path.join(server.bin_dir or "", "psql")
    return {**result.to_dict(), "host": "127.0.0.1", "port": server.port, "user": "postgres",
            "data_dir": str(server.data_dir), "password_file": str(instance / "password"),
            "passfile": str(instance / "postgres.pgpass"), "settings": settings, "service": service.to_dict(),
            "connect": f"PGPASSFILE={instance / 'postgres.pgpass'} {psql} -h 127.0.0.1 -p {server.port} -U postgres",
            "disabled_settings": server.dropped}


def _refuse_busy(instance: Path) -> None:
    if instance.exists() and (not instance.is_dir() or any(instance.iterdir())):
        raise RestoreRefused(f"{instance} already exists and is not an empty directory; nothing was written",
                             hint="give a new or empty --target directory for the recovered server")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _me() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def restore_source_at(settings: Any, policy: Policy, source_name: str, at: str, target: str, *,
                      host: str | None = None) -> dict[str, Any]:
    """`drtool restore POLICY --source S --at TIME --target DIR`."""
    from drtool.actions.common import open_repo, restic_host
    from drtool.errors import UsageError

    try:
        source = policy.source(source_name)
    except KeyError:
        names = ", ".join(s.name for s in policy.sources)
        raise UsageError(f"policy {policy.name!r} has no source {source_name!r} (it has: {names})") from None
    if source.kind != "postgres" or source.spec.pitr is None:  # type: ignore[union-attr]
        raise UsageError(f"--at needs a PostgreSQL source with pitr:; {source_name!r} has none",
                         hint="restore a snapshot set with --snapshot instead")
    when = parse_at(at)
    instance = Path(target).absolute()
    _refuse_busy(instance)
    handle = open_repo(settings, policy.repository)
    return restore_to_directory(handle.restic, policy, source, when, instance, host=host or restic_host(settings),
                                cache_dir=settings.state_dir / "pitr")


def pitr_view(settings: Any, restic: Restic, policy: Policy, source: Source, host: str | None,
              listing: list[Snapshot], shipped: tuple[str, str] | None = None) -> Any:
    """The status of one PITR source (drtool/sources/wal_chain.py PitrView) from a policy's listing;
    `shipped` (wal_ship.shipped_segment) must be read before that listing was."""
    from drtool.sources.wal_chain import analyse

    chain = read_chain(restic, policy, source, host=host, listing=listing, cache_dir=settings.state_dir / "pitr")
    return analyse(chain.bases, chain.batches, shipped)
