"""The daemon: a loop that starts due jobs, watches the RPO, and obeys signals.

The parts it wires together (each in its own module):
    jobs.py      the jobs from the settings, `conflicts`, `next_subset` (pure)
    planner.py   which due jobs may start now (pure rules + the queue's memory)
    state.py     first sight / last attempt / check rotation (0600 JSON)
    dispatch.py  what each job kind runs; every kind returns a RunRecord
    watchdog.py  the RPO watchdog (reads the repositories)
    wal.py       the WAL shippers of PITR sources (continuous, one thread each)

Every job goes through the same actions as the CLI, so its record, offsite copy,
notifications and metrics come from the run lifecycle; the daemon itself notifies only
what no run reports: a job that failed before it could record itself, RPO breaches, and
RTO forecasts that breach their target within the horizon (once per policy and day).
After each job it logs one line with the outcome, duration, bytes and the first line of
any error, refreshes the metrics from the catalog and rebuilds the dashboard pages
(served on loopback with `--http 127.0.0.1:PORT` or `dashboard.listen`).

Signals: SIGTERM/SIGINT stop scheduling, wait `grace` seconds for running jobs, then set
their cancel events (the engine aborts restic so no partial snapshot is kept, and records
"cancelled"). SIGHUP reloads the settings; an invalid new configuration (a bad schedule,
an unknown time zone...) is logged and the old one kept.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from drtool.actions.daemon.dispatch import Dispatch, JobRequest, default_dispatch
from drtool.actions.daemon.jobs import MAINTENANCE, JobInfo, build_jobs
from drtool.actions.daemon.planner import Busy, Queue
from drtool.actions.daemon.state import DaemonState
from drtool.actions.daemon.wal import WalSupervisor
from drtool.actions.daemon.watchdog import RpoWatchdog, SnapshotTime, default_snapshot_time
from drtool.catalog import Catalog, RunRecord
from drtool.config.loader import Settings
from drtool.errors import DrtoolError, LockError, UsageError
from drtool.notify import Event, Notifier
from drtool.rotation import RotationState
from drtool.secrets import redact
from drtool.timezones import settings_timezone, settings_zone

log = logging.getLogger(__name__)

LOCK_RETRY = timedelta(seconds=60)       # another run holds the policy lock: look again later
POOL_ENQUEUE_SECONDS = 300               # how often a central daemon queues its fleet's due drills


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Running:
    info: JobInfo
    cancel: threading.Event
    future: Future | None = None
    started: datetime = field(default_factory=utcnow)


class Daemon:
    def __init__(self, settings: Settings, *, dispatch: Dispatch | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], datetime] = utcnow, snapshot_time: SnapshotTime = default_snapshot_time,
                 loader: Callable[[], Settings] | None = None, grace: float = 300.0, cancel_grace: float = 120.0,
                 tick_seconds: float = 1.0, watchdog_seconds: float = 300.0, metrics_port: int | None = None,
                 http: str | None = None) -> None:
        self.dispatch = dispatch or default_dispatch()
        self.clock = clock
        self.loader = loader
        self.grace, self.cancel_grace = grace, cancel_grace
        self.tick_seconds, self.watchdog_seconds = tick_seconds, watchdog_seconds
        self.metrics_port = metrics_port
        self.http = http
        self._forecast_sent: dict[str, str] = {}         # policy -> day its forecast alert went out
        self._notifier_override = notifier
        self._lock = threading.RLock()
        self._running: dict[str, Running] = {}
        self._retry_after: dict[str, datetime] = {}
        self._reading: dict[str, int] = {}               # repository -> watchdog reads in progress
        self._queue = Queue()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._watchdog_busy = threading.Lock()
        # (job id, start, end, status) of recent jobs, for tests and debugging; bounded for a long-lived daemon
        self.history: deque[tuple[str, datetime, datetime, str]] = deque(maxlen=1000)
        self._apply(settings)
        self.state = DaemonState(settings.state_dir)
        self.catalog = Catalog(settings.state_dir)
        self.rpo = RpoWatchdog(snapshot_time, self._send)
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="drtool-job")
        self.wal: WalSupervisor | None = None             # started by run(); PITR sources ship WAL continuously

    @property
    def snapshot_time(self) -> SnapshotTime:
        return self.rpo.snapshot_time

    @snapshot_time.setter
    def snapshot_time(self, fn: SnapshotTime) -> None:
        self.rpo.snapshot_time = fn

    def _apply(self, settings: Settings) -> None:
        jobs = build_jobs(settings)                       # raises on a bad schedule: caller keeps the old
        tz = settings_timezone(settings)                  # raises ConfigError on an unknown zone
        self.settings, self.jobs, self.tz = settings, jobs, tz
        self._queue.reset()
        self.notifier = self._notifier_override or Notifier(settings.config.notifications)

    # ---------------------------------------------------------- evaluation

    def last_runs(self, now: datetime, jobs: list[JobInfo] | None = None) -> dict[str, datetime]:
        """Reference time per job: newest of our attempt and the catalog's run; first sight if neither.

        One catalog read for all the jobs (not a query per job)."""
        catalog = self.catalog.last_started_by_job()
        refs: dict[str, datetime] = {}
        first_seen: dict[str, datetime] = {}
        for info in self.jobs if jobs is None else jobs:
            key = (info.policy, info.kind, info.job.name if info.kind == "drill" else None)
            known = [t for t in (self.state.get_time("attempts", info.job.id), catalog.get(key)) if t]
            if known:
                refs[info.job.id] = max(known, key=lambda t: t.timestamp())
                continue
            seen = self.state.get_time("first_seen", info.job.id)
            if seen is None:
                first_seen[info.job.id] = seen = now
            refs[info.job.id] = seen
        self.state.set_many("first_seen", first_seen)     # one write, not one per new job
        return refs

    def tick(self, now: datetime | None = None) -> list[str]:
        """Start every due job that fits (see planner.py); return the ids started."""
        now = now or self.clock()
        if self._stop.is_set():
            return []
        with self._lock:
            due = self._queue.due(self.jobs, now, self.tz, lambda jobs: self.last_runs(now, jobs))
            busy = Busy([r.info for r in self._running.values()], self.settings.config.max_concurrent_jobs,
                        self._reading, self._retry_after)
            start = self._queue.plan(due, {i.job.id: i for i in self.jobs}, now, busy)
            for info, item in start:
                self._start(info, item.slot, now)
        return [info.job.id for info, _ in start]

    def _start(self, info: JobInfo, slot: datetime, now: datetime) -> None:
        previous = self.state.get_time("attempts", info.job.id)
        self.state.set("attempts", info.job.id, now)      # before running: a crash still counts as the attempt
        self._queue.forget(info.job.id)
        running = Running(info, threading.Event(), started=now)
        self._running[info.job.id] = running
        log.info("starting %s (slot %s)", info.job.id, slot.isoformat())
        running.future = self._pool.submit(self._execute, running, previous)

    # ---------------------------------------------------------- running one job

    def _execute(self, running: Running, previous: datetime | None) -> str:
        info = running.info
        status = "failed"
        try:
            status = self._call(running, previous)
            return status
        finally:
            if status != "locked":
                self.write_metrics()                      # before the job counts as finished
                self.refresh_pages()
            with self._lock:
                self._running.pop(info.job.id, None)
                self._queue.forget(info.job.id)           # its reference moved (or went back: locked)
                self.history.append((info.job.id, running.started, self.clock(), status))

    def _call(self, running: Running, previous: datetime | None) -> str:
        info = running.info
        subset, position = None, 0
        rotation = RotationState(self.settings.state_dir)     # shared with `check --rotate` of exported units
        if info.kind == "check":
            subset, position = rotation.next(info.policy, self.settings.policies[info.policy].check.read_data_subset)
        try:
            record = self.dispatch[info.kind](JobRequest(info, self.settings, running.cancel, subset))
        except LockError as exc:
            # Someone else (a manual run) holds the policy: not an attempt, look again later.
            log.info("%s skipped: %s", info.job.id, exc)
            self.state.set("attempts", info.job.id, previous)
            self._retry_after[info.job.id] = self.clock() + LOCK_RETRY
            return "locked"
        except Exception as exc:  # noqa: BLE001 - one broken job must not stop the scheduler
            # No run record says what happened (it failed before the lifecycle could, or is a bug
            # the lifecycle already recorded): say it here, once.
            detail = str(exc) if isinstance(exc, DrtoolError) else f"{type(exc).__name__}: {exc}"
            log.error("%s failed: %s", info.job.id, redact(detail).splitlines()[0])
            log.debug("%s crashed", info.job.id, exc_info=True)
            self._send(Event(f"{info.kind}_failed", redact(f"{info.job.id} failed: {detail}"), policy=info.policy,
                             playbook=info.job.name if info.kind == "drill" else None))
            return "failed"
        self._log_outcome(info, record)
        if info.kind == "check" and record.status == "success" and subset and position:
            rotation.advance(info.policy, position)                  # advance only once a part was read
        return record.status

    def _log_outcome(self, info: JobInfo, record: RunRecord) -> None:
        """One line per finished job: outcome, duration, bytes, first line of any error."""
        error = (record.error or "").splitlines()[0][:300] if record.error else ""
        log.info("%s %s in %.1fs, %d bytes added, run %s%s", info.job.id, record.status, record.duration_s or 0.0,
                 record.bytes_added, record.id, f": {error}" if error else "",
                 extra={"job": info.job.id, "status": record.status, "run_id": record.id,
                        "duration_s": record.duration_s, "bytes_added": record.bytes_added})

    def _send(self, event: Event) -> None:
        try:
            self.notifier.send(event)
        except Exception:  # noqa: BLE001 - notification trouble is logged, never fatal
            log.exception("sending %s failed", event.kind)

    # ---------------------------------------------------------- watchdog

    def watchdog(self, now: datetime | None = None) -> list[str]:
        """Raise rpo_breach for every policy whose newest snapshot is older than its RPO; return them."""
        return self.rpo.round(self.settings, now or self.clock(), self._begin_read, self._end_read)

    def _begin_read(self, repository: str) -> bool:
        """Reading snapshots takes a restic lock; forget/prune and check lock exclusively, and restic
        0.14 does not retry a lock. So the watchdog and maintenance of one repository never overlap:
        the watchdog skips a repository under maintenance, and maintenance waits for the read;
        once it has waited READ_PATIENCE (planner.py), new reads are refused, so the reads end and
        it can start."""
        with self._lock:
            if any(r.info.kind in MAINTENANCE and r.info.repository == repository for r in self._running.values()):
                return False
            if repository in self._queue.wanted:          # maintenance waits for the reads to end
                return False
            self._reading[repository] = self._reading.get(repository, 0) + 1
            return True

    def _end_read(self, repository: str) -> None:
        with self._lock:
            left = self._reading.get(repository, 1) - 1
            if left > 0:
                self._reading[repository] = left
            else:
                self._reading.pop(repository, None)

    def _watchdog_async(self) -> None:
        # Reading snapshots can take seconds: never block the ticking thread.
        if self._watchdog_busy.acquire(blocking=False):
            def run() -> None:
                try:
                    self.watchdog()
                    self.forecast_alerts()
                    self.write_metrics()
                finally:
                    self._watchdog_busy.release()
            threading.Thread(target=run, name="drtool-watchdog", daemon=True).start()

    def forecast_alerts(self, now: datetime | None = None) -> list[str]:
        """Alert once per policy and day when its RTO forecast breaches the target within the horizon."""
        from drtool.actions.forecast import forecast_alerts

        now = now or self.clock()
        try:
            alerts = forecast_alerts(self.settings, self.catalog, now=now)
        except Exception as exc:  # noqa: BLE001 - a forecast never stops the scheduler
            log.warning("forecast could not be computed: %s", redact(str(exc)))
            return []
        day = now.date().isoformat()
        sent = []
        for alert in alerts:
            if self._forecast_sent.get(alert.policy) == day:
                continue
            self._forecast_sent[alert.policy] = day
            self._send(Event("forecast_breach", alert.message, policy=alert.policy, details=alert.to_dict()))
            sent.append(alert.policy)
        return sent

    def enqueue_pool_drills(self) -> list[str]:
        """drtool.yaml names a fleet file with a `pool:`: queue its due fire drills (drtool.actions.pool)."""
        from drtool.actions.pool.enqueue import enqueue_for_settings

        return enqueue_for_settings(self.settings)

    # ---------------------------------------------------------- metrics and pages

    def metrics_text(self) -> str:
        from drtool.actions.metrics import collect
        from drtool.report.prometheus import render

        return render(*collect(self.settings, self.catalog), now=self.clock())

    @property
    def pages_dir(self) -> Path:
        configured = self.settings.config.dashboard.out_dir
        return Path(configured) if configured else self.settings.state_dir / "dashboard"

    def refresh_pages(self) -> None:
        """Rebuild the dashboard when it is served or configured (never raises)."""
        if self.http or self.settings.config.dashboard.listen or self.settings.config.dashboard.out_dir:
            from drtool.actions.dashboard import refresh_dashboard
            refresh_dashboard(self.settings, self.pages_dir)

    def write_metrics(self) -> None:
        from drtool.actions.lifecycle import update_metrics

        try:
            update_metrics(self.settings, self.catalog)
        except Exception as exc:  # noqa: BLE001 - metrics never stop the scheduler
            log.warning("cannot write metrics: %s", redact(str(exc)))

    # ---------------------------------------------------------- reload and stop

    def reload(self) -> bool:
        """Swap in freshly loaded settings; keep the old ones (and say why) if they are invalid."""
        if self.loader is None:
            return False
        try:
            self._apply(self.loader())
        except (DrtoolError, ValueError, KeyError) as exc:
            log.error("configuration reload failed; keeping the previous configuration:\n%s", exc)
            return False
        log.info("configuration reloaded: %d scheduled job(s)", len(self.jobs))
        if self.wal is not None:
            self.wal.apply(self.settings)
        return True

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def shutdown(self) -> None:
        """Let running jobs finish within `grace`, then cancel them and wait `cancel_grace`."""
        self._stop.set()
        with self._lock:                                  # jobs remove themselves as they finish
            futures = [r.future for r in self._running.values() if r.future]
        _done, pending = wait(futures, timeout=self.grace)
        if pending:
            with self._lock:
                for r in self._running.values():
                    log.warning("grace period over: cancelling %s", r.info.job.id)
                    r.cancel.set()
            _done, pending = wait(pending, timeout=self.cancel_grace)
        if pending:
            log.error("%d job(s) did not stop after cancellation: %s", len(pending), ", ".join(self.running()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.write_metrics()

    # ---------------------------------------------------------- main loop

    def run(self, *, install_signals: bool = True) -> int:
        import schedule

        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        server = self._start_metrics_server()
        pages = self._start_pages_server()
        self.wal = WalSupervisor(self._send, (self._begin_read, self._end_read))
        self.wal.apply(self.settings)
        scheduler = schedule.Scheduler()
        scheduler.every(self.tick_seconds).seconds.do(self._guarded, self.tick)
        scheduler.every(self.watchdog_seconds).seconds.do(self._guarded, self._watchdog_async)
        if self.settings.config.fleet:                    # a central site: its fleet's due drills go to the pool
            scheduler.every(POOL_ENQUEUE_SECONDS).seconds.do(self._guarded, self.enqueue_pool_drills)
        log.info("drtool daemon: %d job(s), times in %s", len(self.jobs), settings_zone(self.settings).describe())
        self._guarded(self.tick)                          # catch-up right away, not a tick later
        self._guarded(self._watchdog_async)
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                scheduler.run_pending()
                self._stop.wait(0.2)
        finally:
            log.info("drtool daemon: stopping; %d job(s) running", len(self.running()))
            self.wal.stop()                               # each ships what it received, then stops
            self.shutdown()
            for running_server in (server, pages):
                if running_server:
                    running_server.stop()
        return 0

    def _guarded(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the loop must survive any one failure
            log.exception("scheduler step %s failed", getattr(fn, "__name__", fn))

    def _start_metrics_server(self) -> Any:
        from drtool.report.prometheus import MetricsServer

        port = self.metrics_port or self.settings.config.metrics.port
        if not port:
            return None
        try:
            return MetricsServer(port, self.metrics_text).start()
        except OSError as exc:
            raise DrtoolError(f"cannot listen for metrics on 127.0.0.1:{port}: {exc.strerror}",
                              hint="choose another --metrics-port") from None


    def _start_pages_server(self) -> Any:
        listen = self.http or self.settings.config.dashboard.listen
        if not listen:
            return None
        from drtool.report.server import DashboardServer

        host, _, port = listen.rpartition(":")
        token = self.settings.config.dashboard.token
        self.refresh_pages()
        try:
            server = DashboardServer(self.pages_dir, host.strip("[]") or "127.0.0.1", int(port),
                                     token=token.resolve().reveal() if token else None).start()
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot serve the dashboard on {listen}: {getattr(exc, 'strerror', None) or exc}",
                             hint="use a free loopback address such as 127.0.0.1:8088") from None
        log.info("dashboard served on %s%s", server.url, " (token required)" if token else "")
        return server


def run_daemon(config_path: str | None, *, metrics_port: int | None = None, http: str | None = None) -> int:
    from drtool.config import load_settings

    settings = load_settings(config_path)
    daemon = Daemon(settings, loader=lambda: load_settings(config_path), metrics_port=metrics_port, http=http,
                    grace=env_seconds("DRTOOL_DAEMON_GRACE", 300.0),
                    watchdog_seconds=env_seconds("DRTOOL_WATCHDOG_SECONDS", 300.0))
    return daemon.run()


def env_seconds(name: str, default: float, environ: Mapping[str, str] = os.environ) -> float:
    value = environ.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:                                  # also rejects nan
        raise UsageError(f"{name}={value!r} is not a number of seconds",
                         hint=f"set {name} to a number such as 300, or unset it for the default")
    return seconds
