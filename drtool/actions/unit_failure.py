"""Use case: `drtool schedule on-failure UNIT`, what systemd's OnFailure= (and a cron line's `||`) runs.

A failed backup normally tells someone itself; this is the net under it, for the
failures a run cannot report: a configuration that no longer loads, a missing
secret, drtool killed by a timeout or the OOM killer. It sends one failure event
through the configured notifications, with the last recorded error of that job
when there is one. When even the configuration cannot load, nobody can be
notified: it then prints one line that names the unit and the cause (the journal
or cron's mail keeps it) and exits 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drtool.errors import UsageError

KIND_EVENTS = {"backup": "backup_failed", "forget": "forget_failed", "check": "check_failed", "drill": "drill_failed",
               "lock-extend": "lock-extend_failed", "wal-ship": "wal_ship_failed"}
_KINDS = "backup|forget|check|drill|lock-extend|wal-ship"


@dataclass(frozen=True)
class FailedUnit:
    unit: str                      # as systemd names it, or the job id from a cron line
    kind: str                      # backup | forget | check | drill | lock-extend | wal-ship | daemon
    name: str | None               # policy, playbook or (lock-extend) repository

    @property
    def event_kind(self) -> str:
        return KIND_EVENTS.get(self.kind, "unit_failed")


def parse_unit(text: str) -> FailedUnit:
    """drtool-backup-siak.service, drtool-daemon.service or backup:siak (pure)."""
    job = re.fullmatch(rf"({_KINDS}):(.+)", text)
    if job:
        return FailedUnit(text, job.group(1), job.group(2))
    if re.fullmatch(r"drtool-daemon(\.service)?", text):
        return FailedUnit(text, "daemon", None)
    unit = re.fullmatch(rf"drtool-({_KINDS})-(.+?)(\.service)?", text)
    if unit:
        return FailedUnit(text, unit.group(1), unit.group(2))
    raise UsageError(f"{text!r} is not a drtool unit or job",
                     hint="expected e.g. drtool-backup-siak.service, drtool-daemon.service or backup:siak")


def report_failure(config_path: str | None, text: str) -> tuple[int, str]:
    """Notify about the failed unit; returns (exit code, the one line for the journal)."""
    failed = parse_unit(text)
    from drtool.config import load_settings
    from drtool.errors import DrtoolError

    try:
        settings = load_settings(config_path)
    except DrtoolError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return 1, (f"drtool: unit {failed.unit} failed, and nobody could be notified: the configuration does not "
                   f"load ({first}); run `drtool validate`")
    reported = _already_reported(settings, failed)
    if reported:
        # The run recorded its failure and its own alert went out: one failure, one alert.
        return 0, f"drtool: {failed.unit} failed; run {reported} already recorded and notified it"
    cause = _last_error(settings, failed)
    message = f"{failed.unit} failed" + (f": {cause}" if cause else f" (see `journalctl -u {failed.unit}`)")
    from drtool.notify import Event, Notifier

    policy, playbook = _subject(settings, failed)
    deliveries = Notifier(settings.config.notifications).send(
        Event(failed.event_kind, message, policy=policy, playbook=playbook, details={"unit": failed.unit}))
    sent = sum(d.ok for d in deliveries)
    if not deliveries:
        return 1, f"drtool: {message}; no notification channel is configured for {failed.event_kind}"
    if sent < len(deliveries):
        return 1, f"drtool: {message}; notified {sent} of {len(deliveries)} channel(s)"
    return 0, f"drtool: {message}; notified {sent} channel(s)"


def _subject(settings, failed: FailedUnit) -> tuple[str | None, str | None]:  # noqa: ANN001
    if failed.kind == "drill":
        playbook = settings.playbooks.get(failed.name)
        return (playbook.policy if playbook else None), failed.name
    if failed.kind == "lock-extend":      # a repository's job, recorded under the first policy using it
        from drtool.actions.immutable import record_policy
        return record_policy(settings, failed.name or ""), None
    return failed.name, None


ALREADY_REPORTED_WITHIN_S = 600.0


def _last_run(settings, failed: FailedUnit):  # noqa: ANN001, ANN202 - RunRecord | None
    """The job's newest recorded run (None for the daemon, or when the catalog cannot be read)."""
    if failed.kind in ("daemon", "wal-ship"):     # long-running: no run record of their own
        return None
    from drtool.catalog import Catalog

    policy, playbook = _subject(settings, failed)
    try:
        runs = Catalog(settings.state_dir).runs(policy=policy, kind=failed.kind, limit=10)
    except Exception:  # noqa: BLE001 - a broken catalog must not stop the alert
        return None
    return next((r for r in runs if not playbook or r.details.get("playbook") in (None, playbook)), None)


def _already_reported(settings, failed: FailedUnit) -> str | None:  # noqa: ANN001
    """The id of the job's last run if it failed moments ago and its failure alert was delivered."""
    from drtool.catalog import utcnow

    run = _last_run(settings, failed)
    if run is None or run.status == "success" or run.finished_at is None:
        return None
    recent = (utcnow() - run.finished_at).total_seconds() < ALREADY_REPORTED_WITHIN_S
    delivered = any(d.get("ok") and d.get("event", "").endswith(("_failed", "_cancelled"))
                    for d in run.details.get("notifications", []))
    return run.id if recent and delivered else None


def _last_error(settings, failed: FailedUnit) -> str | None:  # noqa: ANN001
    """The first line of the job's last recorded error, if its last run failed."""
    run = _last_run(settings, failed)
    if run is not None and run.status != "success" and run.error:
        return run.error.splitlines()[0]
    return None
