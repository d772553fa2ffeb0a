"""The opt-in canary of a PITR source: one row of `drtool_canary`, updated every `canary` seconds.

    canary = Canary(spec, "siak/siak-db", every=10.0); canary.start(); ...; canary.stop()

A thread of its own with a connection of its own, so a slow batch never delays it: the time
in the row is the server's clock at each write, and after a recovery the newest value found
tells how much a real recovery would have lost (drtool/actions/pitr.py `measure`). It needs
write access to `canary_database` (default `postgres`, never the application's databases);
a failed write is logged and the connection made again.
"""

from __future__ import annotations

import logging
import threading

from drtool.config.models import PostgresSource
from drtool.errors import DrtoolError
from drtool.execute import LocalRunner
from drtool.secrets import redact
from drtool.sources.psql import (
    PsqlSession,
    conn_args,
    libpq_env,
    psql_argv,
    quote_literal,
)

log = logging.getLogger(__name__)

CANARY_TABLE = "drtool_canary"
CREATE_SQL = f"CREATE TABLE IF NOT EXISTS {CANARY_TABLE} (source text PRIMARY KEY, at timestamptz NOT NULL)"


def canary_sql(key: str) -> str:
    return (f"INSERT INTO {CANARY_TABLE} VALUES ({quote_literal(key)}, clock_timestamp()) "
            "ON CONFLICT (source) DO UPDATE SET at = excluded.at")


class Canary:
    def __init__(self, spec: PostgresSource, key: str, every: float, database: str) -> None:
        self.spec, self.key, self.every, self.database = spec, key, every, database
        self.writes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: PsqlSession | None = None

    def start(self) -> None:
        self._sql(CREATE_SQL)                 # a missing privilege shows at once, not in the first drill
        self._thread = threading.Thread(target=self._run, name=f"canary-{self.key}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._session is not None:
            self._session.close(5)
            self._session = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sql(canary_sql(self.key))
                self.writes += 1
            except DrtoolError as exc:
                log.warning("canary %s: %s; connecting again", self.key, redact(exc.message).splitlines()[0][:200])
                if self._session is not None:
                    self._session.close(5)
                self._session = None
            self._stop.wait(self.every)

    def _sql(self, sql: str) -> None:
        if self._session is None:
            spec = self.spec
            password = spec.password.resolve().reveal() if spec.password else None
            argv = psql_argv(spec.bin_dir, conn_args(spec.host, spec.port, spec.user), self.database)
            self._session = PsqlSession(LocalRunner(), argv, libpq_env(password),
                                        f"postgres {spec.user}@{spec.host}:{spec.port}/{self.database}")
        self._session.query(sql, 30)
