"""A PostgreSQL primary fit for point-in-time recovery tests, and a steady writer.

    with pitr_primary() as pg:            # wal_level=replica, replication from 127.0.0.1
        with Writer(pg, "siak") as w:     # one row every `every` seconds: (id, at = its commit time)
            ...
        burn(pg)                          # immediate stop + the data directory deleted: the fire
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from drtool.execute import LocalRunner
from drtool.scratch.postgres import ScratchPostgres, installed_majors, server_conf

PRIMARY_CONF = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "0",
    "fsync": "off",                        # a test server: durability of the primary is not under test
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
}


@contextmanager
def pitr_primary(**extra: str) -> Iterator[ScratchPostgres]:
    if not installed_majors() and not os.environ.get("CI"):
        pytest.skip("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)")
    with ScratchPostgres() as pg:
        pg.shutdown()
        conf = server_conf(pg.port, pg.socket_dir, tuning=False)
        conf += "".join(f"{k} = '{v}'\n" for k, v in {**PRIMARY_CONF, **extra}.items())
        (pg.data_dir / "postgresql.auto.conf").write_text(conf)
        with open(pg.data_dir / "pg_hba.conf", "a") as hba:
            hba.write("local replication all trust\nhost replication all 127.0.0.1/32 trust\n")
        pg.restart()
        yield pg


def psql(pg: ScratchPostgres, sql: str, db: str = "postgres", timeout: float = 120) -> str:
    argv = [f"{pg.bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg.port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=timeout).text.strip()


def psql_port(bin_dir: str, port: int, sql: str, db: str = "postgres") -> str:
    argv = [f"{bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=120).text.strip()


class Writer:
    """Inserts one row every `every` seconds into `db.ticks(id, at)`; `rows` holds (id, at) of every
    committed row, `at` being the server's clock_timestamp() at insert (commit follows within ms)."""

    def __init__(self, pg: ScratchPostgres, db: str, every: float = 0.2) -> None:
        self.pg, self.db, self.every = pg, db, every
        self.rows: list[tuple[int, datetime]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Writer:
        psql(self.pg, "CREATE TABLE IF NOT EXISTS ticks (id int PRIMARY KEY, at timestamptz NOT NULL)", self.db)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from drtool.execute import LocalRunner as Runner

        argv = [f"{self.pg.bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.pg.port),
                "-U", "postgres", "-d", self.db, "-v", "ON_ERROR_STOP=1"]
        proc = Runner().start(argv, stdin=True)
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                proc.stdin.write(f"INSERT INTO ticks VALUES ({n}, clock_timestamp()) RETURNING at;\n".encode())
                proc.stdin.flush()
                line = proc.stdout.readline().decode().strip()
                if not line:
                    raise RuntimeError(f"writer lost its session: {proc.stderr_tail()}")
                self.rows.append((n, datetime.fromisoformat(line)))
                self._stop.wait(self.every)
        except BaseException as exc:
            if not self._stop.is_set():
                self.error = exc
        finally:
            try:
                proc.stdin.close()
                proc.wait(10)
            except Exception:
                proc.kill()


def burn(pg: ScratchPostgres) -> None:
    """The fire: the server stops at once (no checkpoint) and its data directory is gone."""
    pg._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", timeout=40)
    shutil.rmtree(pg.data_dir)


def wait_for(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
