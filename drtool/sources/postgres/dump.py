"""PostgreSQL backup: one exported snapshot per database, pg_dump --snapshot streams.

Per database, one psql session opens a REPEATABLE READ READ ONLY transaction and
exports its snapshot. Each database's stream is then `pg_dump -Fc --snapshot=ID`:
the dump holds exactly the rows the fingerprint counts (and hashes) in that same
snapshot, even while writers keep writing. The sessions stay open until the context exits, since
the snapshot dies with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

from drtool.config.models import PostgresSource
from drtool.execute import Process, Runner
from drtool.sources.base import DumpSession, DumpStream
from drtool.sources.pg_archive import CustomArchiveCheck
from drtool.sources.postgres.client import open_session
from drtool.sources.postgres.commands import (
    DUMP_SUFFIX,
    GLOBALS_STREAM,
    Endpoint,
    pg_dump_argv,
    pg_dumpall_globals_argv,
)
from drtool.sources.postgres.fingerprint import export_snapshot, fingerprint_sessions
from drtool.sources.psql import PsqlSession
from drtool.sources.stream_checks import PG_DUMPALL_TRAILER, TrailerCheck


def source_endpoint(spec: PostgresSource) -> Endpoint:
    password = spec.password.resolve().reveal() if spec.password else None
    return Endpoint(spec.host, spec.port, spec.user, password, spec.bin_dir)


@contextmanager
def open_dump(runner: Runner, spec: PostgresSource) -> Iterator[DumpSession]:
    src = source_endpoint(spec)
    sessions: dict[str, PsqlSession] = {}
    counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-count")
    try:
        streams: list[DumpStream] = []
        version = 0
        for db in spec.database_names:
            session = sessions[db] = open_session(runner, src, db)
            snapshot, version = export_snapshot(session)
            streams.append(DumpStream(name=f"{db}{DUMP_SUFFIX}", database=db,
                                      start=partial(_start_pg_dump, runner, src, db, snapshot),
                                      check=partial(CustomArchiveCheck, f"pg_dump of {db}")))
        if spec.globals:
            streams.append(DumpStream(name=GLOBALS_STREAM, start=partial(_start_globals, runner, src),
                                      check=partial(TrailerCheck, "pg_dumpall --globals-only", PG_DUMPALL_TRAILER)))
        # Exact counts (and content hashes) scan every table; they run in the exported snapshots
        # while pg_dump reads the same snapshots (PostgreSQL synchronises the sequential scans).
        fingerprint = counter.submit(lambda: fingerprint_sessions(sessions, version, content=spec.content_hash))
        yield DumpSession(fingerprint, streams)
    finally:
        counter.shutdown(wait=False, cancel_futures=True)
        for session in sessions.values():
            session.close()


def _start_pg_dump(runner: Runner, ep: Endpoint, database: str, snapshot: str) -> Process:
    return runner.start(pg_dump_argv(ep.bin_dir, ep.conn, database, snapshot), env=ep.env)


def _start_globals(runner: Runner, ep: Endpoint) -> Process:
    return runner.start(pg_dumpall_globals_argv(ep.bin_dir, ep.conn), env=ep.env)
