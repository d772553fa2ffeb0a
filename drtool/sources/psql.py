"""A long-lived psql session driven over stdin/stdout, and libpq argv helpers.

Why a session and not one `psql -c` per query: the exported snapshot that
pg_dump --snapshot uses lives only as long as the transaction that exported
it, so the transaction (and its connection) must stay open while the dumps
stream. psql flushes each result; after every statement we `\\echo` a unique
marker line, so we know where a result ends without parsing psql's output.

Runs through a `Runner`, so it works locally and over SSH alike.
"""

from __future__ import annotations

import logging
import posixpath
import queue
import secrets as _random
import threading
from collections.abc import Mapping, Sequence

from drtool.errors import SourceError
from drtool.execute import Process, Runner, stop_process

log = logging.getLogger(__name__)

FIELD_SEP = "\x1f"           # ASCII unit separator: never in identifiers or our own results
RECORD_SEP = "\x1e"          # ASCII record separator: for one-shot queries whose values may hold newlines
CONNECT_TIMEOUT_S = 15       # libpq connect_timeout, via PGCONNECT_TIMEOUT
DEFAULT_QUERY_TIMEOUT = 600.0
CLOSE_TIMEOUT = 30.0


def pg_tool(bin_dir: str | None, name: str) -> str:
    """Path of a client program: from bin_dir if given, else found on PATH."""
    # posixpath: the runner may be a remote Linux host even when drtool is not.
    return posixpath.join(bin_dir, name) if bin_dir else name


def conninfo_dbname(database: str) -> str:
    """`dbname='...'` as a conninfo string.

    A bare database name containing '=' or starting with postgresql:// would be
    read by libpq as a connection string; quoting it makes it only a name.
    """
    return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conn_args(host: str | None, port: int | None, user: str | None) -> list[str]:
    """-h/-p/-U and -w: never prompt for a password (there is no one to answer)."""
    argv: list[str] = []
    if host:
        argv += ["-h", host]
    if port:
        argv += ["-p", str(port)]
    if user:
        argv += ["-U", user]
    return [*argv, "-w"]


def psql_argv(bin_dir: str | None, conn: Sequence[str], database: str, *, records: bool = False,
              stop_on_error: bool = True) -> list[str]:
    """psql for machine reading: no psqlrc, quiet, unaligned, tuples only, stop on error."""
    argv = [pg_tool(bin_dir, "psql"), "-X", "-q", "-A", "-t"]
    if stop_on_error:
        argv += ["-v", "ON_ERROR_STOP=1"]
    argv += ["-F", FIELD_SEP]
    if records:
        argv += ["-R", RECORD_SEP]
    return [*argv, *conn, f"--dbname={conninfo_dbname(database)}"]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # standard_conforming_strings is on by default since 9.1: only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"


def connection_hint(stderr: str, where: str) -> str:
    """What to check next, judged from libpq's error text."""
    text = stderr.lower()
    if "password authentication failed" in text:
        return f"wrong password for {where}: check the password secret of this source"
    if "no password supplied" in text or "fe_sendauth" in text:
        return f"{where} wants a password: set `password:` for this source"
    if "no pg_hba.conf entry" in text:
        return f"the server's pg_hba.conf does not admit this host/user: add a line for {where}"
    if "connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return f"is the server running and listening on {where}? (wrong host/port, or server down)"
    if "does not exist" in text:
        return f"check the database and user names for {where}"
    return f"check that {where} is reachable and the credentials are right (wrong password? server down? pg_hba?)"


def failure_hint(code: int | None, stderr: str, where: str) -> str:
    """psql exits 3 when a statement failed (ON_ERROR_STOP), 2 when the connection did."""
    if code == 3:
        return f"the SQL statement failed on {where}; see the server's error above"
    return connection_hint(stderr, where)


def libpq_env(password: str | None) -> dict[str, str]:
    """Environment for libpq tools: the password only here (never argv), bounded connects."""
    env = {"PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S), "PGAPPNAME": "drtool"}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


class PsqlSession:
    """One psql process, one connection; `query()` sends SQL and returns rows."""

    def __init__(self, runner: Runner, argv: Sequence[str], env: Mapping[str, str], where: str) -> None:
        self.where = where
        self._proc: Process = runner.start(argv, env=env, stdin=True)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._count = 0
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)        # EOF: psql exited

    def query(self, sql: str, timeout: float = DEFAULT_QUERY_TIMEOUT) -> list[list[str]]:
        """Run one statement (or several) and return the rows of its output."""
        self._count += 1
        marker = f"__drtool_end_{self._count}_{_random.token_hex(8)}__"
        self._send(sql.rstrip().rstrip(";") + ";\n\\echo " + marker + "\n")
        rows: list[list[str]] = []
        while True:
            line = self._next_line(timeout)
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text == marker:
                return rows
            rows.append(text.split(FIELD_SEP))

    def value(self, sql: str, timeout: float = DEFAULT_QUERY_TIMEOUT) -> str:
        rows = self.query(sql, timeout)
        if len(rows) != 1 or len(rows[0]) != 1:
            raise SourceError(f"expected one value from {self.where}, got {len(rows)} rows for: {sql[:200]}")
        return rows[0][0]

    def _send(self, text: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._died("the psql session ended")

    def _next_line(self, timeout: float) -> bytes:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            stop_process(self._proc, grace=2)
            raise SourceError(f"psql session to {self.where} gave no answer within {timeout:.0f}s",
                              hint="a lock or a very slow server? retry, or raise the timeout") from None
        if line is None:
            self._died("the psql session ended")
        return line  # type: ignore[return-value]

    def _died(self, what: str) -> None:
        try:
            code = self._proc.wait(10)
        except Exception:  # noqa: BLE001 - report what we have
            code = None
        tail = self._proc.stderr_tail().strip()
        self._closed = True
        status = f"exit code {code}" if code is not None else "no exit code"
        raise SourceError(f"{what} with {self.where} ({status}): {tail or 'no error text'}",
                          hint=failure_hint(code, tail, self.where))

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End the session: psql's EOF ends the transaction (rollback) and the connection."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.write(b"\\q\n")
                self._proc.stdin.close()
            self._proc.wait(timeout)
        except Exception:  # noqa: BLE001 - closing must not hide the real error
            stop_process(self._proc, grace=2)
