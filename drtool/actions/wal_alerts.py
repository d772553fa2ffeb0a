"""The WAL shipper's alerts: each condition notifies once when it starts and once when it ends.

    alerts = Alerts(notifier.send, "siak")
    alerts.raise_("spool", "wal_spool_full", "siak/db: the WAL spool ... is full")   # once, however often asked
    alerts.clear("spool", "siak/db: the WAL spool drained")                          # wal_ship_recovered

Kinds (drtool/notify.py FAILURE_KINDS): wal_ship_failed, wal_spool_full, wal_gap,
wal_receiver_failed; the end of any of them is wal_ship_recovered. Sending never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from drtool.notify import Event

log = logging.getLogger(__name__)


class Alerts:
    """Each condition alerts once when it starts and once when it ends."""

    def __init__(self, send: Callable[[Event], None], policy: str) -> None:
        self._send, self._policy = send, policy
        self.active: set[str] = set()

    def raise_(self, key: str, kind: str, message: str, **details: Any) -> None:
        if key in self.active:
            return
        self.active.add(key)
        log.error("%s", message)
        self._emit(Event(kind, message, policy=self._policy, details=details))

    def clear(self, key: str, message: str) -> None:
        if key not in self.active:
            return
        self.active.discard(key)
        log.info("%s", message)
        self._emit(Event("wal_ship_recovered", message, policy=self._policy))

    def _emit(self, event: Event) -> None:
        try:
            self._send(event)
        except Exception:
            log.exception("sending %s failed", event.kind)
