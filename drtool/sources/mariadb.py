"""MariaDB / MySQL: dump with mariadb-dump, restore with the mariadb client, count rows.

One stream per database, named "<db>.sql": plain `mariadb-dump --single-transaction
--routines --triggers --events --hex-blob <db>` output, without CREATE DATABASE /
USE, so it restores under any name with bare tools:
`mariadb -e 'CREATE DATABASE x' && mariadb x < db.sql`.

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

Password: MYSQL_PWD in the client's environment, not a --defaults-extra-file:
the same argv must work through an SSH runner, where only env and stdin reach
the remote side (a local option file would not exist there, and stdin carries
the dump or the SQL). The environment of a process is readable only by its
owner and root, unlike argv.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import IO

from drtool.config.models import MariadbSource
from drtool.errors import CommandError, RestoreRefused, SourceError
from drtool.execute import Process, Runner, stop_process
from drtool.secrets import Secret
from drtool.sources.stream_checks import MARIADB_TRAILER, TrailerCheck
from drtool.sources.base import (
    DbTarget,
    DumpSession,
    DumpStream,
    Fingerprint,
    RestorePhase,
    RestoreResult,
    StreamReader,
)

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 300.0
LOCK_WAIT_TIMEOUT = 60            # seconds FTWRL may wait for running statements
SNAPSHOT_WAIT = 30.0              # how long to look for a dump's transaction
TRX_CACHE_IDLE = 0.15             # > InnoDB's 100 ms INNODB_TRX cache idle time
RESTORE_TIMEOUT = 6 * 3600.0      # a whole database load
CHUNK = 1 << 20
TRANSACTIONAL_ENGINES = frozenset({"InnoDB"})
TABLE_TYPES = ("BASE TABLE", "SYSTEM VERSIONED")

DUMP_OPTIONS = ("--single-transaction", "--quick", "--routines", "--triggers", "--events",
                "--hex-blob", "--default-character-set=utf8mb4", "--max-allowed-packet=1G")


# ---------------------------------------------------------------- pure helpers

@dataclass(frozen=True)
class Conn:
    """How to reach one server: argv options plus environment (the password)."""

    host: str | None
    port: int | None
    socket: str | None
    user: str
    password: Secret | None
    use_socket: bool

    def args(self) -> list[str]:
        where = ([f"--socket={self.socket}", "--protocol=SOCKET"] if self.use_socket
                 else [f"--host={self.host or '127.0.0.1'}", f"--port={self.port or 3306}", "--protocol=TCP"])
        return [*where, f"--user={self.user}"]

    def env(self) -> dict[str, str]:
        return {"MYSQL_PWD": self.password.reveal()} if self.password else {}

    def describe(self) -> str:
        where = self.socket if self.use_socket else f"{self.host}:{self.port}"
        return f"{self.user}@{where}"


def conn_from_spec(spec: MariadbSource) -> Conn:
    # A configured socket is an explicit choice; otherwise TCP.
    password = spec.password.resolve() if spec.password else None
    return Conn(spec.host, spec.port, spec.socket, spec.user, password, use_socket=bool(spec.socket))


def conn_from_target(target: DbTarget) -> Conn:
    # Targets (scratch instances) carry both; TCP with the password is the path
    # that works for any OS user, the socket only when no port is known.
    use_socket = target.port is None and bool(target.socket)
    return Conn(target.host, target.port, target.socket, target.user or "root", target.password, use_socket)


def dump_argv(program: str, conn: Conn, database: str) -> list[str]:
    # No --databases: the output then has no CREATE DATABASE/USE and restores under any name.
    return [program, "--no-defaults", *conn.args(), *DUMP_OPTIONS, "--", database]


def client_argv(program: str, conn: Conn, database: str | None = None, *, force: bool = False) -> list[str]:
    # --unbuffered: a kept-open session must see each answer as soon as it exists.
    argv = [program, "--no-defaults", *conn.args(), "--batch", "--skip-column-names", "--unbuffered",
            "--default-character-set=utf8mb4", "--max-allowed-packet=1G"]
    if force:
        argv.append("--force")
    if database:
        argv.append(f"--database={database}")
    return argv


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0") + "'"


_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "0": "\0", "r": "\r"}


def unescape_field(field: str) -> str:
    """Undo the escaping the client applies to tab-separated --batch output."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            out.append(_UNESCAPE.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_batch(text: str) -> list[list[str]]:
    return [[unescape_field(f) for f in line.split("\t")] for line in text.splitlines() if line != ""]


def tables_sql(databases: Sequence[str]) -> str:
    schemas = ", ".join(quote_str(db) for db in databases)
    types = ", ".join(quote_str(t) for t in TABLE_TYPES)
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, IFNULL(ENGINE, '') FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA IN ({schemas}) AND TABLE_TYPE IN ({types}) ORDER BY 1, 2;")


def counts_sql(tables: Sequence[tuple[str, str]]) -> str:
    # One statement per table, tagged by position: names never need parsing back.
    return "".join(f"SELECT {i}, COUNT(*) FROM {quote_ident(db)}.{quote_ident(t)};\n"
                   for i, (db, t) in enumerate(tables))


def build_fingerprint(databases: Sequence[str], tables: Sequence[tuple[str, str]],
                      count_rows: Sequence[Sequence[str]]) -> Fingerprint:
    dbs: dict[str, dict[str, int]] = {db: {} for db in databases}
    for row in count_rows:
        db, table = tables[int(row[0])]
        dbs[db][table] = int(row[1])
    return {"kind": "mariadb", "databases": dbs}


def missing_databases(databases: Sequence[str], existing: Sequence[str]) -> list[str]:
    return [db for db in databases if db not in set(existing)]


# ---------------------------------------------------------------- a live SQL session

class SqlSession:
    """A `mariadb` client kept open on a pipe: statements in, rows out.

    Used for the lock session, whose locks live exactly as long as this
    connection. Each batch ends with a marker SELECT so we know where its
    output stops; a failing statement makes the client exit (no --force), which
    shows up here as end-of-output and is raised with the stderr tail.
    """

    def __init__(self, runner: Runner, argv: list[str], env: dict[str, str], where: str) -> None:
        self.where = where
        self.proc = runner.start(argv, env=env, stdin=True)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._seq = 0
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[bytes]) -> None:
        try:
            for line in iter(stdout.readline, b""):
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(None)

    def execute(self, sql: str, timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
        self._seq += 1
        marker = f"drtool-end-{self._seq}"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{sql}\nSELECT '{marker}';\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(sql)
        rows: list[list[str]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SourceError(f"MariaDB at {self.where} did not answer within {timeout:.0f}s",
                                  hint="check the server's load and locks (SHOW PROCESSLIST)") from None
            if line is None:
                self._fail(sql)
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text == marker:
                return rows
            rows.append([unescape_field(f) for f in text.split("\t")])

    def _fail(self, sql: str) -> None:
        try:
            code = self.proc.wait(10)
        except Exception:  # noqa: BLE001 - report what we have
            code = None
        first = sql.strip().splitlines()[0][:80] if sql.strip() else ""
        raise SourceError(f"MariaDB session at {self.where} failed (exit {code}) running {first!r}:\n    "
                          + self.proc.stderr_tail().strip().replace("\n", "\n    "))

    def close(self) -> None:
        # Closing stdin ends the client; the server then drops its locks and transaction.
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001 - a stuck client must still go away
            stop_process(self.proc, grace=5)


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


# ---------------------------------------------------------------- the source

class MariadbDatabase:
    kind = "mariadb"

    def __init__(self, spec: MariadbSource, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self._programs: dict[str, str] = {}

    # ------------------------------------------------------------ helpers

    def _program(self, *names: str) -> str:
        key = names[0]
        if key not in self._programs:
            found = next((p for p in (self.runner.which(n) for n in names) if p), None)
            if not found:
                raise SourceError(f"{' / '.join(names)} not found on {self.runner.name}",
                                  hint="install the MariaDB client tools (Debian: mariadb-client)")
            self._programs[key] = found
        return self._programs[key]

    def _client(self) -> str:
        return self._program("mariadb", "mysql")

    def _run_sql(self, conn: Conn, sql: str, database: str | None = None,
                 timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
        argv = client_argv(self._client(), conn, database)
        try:
            res = self.runner.run(argv, env=conn.env(), input=sql.encode(), timeout=timeout)
        except CommandError as exc:
            raise SourceError(f"MariaDB query at {conn.describe()} failed: {exc.message}",
                              hint=_access_hint(exc.stderr_tail)) from None
        return parse_batch(res.text)

    # ------------------------------------------------------------ backup

    @contextmanager
    def open_dump(self) -> Iterator[DumpSession]:
        conn = conn_from_spec(self.spec)
        databases = self.spec.database_names
        can_watch = self._can_watch(conn)
        session = SqlSession(self.runner, client_argv(self._client(), conn), conn.env(), conn.describe())
        try:
            tables = self._lock_and_list(session, conn, databases)
            count_rows = session.execute(counts_sql([(db, t) for db, t, _ in tables])) if tables else []
            fingerprint = build_fingerprint(databases, [(db, t) for db, t, _ in tables], count_rows)
            transactional = all(engine in TRANSACTIONAL_ENGINES for _, _, engine in tables)
            gate = _LockGate(session, databases, release_early=transactional and can_watch)
            streams = [DumpStream(f"{db}.sql", self._stream_starter(conn, db, gate), database=db,
                                  check=partial(TrailerCheck, f"mariadb-dump of {db}", MARIADB_TRAILER))
                       for db in databases]
            yield DumpSession(fingerprint, streams)
        finally:
            session.close()

    def _can_watch(self, conn: Conn) -> bool:
        try:
            self._run_sql(conn, "SELECT COUNT(*) FROM information_schema.INNODB_TRX;", timeout=60)
            return True
        except SourceError as exc:
            # Only a missing PROCESS privilege degrades (lock held longer); a
            # refused login or an unreachable server is an error right here.
            text = str(exc).lower()
            if "process privilege" in text:
                return False
            raise

    def _lock_and_list(self, session: SqlSession, conn: Conn,
                       databases: Sequence[str]) -> list[tuple[str, str, str]]:
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

    def _stream_starter(self, conn: Conn, database: str, gate: _LockGate):
        def start() -> Process:
            floor = gate.max_connection_id() if gate.locked else 0
            proc = self.runner.start(dump_argv(self._program("mariadb-dump", "mysqldump"), conn, database),
                                     env=conn.env())
            try:
                gate.dump_started(database, proc, floor)
            except BaseException:
                stop_process(proc, grace=5)
                raise
            return proc
        return start

    # ------------------------------------------------------------ restore

    def restore(self, reader: StreamReader, target: DbTarget, *, force: bool = False) -> RestoreResult:
        conn = conn_from_target(target)
        plan = restore_plan(reader.names(), target.database)
        self._refuse_non_empty(conn, [db for _, db in plan], force)
        result = RestoreResult(databases=[db for _, db in plan])
        for stream, db in plan:
            started = time.monotonic()
            self._recreate(conn, db, drop=force)
            result.phases.append(RestorePhase(f"create {db}", time.monotonic() - started))
            started = time.monotonic()
            loaded = self._load(reader, stream, conn, db)
            result.phases.append(RestorePhase(f"load {db}", time.monotonic() - started, loaded))
            result.bytes += loaded
        return result

    def _refuse_non_empty(self, conn: Conn, databases: Sequence[str], force: bool) -> None:
        rows = self._run_sql(conn, objects_sql(databases), timeout=60)
        busy = sorted({r[0] for r in rows if int(r[1]) > 0})
        if busy and not force:
            raise RestoreRefused(f"database {', '.join(busy)} on {conn.describe()} is not empty; nothing was changed",
                                 hint="restore into a scratch instance or another name, or use force "
                                      "to drop and recreate it")

    def _recreate(self, conn: Conn, database: str, *, drop: bool) -> None:
        q = quote_ident(database)
        sql = (f"DROP DATABASE IF EXISTS {q};\n" if drop else "") + f"CREATE DATABASE IF NOT EXISTS {q};"
        self._run_sql(conn, sql, timeout=QUERY_TIMEOUT)

    def _load(self, reader: StreamReader, stream: str, conn: Conn, database: str) -> int:
        source = reader.open(stream)
        client = self.runner.start(client_argv(self._client(), conn, database), env=conn.env(), stdin=True)
        # A watchdog bounds the whole load; the relay itself blocks on pipes.
        watchdog = threading.Timer(RESTORE_TIMEOUT, lambda: (source.kill(), client.kill()))
        watchdog.daemon = True
        watchdog.start()
        try:
            copied = _relay(source.stdout, client.stdin)
            src_code = _wait(source)
            cli_code = _wait(client)
        except BaseException:
            stop_process(source, grace=5)
            stop_process(client, grace=5)
            raise
        finally:
            watchdog.cancel()
        if src_code != 0:
            raise SourceError(f"reading stream {stream} for the restore failed (exit {src_code}):\n    "
                              + source.stderr_tail().strip()[-2000:],
                              hint="check the snapshot and the repository (restic check)")
        if cli_code != 0:
            raise SourceError(f"loading {stream} into {database} on {conn.describe()} failed (exit {cli_code}):\n    "
                              + client.stderr_tail().strip()[-2000:],
                              hint=_access_hint(client.stderr_tail()))
        return copied

    # ------------------------------------------------------------ verify

    def fingerprint_target(self, target: DbTarget, databases: list[str]) -> Fingerprint:
        conn = conn_from_target(target)
        if target.database and len(databases) == 1:
            databases = [target.database]
        rows = self._run_sql(conn, "SHOW DATABASES;")
        existing = [r[0] for r in rows]
        present = [db for db in databases if db in existing]
        tables = [(r[0], r[1]) for r in self._run_sql(conn, tables_sql(present))] if present else []
        counts = self._run_sql(conn, counts_sql(tables)) if tables else []
        fp = build_fingerprint(present, tables, counts)
        return fp

    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]:
        conn = conn_from_target(target)
        return self._run_sql(conn, sql if sql.rstrip().endswith(";") else sql + ";",
                             database or target.database)


def restore_plan(names: Sequence[str], rename_to: str | None) -> list[tuple[str, str]]:
    """(stream, target database) pairs; `rename_to` picks/renames one database."""
    streams = [n for n in names if n.endswith(".sql")]
    if not streams:
        raise SourceError(f"the snapshot holds no MariaDB dump streams (found: {', '.join(names) or 'nothing'})",
                          hint="pick a snapshot of a mariadb source")
    if rename_to is None:
        return [(s, s[: -len(".sql")]) for s in streams]
    if len(streams) == 1:
        return [(streams[0], rename_to)]
    wanted = f"{rename_to}.sql"
    if wanted in streams:
        return [(wanted, rename_to)]
    raise SourceError(f"the snapshot holds several databases ({', '.join(streams)}); "
                      f"cannot tell which one to restore as {rename_to}",
                      hint="name one of those databases as the target database")


def objects_sql(databases: Sequence[str]) -> str:
    """Per database: how many tables, views and routines it holds (0 = empty or missing)."""
    parts = []
    for db in databases:
        s = quote_str(db)
        parts.append(f"SELECT {s}, (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {s})"
                     f" + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {s});")
    return "\n".join(parts)


def _relay(src: IO[bytes], dst: IO[bytes] | None) -> int:
    assert dst is not None
    copied = 0
    try:
        for chunk in iter(lambda: src.read1(CHUNK) if hasattr(src, "read1") else src.read(CHUNK), b""):
            dst.write(chunk)
            copied += len(chunk)
    except BrokenPipeError:
        pass  # the client died; its exit status and stderr tell why
    finally:
        try:
            dst.close()
        except OSError:
            pass
    return copied


def _wait(proc: Process, timeout: float = 120.0) -> int:
    try:
        return proc.wait(timeout)
    except Exception as exc:
        stop_process(proc, grace=5)
        raise SourceError(f"{proc.argv[0]} did not exit within {timeout:.0f}s after its input ended") from exc


def _access_hint(stderr: str) -> str | None:
    text = stderr.lower()
    if "access denied" in text:
        return "check the user and password configured for this server"
    if "can't connect" in text or "connection refused" in text or "lost connection" in text:
        return "is the server running and reachable on that host/port/socket?"
    return None

