"""The RPO watchdog: is every policy's newest complete snapshot younger than its RPO?

It reads the repository itself (what is really offsite), whether or not any job ran, and
raises `rpo_breach` once per breach (not once per round), then `rpo_recovered`. It never
reads a repository that forget/prune or check is working on (restic 0.14 does not retry a
lock): the daemon's `begin_read` says whether it may, and maintenance waits for the read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from drtool.config.loader import Settings
from drtool.notify import Event
from drtool.secrets import redact

log = logging.getLogger(__name__)

SnapshotTime = Callable[[Settings, Any], "datetime | None"]


def default_snapshot_time(settings: Settings, policy: Any) -> datetime | None:
    from drtool.actions.status import newest_snapshot_time
    return newest_snapshot_time(settings, policy)


class RpoWatchdog:
    def __init__(self, snapshot_time: SnapshotTime, send: Callable[[Event], None]) -> None:
        self.snapshot_time = snapshot_time
        self._send = send
        self._breached: set[str] = set()

    def round(self, settings: Settings, now: datetime, begin_read: Callable[[str], bool],
              end_read: Callable[[str], None]) -> list[str]:
        """One look at every policy with an RPO; returns the policies in breach."""
        breached = []
        for policy in settings.policies.values():
            if policy.targets.rpo is None:
                continue
            if not begin_read(policy.repository):
                log.debug("watchdog: %s skipped, maintenance is running on %s", policy.name, policy.repository)
                continue
            try:
                newest = self.snapshot_time(settings, policy)
            except Exception as exc:  # noqa: BLE001 - an unreachable repository is reported, not fatal
                log.warning("watchdog: cannot read snapshots of %s: %s", policy.name, redact(str(exc)))
                continue
            finally:
                end_read(policy.repository)
            age = None if newest is None else (now - newest).total_seconds()
            if age is None or age > policy.targets.rpo:
                breached.append(policy.name)
                self._breach(policy.name, age, policy.targets.rpo)
            elif policy.name in self._breached:
                self._breached.discard(policy.name)
                self._send(Event("rpo_recovered", f"policy {policy.name}: newest snapshot is within its RPO again",
                                 policy=policy.name))
        return breached

    def _breach(self, policy: str, age: float | None, rpo: float) -> None:
        if policy in self._breached:
            return                                        # once per breach, not once per watchdog round
        self._breached.add(policy)
        what = "has no snapshot" if age is None else f"newest snapshot is {age / 3600:.1f}h old"
        self._send(Event("rpo_breach", f"policy {policy}: {what}; RPO target is {rpo / 3600:.1f}h",
                         policy=policy, details={"snapshot_age_s": age, "rpo_target_s": rpo}))
