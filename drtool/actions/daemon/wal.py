"""The daemon's WAL shippers: one thread per PITR source, kept running, reconfigured on SIGHUP.

    wal = WalSupervisor(send, gate)      # gate: the daemon's begin_read/end_read for a repository
    wal.apply(settings)                  # start, restart (changed settings) or stop shippers
    wal.stop()                           # SIGTERM: each stops receiving and ships what arrived

A shipper that cannot start (the database is down when the daemon starts) or whose loop
fails is started again every RESTART_S; after RESTART_ALERT_AFTER failed starts in a row it
raises `wal_receiver_failed` once. Each batch goes through `gate`, so a batch and
forget/prune or check of the same repository never overlap (restic 0.14 does not wait for
a lock): a batch is postponed while maintenance runs, and maintenance waits for a batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from drtool.actions.wal_ship import Gate, WalShipper, pitr_sources, run_until
from drtool.config.loader import Settings
from drtool.errors import DrtoolError
from drtool.notify import Event
from drtool.secrets import redact

log = logging.getLogger(__name__)

RESTART_S = 30.0
RESTART_ALERT_AFTER = 3


@dataclass
class _Running:
    thread: threading.Thread
    stop: threading.Event
    config: str                          # the source's and repository's settings when it started


class WalSupervisor:
    def __init__(self, send: Callable[[Event], None], gate: Gate | None = None, *,
                 factory: Callable[..., WalShipper] = WalShipper, restart_s: float = RESTART_S) -> None:
        self._send, self._gate, self._factory, self._restart_s = send, gate, factory, restart_s
        self._running: dict[tuple[str, str], _Running] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(f"{p}/{s}" for p, s in self._running)

    def apply(self, settings: Settings) -> None:
        """Make the running shippers match the PITR sources of `settings`."""
        wanted = {(p.name, s.name): (p, s, _config(settings, p, s))
                  for p in settings.policies.values() for s in pitr_sources(p)}
        with self._lock:
            for key in [k for k, r in self._running.items() if k not in wanted or wanted[k][2] != r.config]:
                self._stop_one(key)
            for key, (policy, source, config) in wanted.items():
                if key not in self._running:
                    stop = threading.Event()
                    thread = threading.Thread(target=self._keep_running, args=(settings, policy, source, stop),
                                              name=f"wal-{policy.name}-{source.name}", daemon=True)
                    self._running[key] = _Running(thread, stop, config)
                    thread.start()

    def stop(self) -> None:
        with self._lock:
            for key in list(self._running):
                self._stop_one(key)

    def _stop_one(self, key: tuple[str, str]) -> None:
        running = self._running.pop(key)
        running.stop.set()
        running.thread.join(120)
        if running.thread.is_alive():
            log.error("WAL shipper %s/%s did not stop within 120s", *key)

    def _keep_running(self, settings: Settings, policy, source, stop: threading.Event) -> None:  # noqa: ANN001
        failures = 0
        while not stop.is_set():
            try:
                shipper = self._factory(settings, policy, source, send=self._send, gate=self._gate)
                shipper.start()
            except DrtoolError as exc:
                failures += 1
                log.warning("WAL shipper %s/%s cannot start (%d): %s", policy.name, source.name, failures,
                            redact(exc.message.splitlines()[0]))
                if failures == RESTART_ALERT_AFTER:
                    self._alert(policy.name, source.name, exc)
                stop.wait(self._restart_s)
                continue
            failures = 0
            try:
                run_until(shipper, stop)
            except Exception:  # noqa: BLE001 - a broken shipper is restarted, never the daemon's end
                log.exception("WAL shipper %s/%s failed; starting it again", policy.name, source.name)
                stop.wait(self._restart_s)

    def _alert(self, policy: str, source: str, exc: DrtoolError) -> None:
        try:
            self._send(Event("wal_receiver_failed", redact(f"{policy}/{source}: WAL shipping cannot start: "
                                                           f"{exc.message.splitlines()[0]}"), policy=policy))
        except Exception:  # noqa: BLE001
            log.exception("sending wal_receiver_failed failed")


def _config(settings: Settings, policy, source) -> str:  # noqa: ANN001
    repo = settings.config.repositories[policy.repository]
    return repr((source.model_dump(), repo.url, policy.repository, settings.config.hostname))
