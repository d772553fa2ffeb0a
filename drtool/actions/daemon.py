"""Use case: `drtool daemon`, the nightly scheduler.

The `schedule` library ticks (every second); at each tick the pure schedule
math (drtool.schedule_math) decides which jobs are due from the last runs
(catalog + this daemon's own attempt log), so a machine that was down runs
each missed job once on start. A job found not due is skipped until its next
slot (or until it runs, finishes, or the settings reload), so a quiet tick is
one comparison per job and reads nothing; the catalog is read once, grouped,
only on ticks that evaluate some job. Jobs run in a bounded thread pool under
conflict rules (see `conflicts`). Job execution goes through a dispatch table
(kind -> callable) so the scheduling logic is tested with fakes.

Signals: SIGTERM stops scheduling, waits `grace` seconds for running jobs, then
sets their cancel events (the engine aborts restic so no partial snapshot is
kept, and records "cancelled"). SIGHUP reloads the settings; an invalid new
configuration is logged and the old one kept.

A watchdog raises an RPO breach from the newest snapshot's age, whether or not
any job ran, and metrics are refreshed after every job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from drtool.catalog import Catalog
from drtool.config.loader import Settings
from drtool.errors import DrtoolError, LockError, UsageError
from drtool.notify import Event, Notifier
from drtool.report.prometheus import MetricsServer, PlaybookMetrics, PolicyMetrics, render, write_textfile
from drtool.schedule_math import KIND_ORDER, Due, Job, due_window, parse_schedule
from drtool.secrets import redact
from drtool.timezones import settings_timezone  # one effective zone for daemon, show and exports

log = logging.getLogger(__name__)

MAINTENANCE = ("forget", "check")
LOCK_RETRY = timedelta(seconds=60)       # another run holds the policy lock: look again later


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- jobs from settings

@dataclass(frozen=True)
class JobInfo:
    job: Job
    policy: str                          # the policy the job works on (a drill's playbook.policy)
    repository: str

    @property
    def kind(self) -> str:
        return self.job.kind


def build_jobs(settings: Settings) -> list[JobInfo]:
    """Every scheduled job: backup/forget/check per policy, drill per playbook."""
    jobs: list[JobInfo] = []
    for policy in settings.policies.values():
        for kind, expr in (("backup", policy.schedule), ("forget", policy.forget_schedule),
                           ("check", policy.check.schedule)):
            if expr:
                jobs.append(JobInfo(Job(f"{kind}:{policy.name}", parse_schedule(expr)), policy.name, policy.repository))
    for playbook in settings.playbooks.values():
        if playbook.schedule and playbook.policy in settings.policies:
            repo = settings.policies[playbook.policy].repository
            jobs.append(JobInfo(Job(f"drill:{playbook.name}", parse_schedule(playbook.schedule)), playbook.policy, repo))
    return jobs


def conflicts(a: JobInfo, b: JobInfo) -> bool:
    """May `a` not start while `b` runs?

    - the same job never runs twice at once;
    - a drill of policy P never overlaps P's backup (it would restore a snapshot being made);
    - forget/check never run beside anything else on the same repository
      (prune rewrites packs that a backup, restore or check is reading).
    """
    if a.job.id == b.job.id:
        return True
    if {a.kind, b.kind} == {"backup", "drill"} and a.policy == b.policy:
        return True
    return (a.kind in MAINTENANCE or b.kind in MAINTENANCE) and a.repository == b.repository


def next_subset(configured: str | None, last: int) -> tuple[str | None, int]:
    """The read-data subset for the next check: 'n/N' rotates 1/N, 2/N... so a cycle reads all data."""
    if not configured:
        return None, last
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", configured)
    if not match or int(match.group(2)) < 1:
        return configured, last                          # 5%, 500M: restic picks; nothing to rotate
    total = int(match.group(2))
    n = last % total + 1
    return f"{n}/{total}", n


# ---------------------------------------------------------------- persisted daemon state

class DaemonState:
    """This daemon's own memory (0600 JSON in state_dir): first sight and last attempt of each job,
    and the check rotation. The catalog stays the record of runs; this covers attempts that crashed
    before recording and jobs that never ran."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon-state.json"
        self._lock = threading.Lock()
        self.data: dict[str, dict[str, Any]] = {"first_seen": {}, "attempts": {}, "check_rotation": {}}
        try:
            loaded = json.loads(self.path.read_text())
            for key in self.data:
                self.data[key].update(loaded.get(key, {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable daemon state %s (%s); jobs wait for their next slot", self.path, exc)

    def get_time(self, section: str, job_id: str) -> datetime | None:
        value = self.data[section].get(job_id)
        return datetime.fromisoformat(value) if value else None

    def set(self, section: str, key: str, value: Any) -> None:
        with self._lock:
            if value is None:
                self.data[section].pop(key, None)
            else:
                self.data[section][key] = value.isoformat() if isinstance(value, datetime) else value
            self._save()

    def set_many(self, section: str, values: Mapping[str, Any]) -> None:
        """Like set() for several keys, saved once."""
        if not values:
            return
        with self._lock:
            for key, value in values.items():
                self.data[section][key] = value.isoformat() if isinstance(value, datetime) else value
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".daemon-state.", dir=self.path.parent)   # mkstemp: 0600
        with os.fdopen(fd, "w") as handle:
            json.dump(self.data, handle, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- dispatch

@dataclass
class JobRequest:
    info: JobInfo
    settings: Settings
    cancel: threading.Event
    read_data_subset: str | None = None


Dispatch = Mapping[str, Callable[[JobRequest], Any]]


def default_dispatch() -> dict[str, Callable[[JobRequest], Any]]:
    """The real table: the engine's actions, imported when a job runs (keeps `drtool --help` fast)."""
    def backup(req: JobRequest) -> Any:
        from drtool.actions.backup import backup_policy
        return backup_policy(req.settings, req.settings.policy(req.info.policy), trigger="schedule",
                             cancel=req.cancel)

    def forget(req: JobRequest) -> Any:
        from drtool.actions.maintenance import forget_policy
        return forget_policy(req.settings, req.settings.policy(req.info.policy), trigger="schedule",
                             cancel=req.cancel)

    def check(req: JobRequest) -> Any:
        from drtool.actions.maintenance import check_repository
        return check_repository(req.settings, req.settings.policy(req.info.policy),
                                read_data_subset=req.read_data_subset, trigger="schedule", cancel=req.cancel)

    def drill(req: JobRequest) -> Any:
        # On SIGTERM the running step's processes are stopped, the rest skipped, scratch
        # instances torn down, and the drill recorded as cancelled.
        from drtool.actions.drill import run_drill
        return run_drill(req.settings, req.settings.playbook(req.info.job.name), trigger="schedule",
                         cancel=req.cancel)

    return {"backup": backup, "forget": forget, "check": check, "drill": drill}


def default_snapshot_time(settings: Settings, policy: Any) -> datetime | None:
    from drtool.actions.status import newest_snapshot_time
    return newest_snapshot_time(settings, policy)


@dataclass
class Outcome:
    status: str                          # success | failed | cancelled | locked
    error: str | None = None
    result: Any = None
    rto_achieved_s: float | None = None
    rto_target_s: float | None = None


def _attr(result: Any, *names: str) -> Any:
    data = result.to_dict() if hasattr(result, "to_dict") else {}
    for name in names:
        if hasattr(result, name):
            return getattr(result, name)
        if name in data:
            return data[name]
    return None


def outcome_of(result: Any) -> Outcome:
    """Normalise a RunRecord (status) or a DrillReport (passed) into one outcome."""
    status = _attr(result, "status")
    if status is None:
        passed = _attr(result, "passed")
        status = "success" if passed else "failed"
    error = _attr(result, "error")
    if status == "failed" and not error:
        error = redact(str(_attr(result, "summary", "failures") or "the run did not pass"))
    return Outcome(str(status), error, result, _attr(result, "rto_achieved_s", "rto_achieved"),
                   _attr(result, "rto_target_s", "rto_target"))


# ---------------------------------------------------------------- the daemon

@dataclass
class Running:
    info: JobInfo
    cancel: threading.Event
    future: Future | None = None
    started: datetime = field(default_factory=utcnow)


class Daemon:
    def __init__(self, settings: Settings, *, dispatch: Dispatch | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 snapshot_time: Callable[[Settings, Any], datetime | None] = default_snapshot_time,
                 loader: Callable[[], Settings] | None = None, grace: float = 300.0, cancel_grace: float = 120.0,
                 tick_seconds: float = 1.0, watchdog_seconds: float = 300.0, metrics_port: int | None = None) -> None:
        self.dispatch = dispatch or default_dispatch()
        self.clock = clock
        self.snapshot_time = snapshot_time
        self.loader = loader
        self.grace, self.cancel_grace = grace, cancel_grace
        self.tick_seconds, self.watchdog_seconds = tick_seconds, watchdog_seconds
        self.metrics_port = metrics_port
        self._notifier_override = notifier
        self._lock = threading.RLock()
        self._running: dict[str, Running] = {}
        self._retry_after: dict[str, datetime] = {}
        self._waiting: dict[str, datetime] = {}          # job id -> first slot it waited for
        # job id -> (evaluated at, not due before) timestamps: a job found not due is skipped until its
        # next slot; dropped when the job starts or finishes and on reload (its reference changes)
        self._not_before: dict[str, tuple[float, float]] = {}
        self._reading: dict[str, int] = {}               # repository -> watchdog reads in progress
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._breached: set[str] = set()
        self._snapshot_times: dict[str, datetime | None] = {}
        self._drills: dict[str, Outcome] = {}
        self._watchdog_busy = threading.Lock()
        # (job id, start, end, status) of recent jobs, for tests and debugging; bounded for a long-lived daemon
        self.history: deque[tuple[str, datetime, datetime, str]] = deque(maxlen=1000)
        self._apply(settings)
        self.state = DaemonState(settings.state_dir)
        self.catalog = Catalog(settings.state_dir)
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="drtool-job")

    def _apply(self, settings: Settings) -> None:
        jobs = build_jobs(settings)                       # raises on a bad schedule: caller keeps the old
        tz = settings_timezone(settings)
        self.settings, self.jobs, self.tz = settings, jobs, tz
        self._not_before = {}
        self.notifier = self._notifier_override or Notifier(settings.config.notifications)

    # ---------------------------------------------------------- evaluation

    def last_runs(self, now: datetime, jobs: list[JobInfo] | None = None) -> dict[str, datetime]:
        """Reference time per job: newest of our attempt and the catalog's run; first sight if neither.

        One catalog read for all the jobs (not a query per job)."""
        catalog = self.catalog.last_started_by_job()
        refs: dict[str, datetime] = {}
        first_seen: dict[str, datetime] = {}
        for info in self.jobs if jobs is None else jobs:
            known = [t for t in (self.state.get_time("attempts", info.job.id), self._catalog_time(info, catalog)) if t]
            if known:
                refs[info.job.id] = max(known, key=lambda t: t.timestamp())
                continue
            seen = self.state.get_time("first_seen", info.job.id)
            if seen is None:
                first_seen[info.job.id] = seen = now
            refs[info.job.id] = seen
        self.state.set_many("first_seen", first_seen)     # one write, not one per new job
        return refs

    @staticmethod
    def _catalog_time(info: JobInfo, catalog: Mapping[tuple[str, str, str | None], datetime]) -> datetime | None:
        return catalog.get((info.policy, info.kind, info.job.name if info.kind == "drill" else None))

    def tick(self, now: datetime | None = None) -> list[str]:
        """Start every due job that fits (concurrency limit, conflicts); return the ids started.

        No starvation: a due job that cannot start keeps its place in the queue (the slot it first
        waited for), and a later job that conflicts with it does not jump ahead. Without this, a
        forget or check on a repository that several policies back up to often could wait forever,
        since some backup of that repository is nearly always running when it looks.
        """
        now = now or self.clock()
        if self._stop.is_set():
            return []
        by_id = {i.job.id: i for i in self.jobs}
        started: list[str] = []
        with self._lock:
            due = self._due(now)
            due_ids = {d.job.id for d in due}
            self._waiting = {job_id: slot for job_id, slot in self._waiting.items() if job_id in due_ids}
            due.sort(key=lambda d: self._waiting.get(d.job.id, d.slot).timestamp())   # stable: kind order kept
            waiting_ahead: list[JobInfo] = []
            for item in due:
                info = by_id[item.job.id]
                reason = self._blocked(info, now, waiting_ahead)
                if reason is None:
                    self._waiting.pop(info.job.id, None)
                    self._start(info, item, now)
                    started.append(info.job.id)
                elif reason != "backing off":
                    self._waiting.setdefault(info.job.id, item.slot)
                    waiting_ahead.append(info)
        return started

    def _due(self, now: datetime) -> list[Due]:
        """Due jobs, as schedule_math.due_jobs() finds them; a job known not to be due before some instant is skipped
        without any schedule math or catalog read (a quiet tick is one comparison per job)."""
        ts = now.timestamp()
        not_before = self._not_before
        candidates = [i for i in self.jobs
                      if not ((w := not_before.get(i.job.id)) and w[0] <= ts < w[1])]
        if not candidates:
            return []
        refs = self.last_runs(now, candidates)
        due = []
        for info in candidates:
            job_id = info.job.id
            slot, until = due_window(info.job, refs.get(job_id), now, self.tz)
            if slot is None:
                not_before[job_id] = (ts, until)
            else:
                not_before.pop(job_id, None)
                due.append(Due(info.job, slot))
        due.sort(key=lambda d: (d.slot.timestamp(), KIND_ORDER.get(d.job.kind, 9), d.job.id))
        return due

    def _blocked(self, info: JobInfo, now: datetime, waiting_ahead: list[JobInfo]) -> str | None:
        """Why `info` may not start now (None: it may)."""
        retry = self._retry_after.get(info.job.id)
        if retry and now < retry:
            return "backing off"
        if len(self._running) >= self.settings.config.max_concurrent_jobs:
            return "concurrency limit"
        if any(conflicts(info, r.info) for r in self._running.values()):
            return "conflicts with a running job"
        if info.kind in MAINTENANCE and self._reading.get(info.repository):
            return "the watchdog is reading the repository"
        if any(conflicts(info, w) for w in waiting_ahead):
            return "queued behind a job waiting longer"
        return None

    def _start(self, info: JobInfo, due: Due, now: datetime) -> None:
        previous = self.state.get_time("attempts", info.job.id)
        self.state.set("attempts", info.job.id, now)      # before running: a crash still counts as the attempt
        self._not_before.pop(info.job.id, None)
        running = Running(info, threading.Event(), started=now)
        self._running[info.job.id] = running
        log.info("starting %s (slot %s)", info.job.id, due.slot.isoformat())
        running.future = self._pool.submit(self._execute, running, previous)

    def _execute(self, running: Running, previous: datetime | None) -> Outcome:
        info = running.info
        outcome = Outcome("failed", "the job did not finish")
        try:
            outcome = self._call(running)
            if outcome.status == "locked":
                # Someone else (a manual run) holds the policy: not an attempt, look again later.
                self.state.set("attempts", info.job.id, previous)
                self._retry_after[info.job.id] = self.clock() + LOCK_RETRY
            else:
                self._after_job(info, outcome)
            return outcome
        finally:
            with self._lock:
                self._running.pop(info.job.id, None)
                self._not_before.pop(info.job.id, None)   # its reference moved (or went back: locked)
                self.history.append((info.job.id, running.started, self.clock(), outcome.status))

    def _call(self, running: Running) -> Outcome:
        info = running.info
        subset, rotation = None, 0
        if info.kind == "check":
            configured = self.settings.policies[info.policy].check.read_data_subset
            subset, rotation = next_subset(configured, int(self.state.data["check_rotation"].get(info.policy, 0)))
        self._notify(f"{info.kind}_started", info, f"{info.job.id} started")
        try:
            outcome = outcome_of(self.dispatch[info.kind](JobRequest(info, self.settings, running.cancel, subset)))
        except LockError as exc:
            log.info("%s skipped: %s", info.job.id, exc)
            return Outcome("locked", str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken job must not stop the scheduler
            log.exception("%s crashed", info.job.id)
            detail = str(exc) if isinstance(exc, DrtoolError) else f"{type(exc).__name__}: {exc}"
            outcome = Outcome("failed", redact(detail))
        if info.kind == "check" and outcome.status == "success" and subset:
            self.state.set("check_rotation", info.policy, rotation)    # advance only once a part was read
        return outcome

    def _after_job(self, info: JobInfo, outcome: Outcome) -> None:
        suffix = {"success": "succeeded", "cancelled": "cancelled"}.get(outcome.status, "failed")
        kind = f"{info.kind}_{suffix}"
        if kind not in ("forget_cancelled", "check_cancelled"):
            message = f"{info.job.id} {outcome.status}" + (f": {outcome.error}" if outcome.error else "")
            self._notify(kind, info, message, run_id=_attr(outcome.result, "id"))
        if info.kind == "backup" and outcome.status == "success":
            self._snapshot_times[info.policy] = _attr(outcome.result, "started_at") or self.clock()
        if info.kind == "drill":
            self._drills[info.job.name] = outcome
            self._check_rto(info, outcome)
        self.write_metrics()

    def _check_rto(self, info: JobInfo, outcome: Outcome) -> None:
        achieved, target = outcome.rto_achieved_s, outcome.rto_target_s
        if achieved is not None and target is not None and achieved > target:
            self._notify("rto_breach", info, f"drill {info.job.name}: recovery took {achieved:.0f}s, "
                         f"target is {target:.0f}s", details={"rto_achieved_s": achieved, "rto_target_s": target})

    def _notify(self, kind: str, info: JobInfo | None, message: str, *, policy: str | None = None,
                **extra: Any) -> None:
        playbook = info.job.name if info and info.kind == "drill" else None
        try:
            self.notifier.send(Event(kind, message, policy=info.policy if info else policy,
                                     playbook=playbook, **extra))
        except Exception:  # noqa: BLE001 - notification trouble is logged, never fatal
            log.exception("sending %s failed", kind)

    # ---------------------------------------------------------- watchdog

    def watchdog(self, now: datetime | None = None) -> list[str]:
        """Raise rpo_breach for every policy whose newest snapshot is older than its RPO; return them."""
        now = now or self.clock()
        breached = []
        for policy in self.settings.policies.values():
            if policy.targets.rpo is None:
                continue
            if not self._begin_read(policy.repository):
                log.debug("watchdog: %s skipped, maintenance is running on %s", policy.name, policy.repository)
                continue
            try:
                newest = self.snapshot_time(self.settings, policy)
            except Exception as exc:  # noqa: BLE001 - an unreachable repository is reported, not fatal
                log.warning("watchdog: cannot read snapshots of %s: %s", policy.name, redact(str(exc)))
                continue
            finally:
                self._end_read(policy.repository)
            self._snapshot_times[policy.name] = newest
            age = None if newest is None else (now - newest).total_seconds()
            if age is None or age > policy.targets.rpo:
                breached.append(policy.name)
                self._raise_breach(policy.name, age, policy.targets.rpo)
            elif policy.name in self._breached:
                self._breached.discard(policy.name)
                self._notify("rpo_recovered", None, f"policy {policy.name}: newest snapshot is within its RPO again",
                             policy=policy.name)
        return breached

    def _begin_read(self, repository: str) -> bool:
        """Reading snapshots takes a restic lock; forget/prune and check lock exclusively, and restic
        0.14 does not retry a lock. So the watchdog and maintenance of one repository never overlap:
        the watchdog skips a repository under maintenance, and maintenance waits for the read."""
        with self._lock:
            if any(r.info.kind in MAINTENANCE and r.info.repository == repository for r in self._running.values()):
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

    def _raise_breach(self, policy: str, age: float | None, rpo: float) -> None:
        if policy in self._breached:
            return                                        # once per breach, not once per watchdog round
        self._breached.add(policy)
        what = "has no snapshot" if age is None else f"newest snapshot is {age / 3600:.1f}h old"
        self._notify("rpo_breach", None, f"policy {policy}: {what}; RPO target is {rpo / 3600:.1f}h",
                     policy=policy, details={"snapshot_age_s": age, "rpo_target_s": rpo})

    def _watchdog_async(self) -> None:
        # Reading snapshots can take seconds: never block the ticking thread.
        if self._watchdog_busy.acquire(blocking=False):
            def run() -> None:
                try:
                    self.watchdog()
                    self.write_metrics()
                finally:
                    self._watchdog_busy.release()
            threading.Thread(target=run, name="drtool-watchdog", daemon=True).start()

    # ---------------------------------------------------------- metrics

    def collect_metrics(self) -> tuple[list[PolicyMetrics], list[PlaybookMetrics]]:
        policies = []
        for p in self.settings.policies.values():
            last = self.catalog.last_run(p.name, "backup")
            good = self.catalog.last_run(p.name, "backup", status="success")
            newest = self._snapshot_times.get(p.name) or (good.started_at if good else None)
            policies.append(PolicyMetrics(
                p.name, p.repository, last_success=good.finished_at if good else None,
                last_duration_s=last.duration_s if last else None, last_bytes_added=last.bytes_added if last else None,
                last_ok=last.ok if last else None, newest_snapshot=newest, rpo_target_s=p.targets.rpo))
        playbooks = []
        for pb in self.settings.playbooks.values():
            got, last_run = self._last_drill(pb.name, pb.policy)
            target = (pb.targets.rto if pb.targets else None) or (got.rto_target_s if got else None)
            playbooks.append(PlaybookMetrics(
                pb.name, pb.policy, last_run=last_run,
                rto_achieved_s=got.rto_achieved_s if got else None, rto_target_s=target,
                passed=(got.status == "success") if got else None))
        return policies, playbooks

    def _last_drill(self, playbook: str, policy: str) -> tuple[Outcome | None, datetime | None]:
        """This daemon's last drill of the playbook, else the catalog's (metrics survive a restart)."""
        attempt = self.state.get_time("attempts", f"drill:{playbook}")
        if playbook in self._drills:
            return self._drills[playbook], attempt
        for run in self.catalog.runs(policy=policy, kind="drill", limit=20):
            details = run.details or {}
            if details.get("playbook") == playbook:
                rto = details.get("rto") or {}
                status = "success" if details.get("passed", run.ok) else "failed"
                return Outcome(status, run.error, None, rto.get("achieved_s"), rto.get("target_s")), run.started_at
        return None, attempt

    def metrics_text(self) -> str:
        return render(*self.collect_metrics(), now=self.clock())

    def write_metrics(self) -> None:
        path = self.settings.config.metrics.textfile
        if not path:
            return
        try:
            write_textfile(path, self.metrics_text())
        except OSError as exc:
            log.warning("cannot write metrics to %s: %s", path, exc)

    # ---------------------------------------------------------- reload and stop

    def reload(self) -> bool:
        """Swap in freshly loaded settings; keep the old ones (and say why) if they are invalid."""
        if self.loader is None:
            return False
        try:
            self._apply(self.loader())
        except (DrtoolError, ValueError) as exc:
            log.error("configuration reload failed; keeping the previous configuration:\n%s", exc)
            return False
        log.info("configuration reloaded: %d scheduled job(s)", len(self.jobs))
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
        scheduler = schedule.Scheduler()
        scheduler.every(self.tick_seconds).seconds.do(self._guarded, self.tick)
        scheduler.every(self.watchdog_seconds).seconds.do(self._guarded, self._watchdog_async)
        log.info("drtool daemon: %d job(s), timezone %s", len(self.jobs), self.tz.key)
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
            self.shutdown()
            if server:
                server.stop()
        return 0

    def _guarded(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the loop must survive any one failure
            log.exception("scheduler step %s failed", getattr(fn, "__name__", fn))

    def _start_metrics_server(self) -> MetricsServer | None:
        port = self.metrics_port or self.settings.config.metrics.port
        if not port:
            return None
        try:
            return MetricsServer(port, self.metrics_text).start()
        except OSError as exc:
            raise DrtoolError(f"cannot listen for metrics on 127.0.0.1:{port}: {exc.strerror}",
                              hint="choose another --metrics-port") from None


def run_daemon(config_path: str | None, *, metrics_port: int | None = None) -> int:
    from drtool.config import load_settings

    settings = load_settings(config_path)
    daemon = Daemon(settings, loader=lambda: load_settings(config_path), metrics_port=metrics_port,
                    grace=_env_seconds("DRTOOL_DAEMON_GRACE", 300.0),
                    watchdog_seconds=_env_seconds("DRTOOL_WATCHDOG_SECONDS", 300.0))
    return daemon.run()


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
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
