"""MariaDB backup: mariadb-dump streams whose content the fingerprint describes exactly.

Consistency of the fingerprint with the dump -- what is guaranteed exactly:

* `open_dump` opens a "lock session" (one `mariadb` client kept open on a pipe),
  takes FLUSH TABLES WITH READ LOCK (FTWRL: no engine can change data), starts
  a consistent-snapshot transaction and counts every table with COUNT(*).
* Each stream's `start()` launches mariadb-dump and waits until that dump's
  connection shows an InnoDB transaction (information_schema.INNODB_TRX), i.e.
  its `START TRANSACTION WITH CONSISTENT SNAPSHOT` has run while FTWRL still
  held. Once every database's dump has its snapshot, the lock is released.
* InnoDB tables: the dump and the counts see the same committed state, so the
  fingerprint equals what the dump holds. Writes are blocked only while
  counting and until the dumps' snapshots began (milliseconds for one
  database; with several databases in one source, until the last dump
  started, i.e. during the earlier databases' dumps -- use one source per
  database if that matters).
* Any non-transactional table (MyISAM, Aria, MEMORY...) in the dumped
  databases: a snapshot cannot freeze it, so FTWRL is held until the dump
  session closes (what `--lock-all-tables` would do): exact, but writes wait
  for the whole dump.
* The dump connection is recognised as a new connection (id above every id
  that existed before launch) of the same account with an InnoDB transaction.
  Another client of the same account opening a transaction in that instant
  could be taken for it; then writes committed between the unlock and the
  dump's snapshot (a few milliseconds) may be missing from the fingerprint.
  Use a dedicated backup account to rule this out.
* Without the PROCESS privilege the dump connection cannot be watched; the
  lock is then held until the session closes (exact, slower). FTWRL needs
  RELOAD; without it open_dump fails with a hint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

from drtool.config.models import MariadbSource
from drtool.errors import SourceError
from drtool.execute import Process, stop_process
from drtool.sources.base import DumpSession, DumpStream, Fingerprint
from drtool.sources.mariadb.client import Client
from drtool.sources.mariadb.commands import (
    CONTENT_SETTINGS_SQL,
    TRANSACTIONAL_ENGINES,
    Conn,
    build_content,
    build_fingerprint,
    client_argv,
    columns_sql,
    conn_from_spec,
    counts_sql,
    dump_argv,
    group_columns,
    hashes_sql,
    missing_databases,
    tables_sql,
)
from drtool.sources.mariadb.session import SqlSession
from drtool.sources.stream_checks import MARIADB_TRAILER, TrailerCheck

log = logging.getLogger(__name__)

LOCK_WAIT_TIMEOUT = 60            # seconds FTWRL may wait for running statements
SNAPSHOT_WAIT = 30.0              # how long to look for a dump's transaction
TRX_CACHE_IDLE = 0.15             # > InnoDB's 100 ms INNODB_TRX cache idle time
HASH_TIMEOUT = 4 * 3600.0         # hashing every row of a big database takes a while


# ---------------------------------------------------------------- the snapshot gate

class _LockGate:
    """Holds FTWRL until every dump started its snapshot (or the session ends)."""

    def __init__(self, session: SqlSession, databases: Sequence[str], release_early: bool) -> None:
        self.session = session
        self.pending = set(databases)
        self.release_early = release_early
        self.locked = True
        self._mutex = threading.Lock()

    def max_connection_id(self) -> int:
        with self._mutex:
            rows = self.session.execute("SELECT IFNULL(MAX(ID), 0) FROM information_schema.PROCESSLIST;")
        return int(rows[0][0])

    def dump_started(self, database: str, proc: Process, floor: int) -> None:
        if not self.locked:
            log.warning("dump of %s started after the lock was released: its content may differ "
                        "from the fingerprint", database)
            return
        if self.release_early and not self._wait_snapshot(proc, floor):
            log.warning("could not see the dump's transaction for %s; holding the read lock "
                        "until the dump session ends", database)
            self.release_early = False
        with self._mutex:
            self.pending.discard(database)
            if self.release_early and not self.pending and self.locked:
                self.session.execute("UNLOCK TABLES; COMMIT;")
                self.locked = False

    def _wait_snapshot(self, proc: Process, floor: int) -> bool:
        sql = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST p "
               "JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID "
               f"WHERE p.ID > {floor} AND p.ID <> CONNECTION_ID() "
               "AND p.USER = SUBSTRING_INDEX(USER(), '@', 1);")
        deadline = time.monotonic() + SNAPSHOT_WAIT
        while time.monotonic() < deadline:
            with self._mutex:
                found = int(self.session.execute(sql)[0][0])
            if found:
                return True
            if proc.poll() is not None:
                # It ended (failed, or finished inside the lock): either way no
                # later writes can be in it; the engine checks its exit code.
                return True
            # InnoDB refreshes its INNODB_TRX cache only after 100 ms without
            # readers: polling faster would keep reading the same stale cache.
            time.sleep(TRX_CACHE_IDLE)
        return False



# ---------------------------------------------------------------- the dump session

@contextmanager
def open_dump(client: Client, spec: MariadbSource) -> Iterator[DumpSession]:
    conn = conn_from_spec(spec)
    databases = spec.database_names
    can_watch = _can_watch(client, conn)
    session = SqlSession(client.runner, client_argv(client.client(), conn), conn.env(), conn.describe())
    hasher: _ContentHasher | None = None
    try:
        tables = _lock_and_list(session, conn, databases)
        names = [(db, t) for db, t, _ in tables]
        count_rows = session.execute(counts_sql(names)) if tables else []
        fingerprint: Fingerprint | Future[Fingerprint] = build_fingerprint(databases, names, count_rows)
        if spec.content_hash:
            # Started while the read lock holds, so its snapshot is the dumps' snapshot.
            columns = group_columns(session.execute(columns_sql(databases))) if tables else {}
            hasher = _ContentHasher(client, conn)
            fingerprint = hasher.hash_in_background(fingerprint, databases, names, columns)
        transactional = all(engine in TRANSACTIONAL_ENGINES for _, _, engine in tables)
        gate = _LockGate(session, databases, release_early=transactional and can_watch)
        streams = [DumpStream(f"{db}.sql", _stream_starter(client, conn, db, gate), database=db,
                              check=partial(TrailerCheck, f"mariadb-dump of {db}", MARIADB_TRAILER))
                   for db in databases]
        yield DumpSession(fingerprint, streams)
    finally:
        if hasher is not None:
            hasher.close()
        session.close()


class _ContentHasher:
    """A second session hashing every table while the dumps stream, as PostgreSQL's counts do.

    Its consistent snapshot begins while FLUSH TABLES WITH READ LOCK holds: no commit can
    fall between it and the dumps' snapshots, so it hashes exactly what they dump (InnoDB);
    non-transactional tables stay locked until the whole dump session ends. Why not
    CHECKSUM TABLE: it reads outside any snapshot under a table lock (writes would wait for
    the whole scan) and depends on the row format, which a restore may change.
    """

    def __init__(self, client: Client, conn: Conn) -> None:
        self.session = SqlSession(client.runner, client_argv(client.client(), conn), conn.env(), conn.describe())
        try:
            self.session.execute(CONTENT_SETTINGS_SQL + "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n"
                                 "START TRANSACTION WITH CONSISTENT SNAPSHOT;")
        except BaseException:
            self.session.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mariadb-hash")

    def hash_in_background(self, counted: Fingerprint, databases: Sequence[str], tables: list[tuple[str, str]],
                           columns: dict[tuple[str, str], list[str]]) -> Future[Fingerprint]:
        def run() -> Fingerprint:
            sql = hashes_sql(tables, columns)
            rows = self.session.execute(sql, timeout=HASH_TIMEOUT) if sql else []
            return {**counted, "content": build_content(databases, tables, rows)}
        return self._pool.submit(run)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()


def _can_watch(client: Client, conn: Conn) -> bool:
    try:
        client.run_sql(conn, "SELECT COUNT(*) FROM information_schema.INNODB_TRX;", timeout=60)
        return True
    except SourceError as exc:
        # Only a missing PROCESS privilege degrades (lock held longer); a
        # refused login or an unreachable server is an error right here.
        text = str(exc).lower()
        if "process privilege" in text:
            return False
        raise


def _lock_and_list(session: SqlSession, conn: Conn, databases: Sequence[str]) -> list[tuple[str, str, str]]:
    try:
        session.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT};\n"
                        "FLUSH TABLES WITH READ LOCK;\n"
                        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n"
                        "START TRANSACTION WITH CONSISTENT SNAPSHOT;",
                        timeout=LOCK_WAIT_TIMEOUT + 30)
    except SourceError as exc:
        raise SourceError(f"could not take a consistent read lock on {conn.describe()}: {exc.message}",
                          hint="the backup account needs RELOAD, PROCESS, SELECT, LOCK TABLES, "
                               "SHOW VIEW, EVENT and TRIGGER; a long-running statement also "
                               "blocks FLUSH TABLES WITH READ LOCK") from None
    existing = [r[0] for r in session.execute("SHOW DATABASES;")]
    missing = missing_databases(databases, existing)
    if missing:
        raise SourceError(f"database {', '.join(missing)} does not exist on {conn.describe()}",
                          hint="fix the database name in the policy, or create the database")
    return [(r[0], r[1], r[2]) for r in session.execute(tables_sql(databases))]


def _stream_starter(client: Client, conn: Conn, database: str, gate: _LockGate) -> Callable[[], Process]:
    def start() -> Process:
        floor = gate.max_connection_id() if gate.locked else 0
        proc = client.runner.start(dump_argv(client.program("mariadb-dump", "mysqldump"), conn, database),
                                   env=conn.env())
        try:
            gate.dump_started(database, proc, floor)
        except BaseException:
            stop_process(proc, grace=5)
            raise
        return proc
    return start
