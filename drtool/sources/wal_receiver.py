"""pg_receivewal: streaming WAL from the server into the spool, kept running with backoff.

    pg_receivewal -h H -p P -U U -w -D <spool>/wal --slot drtool_<policy>_<source> --no-loop -s 10

With a replication slot (the default) the server keeps every WAL segment the receiver has
not confirmed, so a receiver (or drtool) that was down leaves no gap: it resumes where it
stopped. The price is on the server: WAL piles up in its pg_wal while drtool is down
(bound it with max_slot_wal_keep_size; if the server then drops WAL, drtool reports the gap).
`--no-loop`: the receiver exits on a lost connection, so drtool sees it, restarts it with
backoff and alerts when it keeps failing, instead of pg_receivewal retrying silently.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from drtool.config.models import PostgresSource
from drtool.errors import CommandError
from drtool.execute import LocalProcess, LocalRunner, stop_process
from drtool.sources.psql import conn_args, libpq_env, pg_tool

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 30.0
WAL_REMOVED = re.compile(r"requested WAL segment \S+ has already been removed|has been invalidated|"
                         r"cannot read from logical replication slot|replication slot \S+ does not exist")


def slot_name(policy: str, source: str, configured: str | bool) -> str | None:
    """The replication slot: a configured name, none (false), or drtool_<policy>_<source>."""
    if configured is False:
        return None
    if isinstance(configured, str):
        return configured
    raw = re.sub(r"[^a-z0-9_]", "_", f"drtool_{policy}_{source}".lower())
    return raw[:63]


def receivewal_argv(bin_dir: str | None, conn: list[str], directory: str, slot: str | None) -> list[str]:
    argv = [pg_tool(bin_dir, "pg_receivewal"), *conn, "-D", directory, "--no-loop", "-s", str(STATUS_INTERVAL_S)]
    return argv + (["--slot", slot] if slot else [])


def slot_sql(slot: str) -> str:
    """Create the slot unless it exists, reserving WAL at once (pg_receivewal --create-slot would
    reserve only from its first connection: WAL written before that would be lost)."""
    name = "'" + slot.replace("'", "''") + "'"
    return (f"SELECT pg_create_physical_replication_slot({name}, true) "
            f"WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {name})")


def drop_slot_sql(slot: str) -> str:
    name = "'" + slot.replace("'", "''") + "'"
    return (f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = {name} AND NOT active")


@dataclass
class ReceiverExit:
    code: int | None
    stderr: str
    wal_lost: bool                    # the server no longer has the WAL the receiver asked for

    @property
    def cause(self) -> str:
        """The line that says why (the server's error, not pg_receivewal's closing words)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        found = [line for line in lines if WAL_REMOVED.search(line)] or [ln for ln in lines if "error" in ln]
        return (found or lines or ["no error text"])[0].strip()


class Receiver:
    """One pg_receivewal for one spool; `ensure()` keeps it running, with backoff after failures."""

    def __init__(self, spec: PostgresSource, directory: str, slot: str | None, *,
                 clock=time.monotonic) -> None:
        self.spec, self.directory, self.slot = spec, directory, slot
        self._clock = clock
        self._proc: LocalProcess | None = None
        self._runner = LocalRunner()
        self.failures = 0                 # consecutive exits since it last ran well
        self.started_at: float | None = None
        self._next_start = 0.0
        self.paused = False               # the spool is full: receive nothing until it drains

    @property
    def _conn(self) -> list[str]:
        return conn_args(self.spec.host, self.spec.port, self.spec.user)

    @property
    def _env(self) -> dict[str, str]:
        return libpq_env(self.spec.password.resolve().reveal() if self.spec.password else None)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure(self) -> ReceiverExit | None:
        """Start it when due; return how it ended if it exited since the last look."""
        ended = None
        if self._proc is not None and self._proc.poll() is not None:
            ended = self._reap()
        if self._proc is None and not self.paused and self._clock() >= self._next_start:
            self._start()
        elif self._proc is not None and self.failures and self.started_at is not None \
                and self._clock() - self.started_at > 3 * STATUS_INTERVAL_S:
            self.failures = 0             # it has been running well again
        return ended

    def _start(self) -> None:
        argv = receivewal_argv(self.spec.bin_dir, self._conn, self.directory, self.slot)
        try:
            self._proc = self._runner.start(argv, env=self._env)
        except CommandError as exc:
            self._failed()
            log.warning("cannot start pg_receivewal: %s", exc.message)
            return
        self.started_at = self._clock()

    def _reap(self) -> ReceiverExit:
        assert self._proc is not None
        code = self._proc.wait(10)
        tail = self._proc.stderr_tail().strip()
        self._proc = None
        if code != 0 or not self.paused:
            self._failed()
        log.warning("pg_receivewal exited (code %s): %s", code, tail.splitlines()[-1] if tail else "no error text")
        return ReceiverExit(code, tail, bool(WAL_REMOVED.search(tail)))

    def _failed(self) -> None:
        self.failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self._next_start = self._clock() + delay

    def retry_now(self) -> None:
        self._next_start = 0.0

    def stop(self) -> None:
        """SIGINT: pg_receivewal writes what it has and exits; killed after a grace period."""
        if self._proc is not None:
            stop_process(self._proc, grace=15)
            self._proc = None
