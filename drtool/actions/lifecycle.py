"""One run lifecycle for every kind of run (backup, forget, check, drill, kit verify, recover)
from every entry point (CLI, exported systemd/cron unit, daemon).

    with RunLifecycle(settings, "backup", policy.name, handle=handle, trigger=trigger) as lc:
        ...                       # the use case; raises a DrtoolError or calls lc.conclude()
    return lc.record

Entering records the run as "running" (with its pid), marks runs of dead drtool
processes "interrupted", and sends the start pings. Leaving maps the outcome to a
status by the exception's *type* (Cancelled -> cancelled, any other DrtoolError ->
failed, a bug -> failed and then InternalError), then, in this order:

1. notifications (webhooks, email, healthchecks with the duration, Apprise);
2. the local catalog (a catalog that cannot be written does not stop the rest: the
   run is still published offsite and a `state_failed` alert says what is wrong);
3. the signed record offsite, next to the repository;
4. the Prometheus textfile / Pushgateway, rebuilt from the catalog;
5. `state_dir/status.json`, the machine-readable summary of every policy's last runs.

Nothing in 1, 3, 4 or 5 can turn a good run into a failed one; each problem is noted
in the record (`details`) and logged. KeyboardInterrupt is recorded as cancelled and
re-raised; an unexpected exception is recorded as failed, notified, its traceback kept
in state_dir/crash-<run>.txt, and surfaces as one InternalError line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drtool.actions.common import RepoHandle, publish_offsite, restic_host
from drtool.catalog import Catalog, RunRecord, new_run_id, utcnow
from drtool.config.loader import Settings
from drtool.errors import Cancelled, DrtoolError, InternalError, StateError
from drtool.notify import RUN_KINDS, Delivery, Event, Notifier
from drtool.secrets import redact
from drtool.events import EventFn, Notice, RunRecorded, ignore

log = logging.getLogger(__name__)

SUFFIX = {"success": "succeeded", "failed": "failed", "cancelled": "cancelled", "interrupted": "interrupted"}
INTERRUPTED = ("drtool stopped before the run finished (killed, crashed, or the machine went down); "
               "nothing it was writing was kept as a backup")


class RunLifecycle:
    def __init__(self, settings: Settings, kind: str, policy: str, *, trigger: str = "manual",
                 handle: RepoHandle | None = None, emit: EventFn | None = None, run_id: str | None = None,
                 playbook: str | None = None, offsite_path: str | None = None,
                 offsite_body: Callable[[RunRecord], dict[str, Any]] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.handle = handle
        self.playbook = playbook
        self.emit = emit or ignore
        self.record = RunRecord(run_id or new_run_id(kind), policy, kind, "running", utcnow(), trigger=trigger)
        self.record.details["process"] = process_identity()
        if playbook:
            self.record.details["playbook"] = playbook
        self._offsite_path = offsite_path or f"runs/{self.record.id}.json"
        self._offsite_body = offsite_body or (lambda run: run.to_dict())
        self._notifier = notifier
        self._concluded: tuple[str, str | None] | None = None
        self.error: DrtoolError | None = None    # the typed error the run ended with (callers may re-raise it)
        self.catalog: Catalog | None = None
        self.on_failure: list[Callable[[RunRecord], None]] = []     # e.g. the policy's on_failure hooks

    # ------------------------------------------------------------ the body's side

    def conclude(self, status: str, error: str | None = None) -> None:
        """Set the outcome without raising (a drill that ran to its end but did not pass)."""
        self._concluded = (status, error)

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier(self.settings.config.notifications)
        return self._notifier

    # ------------------------------------------------------------ entering

    def __enter__(self) -> RunLifecycle:
        threading.Thread(target=_preload_exit_path, args=(self.record.kind,), daemon=True,
                         name="preload-exit").start()
        self.catalog = self._open_catalog()
        if self.catalog is not None:
            sweep_interrupted(self.settings, self.catalog, notifier=self.notifier)
            self._record_local()
        self._notify(f"{self.record.kind}_started", f"{self._what()} started")
        return self

    def _open_catalog(self) -> Catalog | None:
        try:
            catalog = Catalog(self.settings.state_dir)
        except StateError as exc:
            self._state_problem(exc)
            return None
        if catalog.recovered_from is not None:
            self.record.details["catalog_recovered_from"] = str(catalog.recovered_from)
            self._notify("state_failed", f"the local catalog was damaged and moved aside to {catalog.recovered_from}; "
                         "a new one was started (history remains in the signed records offsite)")
        return catalog

    # ------------------------------------------------------------ leaving

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        status, error = self._outcome(exc)
        run = self.record
        run.finish(status, error)
        if status != "success":
            for hook in self.on_failure:
                _quietly(f"on_failure step of {run.id}", lambda h=hook: h(run))
        self._notify(f"{run.kind}_{SUFFIX[status]}", self._summary(), duration_s=run.duration_s)
        self._record_local()
        if run.kind in ("backup", "check") and self.catalog is not None:
            _quietly("3-2-1-1-0", self._assess_rule_32110)     # reads the catalog this run is now in
        if self.handle is not None:
            publish_offsite(self.handle, self._offsite_path, self._offsite_body(run), run.details, self.emit)
            if run.details.get("offsite_record") and self.catalog is not None:   # the bucket answers again
                _quietly("offsite backlog", lambda: self._publish_backlog(run))
        self._record_local()
        if self.catalog is not None:
            _quietly("metrics", lambda: update_metrics(self.settings, self.catalog))
            _quietly("status file", lambda: write_status_file(self.settings, self.catalog))
        self.emit(RunRecorded(run.id, run.status, "local_record_error" not in run.details,
                              run.details.get("offsite_record")))
        if exc is None or isinstance(exc, DrtoolError):
            return True                   # the outcome is in the record; the caller reads it
        if isinstance(exc, Exception):
            raise InternalError(f"internal error in {run.kind} {run.policy}: {type(exc).__name__}: {redact(str(exc))}"
                                f" (recorded as failed run {run.id})",
                                hint=self._crash_hint()) from exc
        return False                      # KeyboardInterrupt, SystemExit: recorded, then re-raised

    def _assess_rule_32110(self) -> None:
        from drtool.actions.status import recorded_rule_32110

        policy = self.settings.policies.get(self.record.policy)
        if policy is not None and self.catalog is not None:
            self.record.details["rule_32110"] = recorded_rule_32110(self.settings, policy, self.catalog)

    def _publish_backlog(self, run: RunRecord) -> None:
        from drtool.actions.offsite_backlog import publish_backlog

        assert self.catalog is not None and self.handle is not None
        late = publish_backlog(self.catalog, self.handle, run.policy, run.id)
        if late:
            run.details["offsite_backlog_published"] = late

    def _outcome(self, exc: BaseException | None) -> tuple[str, str | None]:
        if exc is None:
            return self._concluded or ("success", None)
        if isinstance(exc, DrtoolError):
            self.error = exc
            # The CLI's exit code comes from the error's class (2: bad configuration, e.g. a
            # secret that does not resolve at run time), as for errors raised outside a run.
            self.record.details["exit_code"] = exc.exit_code
            self.record.details["error_type"] = type(exc).__name__
        if isinstance(exc, Cancelled):
            return "cancelled", str(exc)
        if isinstance(exc, DrtoolError):
            return "failed", str(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return "cancelled", "interrupted (Ctrl-C or a stop signal) before the run finished"
        self._keep_crash(exc)
        return "failed", f"internal error: {type(exc).__name__}: {exc}"

    def _keep_crash(self, exc: BaseException) -> None:
        text = redact("".join(traceback.format_exception(exc)))
        log.debug("run %s crashed:\n%s", self.record.id, text)
        try:
            path = self.settings.state_dir / f"crash-{self.record.id}.txt"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            self.record.details["crash_report"] = str(path)
        except OSError:
            pass

    def _crash_hint(self) -> str:
        where = self.record.details.get("crash_report")
        return (f"this is a bug in drtool; the traceback is in {where}" if where
                else "this is a bug in drtool; run again with -vv to see the traceback")

    # ------------------------------------------------------------ pieces

    def _what(self) -> str:
        name = self.playbook or self.record.policy
        return f"{self.record.kind} {name} (run {self.record.id})"

    def _summary(self) -> str:
        run = self.record
        head = f"{self._what()} {run.status}"
        if run.duration_s is not None:
            head += f" in {run.duration_s:.1f}s"
        if run.error:
            head += ": " + run.error.splitlines()[0][:500]
        return head

    def _record_local(self) -> None:
        if self.catalog is None:
            return
        try:
            self.catalog.record(self.record)
        except StateError as exc:
            self.catalog = None           # do not try again in this run; say it once
            self._state_problem(exc)

    def _state_problem(self, exc: StateError) -> None:
        self.record.details["local_record_error"] = str(exc)
        self.emit(Notice(f"run not recorded locally: {exc.message}"))
        self._notify("state_failed", f"{self._what()}: drtool's local state is unusable: {exc.message}"
                     + (f" ({exc.hint})" if exc.hint else ""))

    def notify(self, kind: str, message: str, **extra: Any) -> None:
        """An extra event about this run (e.g. rto_breach), delivered and noted in its record."""
        self._notify(kind, message, **extra)

    def _notify(self, kind: str, message: str, **extra: Any) -> None:
        deliveries = send_event(self.notifier, Event(kind, message, policy=self.record.policy, playbook=self.playbook,
                                                     run_id=self.record.id, **extra))
        if deliveries:
            self.record.details.setdefault("notifications", []).extend(
                {"event": kind, **d.to_dict()} for d in deliveries)


def send_event(notifier: Notifier, event: Event) -> list[Delivery]:
    try:
        return notifier.send(event)
    except Exception:  # noqa: BLE001 - notification trouble is logged, never fatal
        log.exception("sending %s failed", event.kind)
        return []


# What leaving a run imports (signing, the offsite record, the 3-2-1-1-0 letters): ~60 modules,
# cryptography among them. Imported while the run works, they are off the end of every run.
_EXIT_PATH = ("drtool.crypto.signing", "cryptography.hazmat.primitives.asymmetric.ed25519",
              "cryptography.hazmat.primitives.serialization", "drtool.offsite", "drtool.storage.s3",
              "drtool.storage.s3_put", "encodings.idna")
_RULE_32110 = ("drtool.actions.status", "drtool.rule32110")


def _preload_exit_path(kind: str) -> None:
    import importlib

    for name in _EXIT_PATH + (_RULE_32110 if kind in ("backup", "check") else ()):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - only a head start: leaving the run imports it again and reports
            log.debug("preloading %s failed", name, exc_info=True)


def _quietly(what: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - after the run: logged, never fatal
        log.warning("%s could not be updated: %s", what, redact(str(exc)))


# ---------------------------------------------------------------- dead runs

def process_identity(pid: int | None = None) -> dict[str, Any]:
    """pid, its start time (boot ticks: a reused pid has another) and the host, for liveness checks."""
    pid = pid or os.getpid()
    return {"pid": pid, "start": _start_ticks(pid), "host": socket.gethostname()}


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[19])


def is_alive(identity: dict[str, Any]) -> bool:
    """Is the process that wrote this identity still running? Other hosts' runs count as alive."""
    if identity.get("host") != socket.gethostname():
        return True
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return False
    return _start_ticks(pid) is not None and _start_ticks(pid) == identity.get("start")


def sweep_interrupted(settings: Settings, catalog: Catalog, *, notifier: Notifier | None = None) -> list[RunRecord]:
    """Mark runs of dead drtool processes "interrupted", publish and announce them, and list their
    snapshots as debris for the next backup of their repository to remove."""
    try:
        running = catalog.running()
    except StateError:
        return []
    dead = [r for r in running if not is_alive(r.details.get("process") or {})]
    for run in dead:
        run.finish("interrupted", INTERRUPTED)
        run.details["interrupted_detected_by"] = process_identity()
        policy = settings.policies.get(run.policy)
        try:
            catalog.record(run)
            if policy is not None and run.kind == "backup":
                url = settings.config.repositories[policy.repository].url
                catalog.add_debris(run.id, url, [f"policy={policy.name}", f"run={run.id}"], "interrupted")
        except StateError as exc:
            log.warning("cannot mark run %s as interrupted: %s", run.id, exc)
            continue
        if policy is not None:
            from drtool.actions.common import open_repo
            _quietly("offsite record of an interrupted run", lambda r=run, p=policy: publish_offsite(
                open_repo(settings, p.repository), f"{'drills' if r.kind == 'drill' else 'runs'}/{r.id}.json",
                r.to_dict(), {}, None))
        if notifier is not None:
            kind = f"{run.kind}_interrupted" if run.kind in RUN_KINDS else "state_failed"
            send_event(notifier, Event(kind, f"{run.kind} {run.policy} (run {run.id}) was interrupted: {INTERRUPTED}",
                                       policy=run.policy, run_id=run.id))
    return dead


# ---------------------------------------------------------------- metrics and status file

def update_metrics(settings: Settings, catalog: Catalog) -> None:
    """Rewrite the textfile and/or push, from the catalog (so every run, CLI or daemon, counts)."""
    cfg = settings.config.metrics
    if not cfg.textfile and not cfg.pushgateway:
        return
    from drtool.actions.metrics import collect
    from drtool.report.prometheus import push, registry, write_textfile

    reg = registry(*collect(settings, catalog), now=utcnow())
    if cfg.textfile:
        write_textfile(cfg.textfile, reg)
    if cfg.pushgateway:
        push(cfg.pushgateway, reg, instance=restic_host(settings))


def write_status_file(settings: Settings, catalog: Catalog) -> Path:
    """state_dir/status.json: per policy, the last run of each kind (what monitoring scripts read)."""
    policies: dict[str, Any] = {}
    for name in sorted(settings.policies):
        runs: dict[str, Any] = {}
        for kind in ("backup", "forget", "check", "drill", "copy", "lock-extend"):
            last = catalog.last_run(name, kind)
            if last is not None:
                runs[kind] = {"id": last.id, "status": last.status, "started_at": last.started_at.isoformat(),
                              "finished_at": last.finished_at.isoformat() if last.finished_at else None,
                              "duration_s": last.duration_s,
                              "error": last.error.splitlines()[0][:300] if last.error else None}
        good = catalog.last_run(name, "backup", status="success")
        policies[name] = {"last_runs": runs, "last_good_backup": good.started_at.isoformat() if good else None}
    data = {"updated_at": utcnow().isoformat(), "host": restic_host(settings), "policies": policies}
    path = settings.state_dir / "status.json"
    fd, tmp = tempfile.mkstemp(prefix=".status.", dir=settings.state_dir)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.chmod(tmp, 0o644)      # monitoring reads it; it holds no secrets (errors are redacted)
    os.replace(tmp, path)
    return path
