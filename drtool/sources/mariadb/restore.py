"""MariaDB restore: refuse non-empty targets unless forced, recreate, load through the client.

Each `<db>.sql` stream is plain mariadb-dump output without CREATE DATABASE / USE,
relayed from `restic dump` into `mariadb --database=NAME`, so it loads under any name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from drtool.engine.relay import relay
from drtool.errors import RestoreRefused, SourceError, UsageError
from drtool.execute import Process, stop_process
from drtool.sources.base import DbTarget, RestorePhase, RestoreResult, StreamReader
from drtool.sources.mariadb.client import Client
from drtool.sources.mariadb.commands import (
    QUERY_TIMEOUT,
    Conn,
    access_hint,
    client_argv,
    conn_from_target,
    objects_sql,
    quote_ident,
    restore_plan,
)
from drtool.sources.mariadb.partial import SectionFilter, relay_sections

RESTORE_TIMEOUT = 6 * 3600.0      # a whole database load
CHUNK = 1 << 20


def restore(client: Client, reader: StreamReader, target: DbTarget, *, force: bool = False,
            tables: Sequence[str] = ()) -> RestoreResult:
    """Every database of the set, or (`tables`) only those tables of its one database."""
    conn = conn_from_target(target)
    plan = restore_plan(reader.names(), target.database)
    if tables and len(plan) != 1:
        raise UsageError(f"the snapshot holds several databases ({', '.join(db for _, db in plan)}); "
                         "a --table restore needs one", hint="name it as the target's database")
    _refuse_non_empty(client, conn, [db for _, db in plan], force)
    result = RestoreResult(databases=[db for _, db in plan])
    for stream, db in plan:
        started = time.monotonic()
        _recreate(client, conn, db, drop=force)
        result.phases.append(RestorePhase(f"create {db}", time.monotonic() - started))
        started = time.monotonic()
        sections = SectionFilter(tables) if tables else None
        loaded = _load(client, reader, stream, conn, db, sections)
        name = f"load {len(tables)} tables of {db}" if tables else f"load {db}"
        result.phases.append(RestorePhase(name, time.monotonic() - started, loaded))
        result.bytes += loaded
        if sections is not None:
            missing = sorted(set(tables) - sections.found)
            if missing:
                raise SourceError(f"the dump {stream} holds no table {', '.join(missing)}; "
                                  f"{db} on {conn.describe()} holds only the other ones asked for",
                                  hint="list the tables with `drtool ls POLICY --source SOURCE`")
            result.tables = sorted(sections.found)
    return result


def _refuse_non_empty(client: Client, conn: Conn, databases: Sequence[str], force: bool) -> None:
    rows = client.run_sql(conn, objects_sql(databases), timeout=60)
    busy = sorted({r[0] for r in rows if int(r[1]) > 0})
    if busy and not force:
        raise RestoreRefused(f"database {', '.join(busy)} on {conn.describe()} is not empty; nothing was changed",
                             hint="restore into a scratch instance or another name, or use force "
                                  "to drop and recreate it")


def _recreate(client: Client, conn: Conn, database: str, *, drop: bool) -> None:
    q = quote_ident(database)
    sql = (f"DROP DATABASE IF EXISTS {q};\n" if drop else "") + f"CREATE DATABASE IF NOT EXISTS {q};"
    client.run_sql(conn, sql, timeout=QUERY_TIMEOUT)


def _load(client: Client, reader: StreamReader, stream: str, conn: Conn, database: str,
          sections: SectionFilter | None = None) -> int:
    source = reader.open(stream)
    loader = client.runner.start(client_argv(client.client(), conn, database), env=conn.env(), stdin=True)
    try:
        if sections is None:
            moved = relay(source, loader, what=f"loading {stream}", timeout=RESTORE_TIMEOUT)
            copied = moved.copied
            if moved.stopped == "timeout":
                raise SourceError(f"loading {stream} into {database} took longer than {RESTORE_TIMEOUT:.0f}s")
        else:
            copied = _filtered(source, loader, sections)   # a partial restore rewrites the stream
        src_code = _wait(source)
        cli_code = _wait(loader)
    except BaseException:
        stop_process(source, grace=5)
        stop_process(loader, grace=5)
        raise
    if src_code != 0:
        raise SourceError(f"reading stream {stream} for the restore failed (exit {src_code}):\n    "
                          + source.stderr_tail().strip()[-2000:],
                          hint="check the snapshot and the repository (restic check)")
    if cli_code != 0:
        raise SourceError(f"loading {stream} into {database} on {conn.describe()} failed (exit {cli_code}):\n    "
                          + loader.stderr_tail().strip()[-2000:],
                          hint=access_hint(loader.stderr_tail()))
    return copied


def _filtered(source: Process, loader: Process, sections: SectionFilter) -> int:
    """Only the kept sections of the dump into the client (a transform, not a byte relay)."""
    assert loader.stdin is not None
    try:
        return relay_sections(source.stdout, loader.stdin, sections)
    except BrokenPipeError:
        return 0   # the client died; its exit status and stderr tell why
    finally:
        try:
            loader.stdin.close()
        except OSError:
            pass


def _wait(proc: Process, timeout: float = 120.0) -> int:
    try:
        return proc.wait(timeout)
    except Exception as exc:
        stop_process(proc, grace=5)
        raise SourceError(f"{proc.argv[0]} did not exit within {timeout:.0f}s after its input ended") from exc

