"""PostgreSQL restore: refuse a non-empty target unless forced, create the database, load it.

Per `<db>.pgdump` stream, one of these strategies:
  * "stream": restic dump | pg_restore (no temporary copy; one timed phase),
  * "overlap": load pre-data + data while the download arrives, keeping a copy,
    then post-data (indexes, constraints) from the copy with -j N.
("parallel", download first then pg_restore -j in two runs, was dropped: "overlap" does
the same index builds and overlaps the download with the load, and was faster in every
measured case; see bench/README.md.)

Every program runs through the `Runner`, so "stream" works over SSH too.
Passwords reach the tools as PGPASSWORD in their environment only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import IO, Literal

from drtool.engine.relay import relay
from drtool.errors import CommandError, RestoreRefused, SourceError, UsageError
from drtool.execute import Process, Runner, stop_process
from drtool.scratch.common import private_dir
from drtool.sources.base import DbTarget, RestorePhase, RestoreResult, StreamReader
from drtool.sources.postgres.client import QUERY_TIMEOUT, run_sql
from drtool.sources.postgres.commands import (
    GLOBALS_STREAM,
    MAINTENANCE_DB,
    USER_RELATIONS_SQL,
    Endpoint,
    filter_globals,
    pg_restore_argv,
    stream_databases,
    target_endpoint,
)
from drtool.sources.postgres.partial import Selection, parse_toc, select
from drtool.sources.psql import connection_hint, pg_tool, psql_argv, quote_ident, quote_literal

log = logging.getLogger(__name__)

Strategy = Literal["auto", "stream", "overlap"]

RESTORE_TIMEOUT = 24 * 3600.0
GLOBALS_MAX_BYTES = 64 * 1024 * 1024
TOC_MAX_BYTES = 256 * 1024 * 1024
DISK_MARGIN_BYTES = 64 * 1024 * 1024

# "auto" picks "overlap" when pg_restore runs on this machine and the dump surely fits in the
# work dir (measured with `python -m bench --only pgrestore`, bench/README.md), else "stream".
AUTO_PREFERRED: Literal["stream", "overlap"] = "overlap"


class Restorer:
    """Restores the `<db>.pgdump` streams of one snapshot set through `runner`."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _run_sql(self, ep: Endpoint, database: str, sql: str, timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
        return run_sql(self.runner, ep, database, sql, timeout)

    def restore(
        self,
        reader: StreamReader,
        target: DbTarget,
        *,
        force: bool = False,
        strategy: Strategy = "auto",
        jobs: int | None = None,
        work_dir: str | None = None,
        tables: Sequence[str] = (),
        schemas: Sequence[str] = (),
    ) -> RestoreResult:
        ep = target_endpoint(target)
        names = reader.names()
        plan = stream_databases(names, target.database)
        if (tables or schemas) and len(plan) != 1:
            raise UsageError(f"the snapshot set holds several databases ({', '.join(plan.values())}); "
                             "a --table or --schema restore needs one", hint="name it as the target's database")
        # Check every target before touching anything: a refusal changes nothing.
        existing = {db: self._database_state(ep, db) for db in plan.values()}
        busy = [db for db, state in existing.items() if state == "non-empty"]
        if busy and not force:
            raise RestoreRefused(
                f"database {', '.join(busy)} on {ep.where()} already holds tables; nothing was changed",
                hint="restore into a scratch instance, another database name, or pass force to replace it")
        result = RestoreResult(databases=list(plan.values()))
        # A partial restore reads the dump's table of contents first: a name it lacks changes nothing.
        selection = self._select(reader, plan, ep, tables, schemas, result) if tables or schemas else None
        keep_owners = GLOBALS_STREAM in names
        if keep_owners:
            result.phases.append(self._apply_globals(reader, ep, target.user))
        if selection is not None:
            [(stream, db)] = plan.items()
            return self._restore_part(reader, stream, ep, db, existing[db], result, keep_owners, selection)
        for stream, db in plan.items():
            self._prepare_database(ep, db, existing[db])
            chosen = self._choose_strategy(strategy, reader.size(stream), work_dir)
            restore_one = {
                "stream": self._restore_stream,
                "overlap": partial(self._restore_overlap, jobs=jobs or _default_jobs(), work_dir=work_dir),
            }[chosen]
            phases = restore_one(reader, stream, ep, db, keep_owners)
            result.phases.extend(phases)
            result.bytes += max((p.bytes or 0) for p in phases)
        return result

    def _choose_strategy(self, strategy: Strategy, size: int | None,
                         work_dir: str | None) -> Literal["stream", "overlap"]:
        if strategy == "auto":
            # A temp file is only visible to pg_restore when it runs on this machine,
            # and only worth it when it surely fits.
            local = self.runner.name == "local"
            fits = size is not None and _free_bytes(work_dir) >= size + DISK_MARGIN_BYTES
            return AUTO_PREFERRED if local and fits else "stream"
        if strategy == "overlap" and self.runner.name != "local":
            raise SourceError(f"the overlap restore strategy needs pg_restore on this machine, not {self.runner.name}",
                              hint="use strategy 'stream' for restores over SSH")
        return strategy

    def _wal_minimal(self, ep: Endpoint) -> bool:
        """Whether the server skips WAL for tables created and loaded in one transaction. Only
        then is the load one transaction: elsewhere it would only hold a lock per table until the
        end (a dump of thousands of tables could exhaust the server's lock table)."""
        return self._run_sql(ep, MAINTENANCE_DB, "SHOW wal_level")[0][0] == "minimal"

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

    def _select(self, reader: StreamReader, plan: dict[str, str], ep: Endpoint, tables: Sequence[str],
                schemas: Sequence[str], result: RestoreResult) -> Selection:
        if self.runner.name != "local":
            raise SourceError("a --table or --schema restore runs pg_restore on this machine only",
                              hint="restore into a server reachable from here, by URL")
        started = time.monotonic()
        [stream] = plan
        selection = select(parse_toc(self._read_toc(reader, stream, ep)), tables, schemas)
        result.phases.append(RestorePhase("read table of contents", time.monotonic() - started))
        return selection

    def _restore_part(self, reader: StreamReader, stream: str, ep: Endpoint, db: str, state: str,
                      result: RestoreResult, keep_owners: bool, selection: Selection) -> RestoreResult:
        """Some tables or schemas, with what belongs to them (partial.py), streamed through -L."""
        self._prepare_database(ep, db, state)
        tmp = private_dir("pgrestore-list")
        try:
            listing = tmp / "restore.list"
            listing.write_text("\n".join(selection.lines) + "\n")
            started = time.monotonic()
            argv = [*pg_restore_argv(ep.bin_dir, ep.conn, db, keep_owners=keep_owners), "-L", str(listing)]
            copied = self._feed_pg_restore(reader, stream, ep, db, argv, may_stop_early=True)
            result.phases.append(RestorePhase(f"download+load {len(selection.tables)} tables (streamed)",
                                              time.monotonic() - started, copied))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result.bytes, result.tables, result.skipped = copied, selection.tables, selection.skipped
        return result

    def _read_toc(self, reader: StreamReader, stream: str, ep: Endpoint) -> str:
        """`pg_restore -l -v` of the stream: it reads the archive's header and stops."""
        src = reader.open(stream)
        try:
            dst = self.runner.start([pg_tool(ep.bin_dir, "pg_restore"), "-l", "-v"], env=ep.env, stdin=True)
        except BaseException:
            stop_process(src, grace=2)
            raise
        pump = threading.Thread(target=_pump_until_closed, args=(src, dst), daemon=True)
        pump.start()
        try:
            text = dst.stdout.read(TOC_MAX_BYTES + 1)
            code = _wait(dst, QUERY_TIMEOUT)
        finally:
            stop_process(src, grace=2)    # the rest of the dump is not needed for the list
            pump.join(30)
        if len(text) > TOC_MAX_BYTES:
            raise SourceError(f"the table of contents of {stream} is larger than {TOC_MAX_BYTES} bytes")
        if code != 0:
            raise SourceError(f"pg_restore could not read the table of contents of {stream} (exit code {code}): "
                              f"{dst.stderr_tail().strip()[-2000:] or 'no error text'}",
                              hint="is the stream a custom-format dump? check the snapshot (restic check)")
        return text.decode("utf-8", "replace")

    def _feed_pg_restore(self, reader: StreamReader, stream: str, ep: Endpoint, db: str, argv: list[str],
                         copy_to: IO[bytes] | None = None, may_stop_early: bool = False) -> int:
        """Relay the stream into pg_restore (and into `copy_to`); raise on either side's failure.

        `may_stop_early`: pg_restore -L may be done before the end of the stream; then the rest is
        not needed and stopping the reader is no failure."""
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
            if may_stop_early:
                return copied
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
            argv = pg_restore_argv(ep.bin_dir, ep.conn, db, sections=("pre-data", "data"), keep_owners=keep_owners,
                                   single_transaction=self._wal_minimal(ep))
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


# ------------------------------------------------------------------ helpers

def _pump_until_closed(src: Process, dst: Process) -> None:
    """src.stdout into dst.stdin until either side stops (pg_restore -l reads only the head)."""
    relay(src, dst, what="reading the dump's table of contents")


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
    """Relay src.stdout into dst.stdin (and into `copy_to`, if given) through the one relay,
    stopped when `timeout` passes. Returns (bytes copied, whether dst stopped reading before the
    end: pg_restore failed, or, loading only some sections, it is done early)."""
    _drain_async(dst.stdout)
    moved = relay(src, dst, what=what, timeout=timeout, tee=copy_to)
    if moved.stopped == "timeout":
        raise CommandError(dst.argv, None, dst.stderr_tail(), what=what, hint=f"it took longer than {timeout:.0f}s")
    return moved.copied, moved.consumer_quit


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

