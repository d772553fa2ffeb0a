"""PostgreSQL: consistent dumps with exact row counts, restores, fingerprints.

Backup (`open_dump`): per database, one psql session opens a REPEATABLE READ
READ ONLY transaction, exports its snapshot and counts every user table in it.
Each database's stream is then `pg_dump -Fc --snapshot=ID`: the dump holds
exactly the rows that were counted, even while writers keep writing. The
sessions stay open until the context exits, since the snapshot dies with them.
Dumps are plain custom-format archives: `pg_restore` restores them without drtool.

Restore (`restore`): per `<db>.pgdump` stream, refuse a non-empty target
unless forced, create the database, then either
  * "stream": restic dump | pg_restore (no temporary copy; one timed phase), or
  * "parallel": save to a private temp file, then `pg_restore -j N` in two
    runs, pre-data+data ("load") and post-data ("index build"), timed apart.

Every program runs through the `Runner`, so all of this works over SSH too.
Passwords reach the tools as PGPASSWORD in their environment only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import IO, Literal

from drtool.config.models import PostgresSource
from drtool.errors import CommandError, RestoreRefused, SourceError
from drtool.execute import Process, Runner, stop_process
from drtool.scratch.common import private_dir
from drtool.sources.base import (
    DbTarget,
    DumpSession,
    DumpStream,
    Fingerprint,
    RestorePhase,
    RestoreResult,
    StreamReader,
)
from drtool.sources.pg_archive import CustomArchiveCheck
from drtool.sources.stream_checks import PG_DUMPALL_TRAILER, TrailerCheck
from drtool.sources.psql import (
    FIELD_SEP,
    RECORD_SEP,
    PsqlSession,
    conn_args,
    connection_hint,
    conninfo_dbname,
    failure_hint,
    libpq_env,
    pg_tool,
    psql_argv,
    quote_ident,
    quote_literal,
)

log = logging.getLogger(__name__)

Strategy = Literal["auto", "stream", "parallel", "overlap"]

DUMP_SUFFIX = ".pgdump"
GLOBALS_STREAM = "globals.sql"
LARGE_OBJECTS_KEY = "(large objects)"
MAINTENANCE_DB = "postgres"
COUNT_TIMEOUT = 4 * 3600.0        # exact count(*) of every table of a big database takes a while
QUERY_TIMEOUT = 600.0
RESTORE_TIMEOUT = 24 * 3600.0
GLOBALS_MAX_BYTES = 64 * 1024 * 1024
COUNT_CHUNK = 200                 # tables per counting statement
DISK_MARGIN_BYTES = 64 * 1024 * 1024

# "auto" picks "parallel" when it can: measured on the 2-core test machine
# (PostgreSQL 15, scratch tuning, busy neighbours), a 764 MB database (2 tables,
# 3.3 M rows, 5 indexes; 373 MB dump), dump read from a local file standing in
# for restic dump, two rounds each:
#   stream    21.7 s, 20.1 s    (download, load and index build overlapped, one process)
#   parallel  17.8 s, 16.1 s    (save 0.3 s + load 4.7/4.9 s + index build 12.3/10.6 s, -j 2)
# Building indexes two at a time is what wins; it outweighs the temp copy as long
# as the download is not much slower than the load. "parallel" needs pg_restore on
# this machine and free space for the dump; otherwise "auto" streams.
# "overlap": the download is loaded (pre-data + data) as it arrives while a copy is written,
# then indexes and constraints are built in parallel from the copy (pg_restore -j needs a
# seekable file). Download and load overlap as in "stream", index builds run -j N as in
# "parallel". Measured by `python -m bench --only pgrestore`; see bench/README.md.
AUTO_PREFERRED: Literal["stream", "parallel", "overlap"] = "overlap"

# User relations counted in fingerprints: ordinary and partitioned tables.
# Views have no rows of their own; materialized views may be unpopulated.
TABLES_SQL = """
SELECT coalesce(json_agg(json_build_array(n.nspname || '.' || c.relname,
                                          format('%I.%I', n.nspname, c.relname))
                         ORDER BY n.nspname, c.relname), '[]')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""

USER_RELATIONS_SQL = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""


# ------------------------------------------------------------------ pure argv builders

def pg_dump_argv(bin_dir: str | None, conn: list[str], database: str, snapshot: str) -> list[str]:
    # -Z0: restic deduplicates unchanged table data between nights only if it is
    # not compressed first; restic (repository v2) compresses it itself.
    return [pg_tool(bin_dir, "pg_dump"), "-Fc", "-Z0", f"--snapshot={snapshot}", *conn,
            f"--dbname={conninfo_dbname(database)}"]


def pg_dumpall_globals_argv(bin_dir: str | None, conn: list[str]) -> list[str]:
    # Role password hashes are kept: a recovered server needs them (the snapshot is encrypted).
    return [pg_tool(bin_dir, "pg_dumpall"), "--globals-only", *conn]


def pg_restore_argv(
    bin_dir: str | None,
    conn: list[str],
    database: str,
    *,
    file: str | None = None,
    jobs: int | None = None,
    sections: tuple[str, ...] = (),
    keep_owners: bool = True,
) -> list[str]:
    """pg_restore into `database`; reads stdin when `file` is None.

    --no-tablespaces: tablespace paths of the old server rarely exist on a new one.
    Without the globals (roles) owners and grants cannot be restored, so they are left out.
    """
    argv = [pg_tool(bin_dir, "pg_restore"), *conn, "--exit-on-error", "--no-tablespaces"]
    if not keep_owners:
        argv += ["--no-owner", "--no-privileges"]
    if jobs:
        argv += ["-j", str(jobs)]
    argv += [f"--section={s}" for s in sections]
    argv.append(f"--dbname={conninfo_dbname(database)}")
    if file is not None:
        argv.append(file)
    return argv


def count_sql(tables: list[tuple[str, str]]) -> str:
    """One statement counting rows of (key, quoted name) tables, answering one JSON object."""
    parts = [f"SELECT {quote_literal(key)} AS k, count(*) AS n FROM {qualified}" for key, qualified in tables]
    return "SELECT coalesce(json_object_agg(k, n), '{}') FROM (" + " UNION ALL ".join(parts) + ") s"


def stream_databases(names: list[str], wanted: str | None) -> dict[str, str]:
    """Map each `<db>.pgdump` stream to the database it is restored into."""
    streams = sorted(n for n in names if n.endswith(DUMP_SUFFIX))
    if not streams:
        raise SourceError("the snapshot set holds no PostgreSQL dump (*.pgdump) stream",
                          hint="check that the snapshot belongs to a postgres source")
    if wanted is None:
        return {s: s[: -len(DUMP_SUFFIX)] for s in streams}
    if len(streams) == 1:
        return {streams[0]: wanted}
    chosen = wanted + DUMP_SUFFIX
    if chosen in streams:
        return {chosen: wanted}
    have = ", ".join(s[: -len(DUMP_SUFFIX)] for s in streams)
    raise SourceError(f"the snapshot set holds several databases ({have}); none is named {wanted}",
                      hint="name one of them as the target database, or restore all without a name")


def filter_globals(sql: str, user: str | None) -> str:
    """Drop the statements that would recreate or alter the role we connect as.

    Applying the backed-up `ALTER ROLE postgres ... PASSWORD` would change the
    target's own login password under our feet.
    """
    if not user:
        return sql
    names = {user, quote_ident(user)}
    keep = []
    for line in sql.splitlines(keepends=True):
        match = re.match(r"(CREATE|ALTER) ROLE (\"(?:[^\"]|\"\")+\"|\S+?)[ ;]", line)
        if match and match.group(2) in names:
            continue
        keep.append(line)
    return "".join(keep)


def parse_records(out: bytes) -> list[list[str]]:
    """Rows of `psql -A -t -F US -R RS` output (values may hold newlines)."""
    text = out.decode("utf-8", "replace")
    text = text.removesuffix("\n")
    if not text:
        return []
    return [record.split(FIELD_SEP) for record in text.split(RECORD_SEP)]


# ------------------------------------------------------------------ connections

@dataclass(frozen=True)
class Endpoint:
    """How to reach one server: conn argv, libpq env (with PGPASSWORD) and a name for messages."""

    host: str | None
    port: int | None
    user: str | None
    password: str | None
    bin_dir: str | None

    @property
    def conn(self) -> list[str]:
        return conn_args(self.host, self.port, self.user)

    @property
    def env(self) -> dict[str, str]:
        return libpq_env(self.password)

    def where(self, database: str | None = None) -> str:
        return f"postgres {self.user or ''}@{self.host}:{self.port}/{database or ''}"


def target_endpoint(target: DbTarget) -> Endpoint:
    return Endpoint(host=target.socket or target.host, port=target.port, user=target.user,
                    password=target.password.reveal() if target.password else None, bin_dir=target.bin_dir)


class PostgresDatabase:
    kind = "postgres"

    def __init__(self, spec: PostgresSource, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner

    # ------------------------------------------------------------ backup

    def _source(self) -> Endpoint:
        password = self.spec.password.resolve().reveal() if self.spec.password else None
        return Endpoint(self.spec.host, self.spec.port, self.spec.user, password, self.spec.bin_dir)

    @contextmanager
    def open_dump(self) -> Iterator[DumpSession]:
        src = self._source()
        sessions: dict[str, PsqlSession] = {}
        counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-count")
        try:
            streams: list[DumpStream] = []
            version = 0
            for db in self.spec.database_names:
                session = sessions[db] = self._session(src, db)
                snapshot, version = _export_snapshot(session)
                streams.append(DumpStream(name=f"{db}{DUMP_SUFFIX}", database=db,
                                          start=partial(self._start_pg_dump, src, db, snapshot),
                                          check=partial(CustomArchiveCheck, f"pg_dump of {db}")))
            if self.spec.globals:
                streams.append(DumpStream(name=GLOBALS_STREAM, start=partial(self._start_globals, src),
                                          check=partial(TrailerCheck, "pg_dumpall --globals-only",
                                                        PG_DUMPALL_TRAILER)))
            # Exact counts scan every table; they run in the exported snapshots while pg_dump
            # reads the same snapshots (PostgreSQL synchronises the two sequential scans).
            fingerprint = counter.submit(
                lambda: {"kind": self.kind, "server_version_num": version,
                         "databases": {db: _count_rows(s) for db, s in sessions.items()}})
            yield DumpSession(fingerprint, streams)
        finally:
            counter.shutdown(wait=False, cancel_futures=True)
            for session in sessions.values():
                session.close()

    def _session(self, ep: Endpoint, database: str) -> PsqlSession:
        return PsqlSession(self.runner, psql_argv(ep.bin_dir, ep.conn, database), ep.env, ep.where(database))

    def _start_pg_dump(self, ep: Endpoint, database: str, snapshot: str) -> Process:
        return self.runner.start(pg_dump_argv(ep.bin_dir, ep.conn, database, snapshot), env=ep.env)

    def _start_globals(self, ep: Endpoint) -> Process:
        return self.runner.start(pg_dumpall_globals_argv(ep.bin_dir, ep.conn), env=ep.env)

    # ------------------------------------------------------------ fingerprint, query

    def fingerprint_target(self, target: DbTarget, databases: list[str]) -> Fingerprint:
        ep = target_endpoint(target)
        counted: dict[str, dict[str, int]] = {}
        version = 0
        for db in databases:
            session = self._session(ep, db)
            try:
                session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                version = int(session.value("SELECT current_setting('server_version_num')"))
                counted[db] = _count_rows(session)
            finally:
                session.close()
        return {"kind": self.kind, "server_version_num": version, "databases": counted}

    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]:
        """Rows as text (NULL as ''), for drill `sql` steps."""
        db = database or target.database or self.spec.database_names[0]
        return self._run_sql(target_endpoint(target), db, sql)

    def _run_sql(self, ep: Endpoint, database: str, sql: str, timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
        # SQL goes through stdin: no argv length limit, and not visible in `ps`.
        argv = psql_argv(ep.bin_dir, ep.conn, database, records=True)
        result = self.runner.run(argv, env=ep.env, input=sql.encode(), timeout=timeout, check=False)
        if result.returncode != 0:
            tail = result.stderr.decode("utf-8", "replace").strip()
            raise SourceError(f"SQL failed on {ep.where(database)} (psql exit code {result.returncode}): "
                              f"{tail[-2000:] or 'no error text'}",
                              hint=failure_hint(result.returncode, tail, ep.where(database)))
        return parse_records(result.stdout)

    # ------------------------------------------------------------ restore

    def restore(
        self,
        reader: StreamReader,
        target: DbTarget,
        *,
        force: bool = False,
        strategy: Strategy = "auto",
        jobs: int | None = None,
        work_dir: str | None = None,
    ) -> RestoreResult:
        ep = target_endpoint(target)
        names = reader.names()
        plan = stream_databases(names, target.database)
        # Check every target before touching anything: a refusal changes nothing.
        existing = {db: self._database_state(ep, db) for db in plan.values()}
        busy = [db for db, state in existing.items() if state == "non-empty"]
        if busy and not force:
            raise RestoreRefused(
                f"database {', '.join(busy)} on {ep.where()} already holds tables; nothing was changed",
                hint="restore into a scratch instance, another database name, or pass force to replace it")
        result = RestoreResult(databases=list(plan.values()))
        keep_owners = GLOBALS_STREAM in names
        if keep_owners:
            result.phases.append(self._apply_globals(reader, ep, target.user))
        for stream, db in plan.items():
            self._prepare_database(ep, db, existing[db])
            chosen = self._choose_strategy(strategy, reader.size(stream), work_dir)
            restore_one = {
                "stream": self._restore_stream,
                "parallel": partial(self._restore_parallel, jobs=jobs or _default_jobs(), work_dir=work_dir),
                "overlap": partial(self._restore_overlap, jobs=jobs or _default_jobs(), work_dir=work_dir),
            }[chosen]
            phases = restore_one(reader, stream, ep, db, keep_owners)
            result.phases.extend(phases)
            result.bytes += max((p.bytes or 0) for p in phases)
        return result

    def _choose_strategy(self, strategy: Strategy, size: int | None,
                         work_dir: str | None) -> Literal["stream", "parallel", "overlap"]:
        if strategy == "auto":
            # A temp file is only visible to pg_restore when it runs on this machine,
            # and only worth it when it surely fits.
            local = self.runner.name == "local"
            fits = size is not None and _free_bytes(work_dir) >= size + DISK_MARGIN_BYTES
            return AUTO_PREFERRED if local and fits else "stream"
        if strategy in ("parallel", "overlap") and self.runner.name != "local":
            raise SourceError(f"the parallel restore strategy needs pg_restore on this machine, not {self.runner.name}",
                              hint="use strategy 'stream' for restores over SSH")
        return strategy

    def _database_state(self, ep: Endpoint, db: str) -> Literal["absent", "empty", "non-empty"]:
        found = self._run_sql(ep, MAINTENANCE_DB, f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(db)}")
        if not found:
            return "absent"
        relations = int(self._run_sql(ep, db, USER_RELATIONS_SQL)[0][0])
        objects = int(self._run_sql(ep, db, "SELECT count(*) FROM pg_largeobject_metadata")[0][0])
        return "non-empty" if relations or objects else "empty"

    def _prepare_database(self, ep: Endpoint, db: str, state: str) -> None:
        if state == "empty":
            return
        if state == "non-empty":
            version = int(self._run_sql(ep, MAINTENANCE_DB, "SHOW server_version_num")[0][0])
            # WITH (FORCE) (PostgreSQL 13+) ends other sessions that would block the drop.
            force = " WITH (FORCE)" if version >= 130000 else ""
            log.warning("force: dropping database %s on %s", db, ep.where())
            self._run_sql(ep, MAINTENANCE_DB, f"DROP DATABASE {quote_ident(db)}{force}")
        # template0: nothing from template1 may collide with the objects in the dump.
        self._run_sql(ep, MAINTENANCE_DB, f"CREATE DATABASE {quote_ident(db)} TEMPLATE template0")

    def _apply_globals(self, reader: StreamReader, ep: Endpoint, user: str | None) -> RestorePhase:
        """Roles and tablespaces, best effort: ones that exist already are fine."""
        started = time.monotonic()
        proc = reader.open(GLOBALS_STREAM)
        data = _read_bounded(proc, GLOBALS_MAX_BYTES, GLOBALS_STREAM)
        sql = filter_globals(data.decode("utf-8", "replace"), user)
        argv = psql_argv(ep.bin_dir, ep.conn, MAINTENANCE_DB, stop_on_error=False)
        result = self.runner.run(argv, env=ep.env, input=sql.encode(), timeout=QUERY_TIMEOUT, check=False)
        errors = [line for line in result.stderr.decode("utf-8", "replace").splitlines() if "ERROR" in line]
        if result.returncode == 2:   # psql: could not connect at all
            tail = result.stderr.decode("utf-8", "replace").strip()
            raise SourceError(f"cannot apply {GLOBALS_STREAM} on {ep.where()}: {tail}",
                              hint=connection_hint(tail, ep.where()))
        for line in errors:
            log.info("globals (ignored): %s", line)
        return RestorePhase("globals", time.monotonic() - started, len(data))

    def _restore_stream(self, reader: StreamReader, stream: str, ep: Endpoint, db: str,
                        keep_owners: bool) -> list[RestorePhase]:
        """restic dump | pg_restore: no temp copy; download, load and indexes overlap."""
        started = time.monotonic()
        argv = pg_restore_argv(ep.bin_dir, ep.conn, db, keep_owners=keep_owners)
        copied = self._feed_pg_restore(reader, stream, ep, db, argv)
        return [RestorePhase("download+load+index build (streamed)", time.monotonic() - started, copied)]

    def _feed_pg_restore(self, reader: StreamReader, stream: str, ep: Endpoint, db: str, argv: list[str],
                         copy_to: IO[bytes] | None = None) -> int:
        """Relay the stream into pg_restore (and into `copy_to`); raise on either side's failure."""
        src = reader.open(stream)
        try:
            dst = self.runner.start(argv, env=ep.env, stdin=True)
        except BaseException:
            stop_process(src, grace=2)
            raise
        copied, consumer_quit = _pipe(src, dst, RESTORE_TIMEOUT, f"{stream} -> pg_restore", copy_to=copy_to)
        src_code = _wait(src, 60)
        dst_code = _wait(dst, RESTORE_TIMEOUT)
        # Whoever failed first is the cause: pg_restore quitting early makes us stop the
        # reader; a reader failing mid-stream makes pg_restore see a truncated archive.
        if consumer_quit:
            _check_pg_restore(dst_code, dst.stderr_tail(), dst.argv, ep.where(db))
        if src_code != 0:
            raise SourceError(f"reading {stream} from the snapshot failed (exit code {src_code}): "
                              f"{src.stderr_tail().strip()[-2000:] or 'no error text'}",
                              hint=f"{ep.where(db)} is partly restored; fix the cause and rerun with force")
        _check_pg_restore(dst_code, dst.stderr_tail(), dst.argv, ep.where(db))
        return copied

    def _restore_overlap(self, reader: StreamReader, stream: str, ep: Endpoint, db: str,
                         keep_owners: bool, *, jobs: int, work_dir: str | None) -> list[RestorePhase]:
        """Load pre-data + data from the stream while keeping a copy; then post-data with -j."""
        tmp = private_dir("pgrestore", base=work_dir)
        try:
            _check_free_space(tmp, reader.size(stream), stream)
            dump = tmp / stream
            started = time.monotonic()
            argv = pg_restore_argv(ep.bin_dir, ep.conn, db, sections=("pre-data", "data"), keep_owners=keep_owners)
            with open(dump, "wb") as copy:
                copied = self._feed_pg_restore(reader, stream, ep, db, argv, copy_to=copy)
            phases = [RestorePhase("download+decrypt+load (overlapped)", time.monotonic() - started, copied)]
            started = time.monotonic()
            argv = pg_restore_argv(ep.bin_dir, ep.conn, db, file=str(dump), jobs=jobs,
                                   sections=("post-data",), keep_owners=keep_owners)
            result = self.runner.run(argv, env=ep.env, timeout=RESTORE_TIMEOUT, check=False)
            _check_pg_restore(result.returncode, result.stderr.decode("utf-8", "replace"), argv, ep.where(db))
            phases.append(RestorePhase("index build", time.monotonic() - started, None))
            return phases
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _restore_parallel(self, reader: StreamReader, stream: str, ep: Endpoint, db: str,
                          keep_owners: bool, *, jobs: int, work_dir: str | None) -> list[RestorePhase]:
        """Save to a private temp file, then pg_restore -j in two timed runs."""
        tmp = private_dir("pgrestore", base=work_dir)
        try:
            _check_free_space(tmp, reader.size(stream), stream)
            dump = tmp / stream
            started = time.monotonic()
            size = reader.save(stream, dump)
            phases = [RestorePhase("download+decrypt", time.monotonic() - started, size)]
            for phase, sections in (("load", ("pre-data", "data")), ("index build", ("post-data",))):
                started = time.monotonic()
                argv = pg_restore_argv(ep.bin_dir, ep.conn, db, file=str(dump), jobs=jobs,
                                       sections=sections, keep_owners=keep_owners)
                result = self.runner.run(argv, env=ep.env, timeout=RESTORE_TIMEOUT, check=False)
                _check_pg_restore(result.returncode, result.stderr.decode("utf-8", "replace"), argv, ep.where(db))
                phases.append(RestorePhase(phase, time.monotonic() - started, size if phase == "load" else None))
            return phases
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ helpers

def _export_snapshot(session: PsqlSession) -> tuple[str, int]:
    """Open the dump transaction and export its snapshot; rows are counted later in it."""
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    # The first statement fixes the transaction's snapshot: the export must be it.
    snapshot = session.value("SELECT pg_export_snapshot()")
    version = int(session.value("SELECT current_setting('server_version_num')"))
    return snapshot, version


def _count_rows(session: PsqlSession) -> dict[str, int]:
    tables = [tuple(t) for t in json.loads(session.value(TABLES_SQL))]
    counts: dict[str, int] = {}
    for i in range(0, len(tables), COUNT_CHUNK):
        chunk = tables[i : i + COUNT_CHUNK]
        counts.update(json.loads(session.value(count_sql(chunk), COUNT_TIMEOUT)))  # type: ignore[arg-type]
    counts[LARGE_OBJECTS_KEY] = int(session.value("SELECT count(*) FROM pg_largeobject_metadata"))
    return counts


def _check_pg_restore(code: int | None, stderr: str, argv: list[str], where: str) -> None:
    errors = [line for line in stderr.splitlines() if "error:" in line.lower()]
    if code == 0 and not errors:
        return
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    raise SourceError(
        f"pg_restore into {where} failed ({'exit code ' + str(code) if code is not None else 'timed out'}):\n"
        f"    {tail or 'no error text'}",
        hint=connection_hint(tail, where) if "connection" in tail.lower() else
        "the database is partly restored; fix the cause and rerun with force")


def _pipe(src: Process, dst: Process, timeout: float, what: str, *,
          copy_to: IO[bytes] | None = None) -> tuple[int, bool]:
    """Relay src.stdout into dst.stdin (and into `copy_to`, if given); a watchdog kills
    both when `timeout` passes.

    Returns (bytes copied, whether dst stopped reading before the end).
    """
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        src.kill()
        dst.kill()

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    _drain_async(dst.stdout)
    copied = 0
    consumer_quit = False
    assert dst.stdin is not None
    try:
        read = getattr(src.stdout, "read1", src.stdout.read)
        while chunk := read(1 << 20):
            if copy_to is not None:
                copy_to.write(chunk)
            copied += len(chunk)
            if consumer_quit:
                if dst.poll() not in (None, 0):   # it failed: no point in finishing the copy
                    stop_process(src, grace=2)
                    break
                continue   # only completing the copy
            try:
                dst.stdin.write(chunk)
            except (BrokenPipeError, OSError, ValueError):
                # pg_restore stopped reading: it failed (its stderr says why), or, loading only
                # some sections, it is done early; a copy still needs the rest of the stream.
                consumer_quit = True
                if copy_to is None:
                    stop_process(src, grace=2)
                    break
        try:
            dst.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        raise CommandError(dst.argv, None, dst.stderr_tail(), what=what, hint=f"it took longer than {timeout:.0f}s")
    return copied, consumer_quit


def _drain_async(pipe: IO[bytes]) -> None:
    """pg_restore -d writes nearly nothing to stdout, but a full pipe would block it."""
    def drain() -> None:
        try:
            while pipe.read(65536):
                pass
        except (OSError, ValueError):
            pass
    threading.Thread(target=drain, daemon=True).start()


def _wait(proc: Process, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except Exception:  # noqa: BLE001 - TimeoutExpired (local) or the SSH equivalent
        proc.kill()
        return None


def _read_bounded(proc: Process, limit: int, what: str) -> bytes:
    data = proc.stdout.read(limit + 1)
    code = _wait(proc, 60)
    if len(data) > limit:
        proc.kill()
        raise SourceError(f"{what} is larger than {limit} bytes; it is not a globals dump")
    if code != 0:
        raise SourceError(f"reading {what} from the snapshot failed (exit code {code}): {proc.stderr_tail().strip()}")
    return data


def _check_free_space(directory: Path, need: int | None, what: str) -> None:
    if need is None:
        return
    free = shutil.disk_usage(directory).free
    if free < need + DISK_MARGIN_BYTES:
        raise SourceError(
            f"not enough free space in {directory} for {what}: need {need / 1e6:.0f} MB, "
            f"{free / 1e6:.0f} MB free",
            hint="free some space, point work_dir (TMPDIR) at a larger disk, or use the 'stream' strategy")


def _free_bytes(work_dir: str | None) -> int:
    return shutil.disk_usage(work_dir or tempfile.gettempdir()).free


def _default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


__all__ = [
    "PostgresDatabase",
    "count_sql",
    "filter_globals",
    "parse_records",
    "pg_dump_argv",
    "pg_dumpall_globals_argv",
    "pg_restore_argv",
    "stream_databases",
]
