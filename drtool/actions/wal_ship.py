"""Use case: continuous WAL shipping for one PITR source (run by `drtool daemon` or `drtool wal-ship`).

    shipper = WalShipper(settings, policy, source, send=notifier.send)
    shipper.run(stop_event)            # until the event is set; then one last batch

Every `wal_ship` seconds (or when a heartbeat is due on an idle server) one batch leaves:
the complete segments pg_receivewal finished, the timeline history files, and a copy of
the segment it is still writing, all in ONE `restic backup` (one restic process per batch,
not per 16 MB segment). Before the copy, the server is asked for its WAL insert position
and clock (`pg_current_wal_insert_lsn(), clock_timestamp()`); when the copy holds that
position, the batch's `upto` tag says "every commit before this time is offsite". Only
after restic committed the batch and its summary matched the manifest (file count and
bytes) are the shipped segments removed from the spool: a failed batch stays and goes out
with the next one.

Never a silent drop (pgBackRest's archive-push-queue-max drops WAL; this does not):
- the spool is bounded by `spool_max`; when it is full, receiving pauses (the replication
  slot keeps the WAL on the server) and `wal_spool_full` is raised;
- WAL not offsite for 3 x wal_ship (at least 30 s): `wal_ship_failed`, then `wal_ship_recovered`;
- pg_receivewal failing again and again: `wal_receiver_failed`;
- the server no longer has WAL the receiver needs (no slot, or the slot was invalidated):
  `wal_gap`; the shipper then starts afresh at the server's position, and `status` shows
  the gap (a breach) until retention has dropped the base backups before it.
Each alert is sent once per occurrence, not once per round.

Beside shipping, an opt-in canary (`canary: 10s`, drtool/actions/wal_canary.py) updates one
row of `drtool_canary` in `canary_database` with the server's clock, so a drill can measure the
data loss a real recovery would have had (drtool/actions/pitr.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from drtool.actions.common import RepoHandle, open_repo, restic_host
from drtool.actions.wal_alerts import Alerts
from drtool.actions.wal_canary import Canary
from drtool.config.loader import Settings
from drtool.config.models import Policy, Source
from drtool.engine.pipeline import backup_args
from drtool.errors import DrtoolError, RepositoryError, RepositoryMissing, SourceError
from drtool.execute import LocalRunner
from drtool.notify import Event
from drtool.secrets import redact
from drtool.sources.psql import (
    PsqlSession,
    conn_args,
    libpq_env,
    psql_argv,
)
from drtool.sources.wal_dump import find_waldump, valid_offset
from drtool.sources.wal_names import Segment, batch_tags, parse_lsn, parse_segment
from drtool.sources.wal_receiver import (
    Receiver,
    ReceiverExit,
    drop_slot_sql,
    slot_name,
    slot_sql,
)
from drtool.sources.wal_spool import Spool, Staged, read_state, wal_covered

log = logging.getLogger(__name__)

TICK_S = 0.5
FIRST_SHIP_S = 2.0
POSTPONED_RETRY_S = 2.0      # a batch the daemon's maintenance postponed is tried again this soon
MAX_SEGMENTS_PER_BATCH = 64                 # 1 GiB of 16 MiB segments: a backlog goes out in bounded batches
UPTO_MARGIN = timedelta(seconds=0.5)        # a commit stamped just before the probe may insert just after it
RESTIC_TIMEOUT_S = 3600.0
Gate = tuple[Callable[[str], bool], Callable[[str], None]]


def shipped_segment(settings: Settings, policy: Policy, source: Source) -> tuple[str, str] | None:
    """(system identifier, newest complete segment name) this host shipped, from its spool state;
    None when it never shipped one (or shipped before the state named its cluster)."""
    state = read_state(spool_root(settings, policy, source))
    if state.get("sysid") and state.get("last_complete"):
        return str(state["sysid"]), str(state["last_complete"])
    return None


def spool_root(settings: Settings, policy: Policy, source: Source) -> Path:
    configured = source.spec.pitr.spool_dir  # type: ignore[union-attr]
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else settings.state_dir / path
    return settings.state_dir / "wal" / policy.name / source.name


def pitr_sources(policy: Policy) -> list[Source]:
    return [s for s in policy.sources if s.kind == "postgres" and s.spec.pitr is not None]  # type: ignore[union-attr]


@dataclass
class Probe:
    lsn: int
    at: datetime


class WalShipper:
    def __init__(self, settings: Settings, policy: Policy, source: Source, *,
                 send: Callable[[Event], None] | None = None, gate: Gate | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if source.kind != "postgres" or source.spec.pitr is None:  # type: ignore[union-attr]
            raise SourceError(f"source {source.name!r} of policy {policy.name!r} has no pitr: settings")
        self.settings, self.policy, self.source = settings, policy, source
        self.spec = source.spec
        self.pitr = source.spec.pitr  # type: ignore[union-attr]
        self.handle: RepoHandle = open_repo(settings, policy.repository)
        # A storage that is down is not waited out for minutes: the next batch tries again in wal_ship.
        self.handle.restic.wait_unavailable = min(self.handle.restic.wait_unavailable, self.pitr.wal_ship)
        self.host = restic_host(settings)
        self.gate = gate
        self.clock = clock
        if send is None:
            from drtool.notify import Notifier
            send = Notifier(settings.config.notifications).send
        self.alerts = Alerts(send, policy.name)
        self.root = spool_root(settings, policy, source)
        self.spool: Spool | None = None
        self.receiver: Receiver | None = None
        self.state: dict[str, Any] = {}
        self._session: PsqlSession | None = None
        self._next_ship = 0.0
        self.canary: Canary | None = None
        self._last_ok = clock()
        self._last_ship = -1e18
        self._shipping = threading.Thread()          # the batch in flight (none yet)
        self._ship_lock = threading.Lock()
        self._preflight_done = False
        self.sysid: str | None = None
        self.segsize = 0
        self._waldump: str | None = None

    @property
    def name(self) -> str:
        return f"{self.policy.name}/{self.source.name}"

    # ------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Start, then ship until `stop` is set; a failing round is logged, never the end of shipping."""
        self.start()
        run_until(self, stop)

    def start(self) -> None:
        """Learn the cluster (system identifier, segment size), lock the spool, create the slot."""
        session = self._sql()
        self.sysid = session.value("SELECT system_identifier::text FROM pg_control_system()")
        self.segsize = int(session.value("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
        self._waldump = find_waldump(self.spec.bin_dir)
        self.spool = Spool(self.root, self.segsize)
        self.spool.prepare()
        self.spool.lock()
        self.state = self.spool.load_state()
        self.receiver = Receiver(self.spec, str(self.spool.wal),  # type: ignore[arg-type]
                                 slot_name(self.policy.name, self.source.name, self.pitr.slot), clock=self.clock)
        self._ensure_slot()
        if self.pitr.canary is not None:
            self.canary = Canary(self.spec, self.name, self.pitr.canary, self.pitr.canary_database)  # type: ignore[arg-type]
            self.canary.start()
        # The first batch goes once the receiver had a moment to fetch what the slot kept while nobody
        # shipped (a restart), not a whole wal_ship later.
        self._next_ship = self.clock() + min(FIRST_SHIP_S, self.pitr.wal_ship)
        log.info("WAL shipping for %s: spool %s, every %.0fs, slot %s", self.name, self.root, self.pitr.wal_ship,
                 self.receiver.slot or "none")

    def finish(self) -> None:
        """Stop receiving, ship what arrived, release the spool."""
        try:
            if self.canary is not None:
                self.canary.stop()
            if self.receiver is not None:
                self.receiver.stop()
            self._shipping.join(RESTIC_TIMEOUT_S)
            if self.spool is not None:
                self.ship_once(final=True)
        finally:
            if self._session is not None:
                self._session.close()
            if self.spool is not None:
                self.spool.unlock()

    def step(self) -> None:
        assert self.receiver is not None
        ended = self.receiver.ensure()
        if ended is not None:
            self._receiver_ended(ended)
        elif self.receiver.running and self.receiver.failures == 0:
            self.alerts.clear("receiver", f"{self.name}: pg_receivewal is receiving again")
        now = self.clock()
        self._bound_spool()
        if now >= self._next_ship and not self._shipping.is_alive():
            # In a thread of its own: a storage that hangs must not stop the receiver's supervision,
            # the spool bound or the alert that says WAL is not getting out.
            self._next_ship = now + self.pitr.wal_ship
            self._shipping = threading.Thread(target=self.ship_once, name=f"ship-{self.name}", daemon=True)
            self._shipping.start()
        self._check_stale()

    # ------------------------------------------------------------ shipping

    def ship_once(self, *, final: bool = False) -> str | None:
        """Ship one batch if there is anything new (or a heartbeat is due); returns its snapshot id."""
        with self._ship_lock:                   # one batch at a time (the loop's thread, a gap, the last one)
            return self._ship_gated()

    def _ship_gated(self) -> str | None:
        assert self.spool is not None
        repo = self.policy.repository
        if self.gate is not None and not self.gate[0](repo):
            log.debug("%s: maintenance runs or waits on %s, batch postponed", self.name, repo)
            self._next_ship = min(self._next_ship, self.clock() + POSTPONED_RETRY_S)   # not a whole wal_ship later
            return None
        try:
            return self._ship()
        except DrtoolError as exc:
            self.state["failures"] = self.state.get("failures", 0) + 1
            log.warning("%s: batch not shipped (kept in the spool): %s", self.name,
                        redact(exc.message.splitlines()[0]))
            self.state["last_error"] = redact(exc.message.splitlines()[0])[:300]
            self.spool.clear_outbox()
            return None
        finally:
            self.spool.save_state(self.state)
            if self.gate is not None:
                self.gate[1](repo)

    def _ship(self) -> str | None:
        assert self.spool is not None
        probe = self._probe()
        staged = self.spool.stage(self.spool.scan(), limit=MAX_SEGMENTS_PER_BATCH)
        if not self._worth_shipping(staged):
            self.spool.clear_outbox()
            return None
        upto = self._upto(probe, staged)
        self._check_continuity(staged)
        if not self._preflight_done:
            # Only a probe: creating the repository is the first backup's (or init-repo's) job; two
            # processes running `restic init` at once would collide.
            if not self.handle.restic.exists():
                raise RepositoryMissing(f"no restic repository at {self.handle.repository.url} yet",
                                        hint=f"run `drtool init-repo {self.policy.repository}` or the first "
                                             f"`drtool backup {self.policy.name}`; the WAL waits in the spool")
            self._preflight_done = True
        batch_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        tags = batch_tags(policy=self.policy.name, source=self.source.name, batch_id=batch_id,
                          complete=staged.complete, partial=staged.partial[:2] if staged.partial else None,
                          histories=staged.histories, upto=upto, sysid=self.sysid, segsize=self.segsize)
        snapshot = self._backup(staged, tags)
        self.spool.commit(staged)
        self._shipped(staged, upto)
        return snapshot

    def _worth_shipping(self, staged: Staged) -> bool:
        if staged.complete or staged.histories or staged.stale_partials:
            return True
        if staged.partial is None:
            return False
        heartbeat = min(max(10 * self.pitr.wal_ship, 60.0), 900.0)
        changed = self._partial_key(staged) != self.state.get("partial")
        return changed or self.clock() - self._last_ship >= heartbeat

    def _partial_key(self, staged: Staged) -> list[Any] | None:
        if staged.partial is None:
            return None
        seg, size, digest = staged.partial
        return [seg.name(self.segsize), size, digest]

    def _upto(self, probe: Probe | None, staged: Staged) -> datetime | None:
        """The probe's time when the batch (with what is offsite already) holds the WAL before it;
        else the last confirmed time (nothing is claimed that is not proven)."""
        previous = self.state.get("upto")
        complete = [s.segno for s in staged.complete]
        if self.state.get("last_complete"):
            complete.append(parse_segment(self.state["last_complete"], self.segsize).segno)
        partial = (staged.partial[0], self._written(staged)) if staged.partial else None
        if probe is not None and wal_covered(probe.lsn, self.segsize, partial, max(complete, default=None)):
            return probe.at - UPTO_MARGIN
        return datetime.fromisoformat(previous) if previous else None

    def _written(self, staged: Staged) -> int:
        """How many bytes of the partial copy are valid WAL: pg_waldump's answer, else the non-zero length."""
        assert staged.partial is not None and self.spool is not None
        if self._waldump is None:
            return staged.partial[1]
        found = valid_offset(self._waldump, self.spool.root / "check", staged.partial[0], staged.partial_data,
                             self.segsize)
        return max(found or 0, staged.partial[1])

    def _check_continuity(self, staged: Staged) -> None:
        """An early warning; `status` decides gaps from what is offsite."""
        last = self.state.get("last_complete")
        if not last or not staged.complete:
            return
        before = parse_segment(last, self.segsize)
        first = staged.complete[0]
        if first.segno > before.segno + 1:
            missing = Segment(first.tli, before.segno + 1).name(self.segsize)
            self.alerts.raise_(f"gap:{missing}", "wal_gap",
                               f"{self.name}: WAL from {missing} to before {first.name(self.segsize)} never reached "
                               f"the spool: it cannot be recovered; run `drtool backup {self.policy.name}` for a new "
                               "base backup after the gap", first_missing=missing)

    def _backup(self, staged: Staged, tags: list[str]) -> str:
        assert self.spool is not None
        self.state["restic_runs"] = self.state.get("restic_runs", 0) + 1
        result = self.handle.restic.run([*backup_args(tags, self.host), "."], cwd=str(self.spool.outbox),
                                        timeout=RESTIC_TIMEOUT_S)
        summary = _summary(result.text)
        files, nbytes = summary.get("total_files_processed"), summary.get("total_bytes_processed")
        snapshot = summary.get("snapshot_id")
        # The batch's verification: restic read exactly the files and bytes of the manifest.
        if not snapshot or files != len(staged.files) or nbytes != staged.bytes:
            if snapshot:
                self.handle.restic.forget_ids([snapshot])
            raise RepositoryError(f"WAL batch of {self.name}: restic stored {files} files / {nbytes} bytes, the "
                                  f"manifest lists {len(staged.files)} / {staged.bytes}; the batch was not kept")
        return snapshot

    def _shipped(self, staged: Staged, upto: datetime | None) -> None:
        if staged.complete:
            self.state["last_complete"] = staged.complete[-1].name(self.segsize)
            self.state["sysid"] = self.sysid          # whose WAL: `status` compares it with the repository's
        if staged.partial is not None:
            self.state["partial"] = self._partial_key(staged)
        if upto is not None:
            self.state["upto"] = upto.isoformat()
        self.state["batches"] = self.state.get("batches", 0) + 1
        self.state["bytes"] = self.state.get("bytes", 0) + staged.bytes
        self.state["last_ship"] = datetime.now(timezone.utc).isoformat()
        self._last_ship = self.clock()
        self.state.pop("last_error", None)
        self._last_ok = self.clock()
        self.alerts.clear("ship", f"{self.name}: WAL reaches the repository again")

    def _check_stale(self) -> None:
        limit = max(3 * self.pitr.wal_ship, 30.0)
        if self.clock() - self._last_ok > limit:
            self.alerts.raise_("ship", "wal_ship_failed",
                               f"{self.name}: no WAL batch reached the repository for {limit:.0f}s "
                               f"({self.state.get('last_error') or 'maintenance or a slow repository'}); "
                               "the WAL waits in the spool", spool=str(self.root))

    # ------------------------------------------------------------ the receiver and the spool bound

    def _receiver_ended(self, ended: ReceiverExit) -> None:
        assert self.receiver is not None and self.spool is not None
        if self.receiver.paused:
            return
        if ended.wal_lost:
            self._restart_after_gap(ended)
        elif self.receiver.failures >= 3:
            self.alerts.raise_("receiver", "wal_receiver_failed",
                               f"{self.name}: pg_receivewal keeps failing ({self.receiver.failures} times): "
                               f"{redact(ended.stderr.splitlines()[-1]) if ended.stderr else 'no error text'}")

    def _restart_after_gap(self, ended: ReceiverExit) -> None:
        assert self.receiver is not None and self.spool is not None
        current = self.spool.scan().current_partial
        self.alerts.raise_(f"lost:{current}", "wal_gap",
                           f"{self.name}: the server no longer has the WAL pg_receivewal needs "
                           f"({redact(ended.cause)}); WAL is lost "
                           f"after {current.name(self.segsize) if current else 'the last shipped segment'}. "
                           f"Receiving starts again at the server's position; run `drtool backup "
                           f"{self.policy.name}` for a base backup after the gap")
        self.ship_once()                                   # what we have of the old segment goes out first
        if current is not None:
            self.spool.discard_partial(current)
        if self.receiver.slot:                             # an invalidated slot: a fresh one, reserving now
            self._sql().query(drop_slot_sql(self.receiver.slot), 60)
            self._ensure_slot()
        self.receiver.retry_now()

    def _bound_spool(self) -> None:
        assert self.receiver is not None and self.spool is not None
        used = self.spool.scan().bytes
        if used > self.pitr.spool_max and not self.receiver.paused:
            self.receiver.paused = True
            self.receiver.stop()
            self.alerts.raise_("spool", "wal_spool_full",
                               f"{self.name}: the WAL spool {self.root} is full ({used >> 20} MiB of "
                               f"{self.pitr.spool_max >> 20} MiB): receiving paused, "
                               + ("the replication slot keeps the WAL on the server" if self.receiver.slot else
                                  "without a replication slot the server may remove WAL (a gap)"),
                               spool_bytes=used)
        elif self.receiver.paused and used < 0.8 * self.pitr.spool_max:
            self.receiver.paused = False
            self.receiver.retry_now()
            self.alerts.clear("spool", f"{self.name}: the WAL spool drained; receiving again")

    # ------------------------------------------------------------ SQL: the probe

    def _sql(self) -> PsqlSession:
        if self._session is None:
            spec = self.spec
            password = spec.password.resolve().reveal() if spec.password else None
            db = self.pitr.canary_database
            argv = psql_argv(spec.bin_dir, conn_args(spec.host, spec.port, spec.user), db)
            self._session = PsqlSession(LocalRunner(), argv, libpq_env(password),
                                        f"postgres {spec.user}@{spec.host}:{spec.port}/{db}")
        return self._session

    def _ensure_slot(self) -> None:
        assert self.receiver is not None
        if not self.receiver.slot:
            return
        try:
            self._sql().query(slot_sql(self.receiver.slot), 60)
        except DrtoolError as exc:
            raise SourceError(f"cannot create the replication slot {self.receiver.slot} on {self.spec.host}:"
                              f"{self.spec.port}: {exc.message.splitlines()[0]}",
                              hint="the user needs the REPLICATION privilege and the server max_replication_slots "
                                   "> 0 (or set pitr.slot: false, and accept gaps when drtool is down)") from None

    def _probe(self) -> Probe | None:
        try:
            row = self._sql().query("SELECT pg_current_wal_insert_lsn(), clock_timestamp()", 30)
            log.debug("%s: probe %s", self.name, row)
            return Probe(parse_lsn(row[0][0]), datetime.fromisoformat(row[0][1]))
        except (DrtoolError, ValueError, IndexError) as exc:
            self._drop_session(exc)
            return None

    def _drop_session(self, exc: BaseException) -> None:
        log.warning("%s: SQL session lost (%s); reconnecting", self.name, redact(str(exc)).splitlines()[0][:200])
        if self._session is not None:
            self._session.close(5)
        self._session = None


def _summary(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("message_type") == "summary":
                return obj
    return {}


def ship_policy(settings: Settings, policy: Policy, stop: threading.Event, *, source: str | None = None,
                send: Callable[[Event], None] | None = None) -> None:
    """`drtool wal-ship POLICY`: run the shippers of a policy's PITR sources until `stop` is set."""
    from drtool.errors import UsageError

    sources = [s for s in pitr_sources(policy) if source is None or s.name == source]
    if not sources:
        raise UsageError(f"policy {policy.name!r} has no PostgreSQL source with pitr:"
                         + (f" named {source!r}" if source else ""),
                         hint="add `pitr: {wal_ship: 60s}` to the source's postgres: block")
    shippers = [WalShipper(settings, policy, s, send=send) for s in sources]
    for shipper in shippers:
        shipper.start()
    threads = [threading.Thread(target=run_until, args=(sh, stop), name=f"wal-{sh.name}", daemon=True)
               for sh in shippers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_until(shipper: WalShipper, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            try:
                shipper.step()
            except Exception:
                log.exception("%s: shipping round failed", shipper.name)
            stop.wait(TICK_S)
    finally:
        shipper.finish()
