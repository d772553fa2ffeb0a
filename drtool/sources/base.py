"""The contract every data source implements, and the registry of kinds.

Backup side: `open_dump()` is a context manager yielding a `DumpSession`: the
consistent fingerprint (tables and exact row counts, taken in the same
snapshot as the dump where the engine allows) and the list of streams to
back up. Each stream's `start()` launches the producer (pg_dump, ...) and
returns a `Process` whose stdout is the dump; the engine relays it into
`restic backup --stdin` and only lets restic commit after the producer exited 0.
The session stays open (e.g. holding the exported PostgreSQL snapshot) until
every stream has been consumed.

Restore side: `restore(reader, target, force=...)` reads streams back through
a `StreamReader` (restic dump) and loads them into `target`; `fingerprint_target`
counts what a restored database holds, for drills to compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drtool.execute import Process
from drtool.secrets import Secret

if TYPE_CHECKING:
    from drtool.engine.relay import StreamCheck

# Fingerprint of a database source, JSON-able:
#   {"kind": "postgres", "databases": {"siak": {"public.penduduk": 1234, ...}}}
Fingerprint = dict[str, Any]


@dataclass
class DumpStream:
    name: str                          # unique in the source: "siak.pgdump", "globals.sql"
    start: Callable[[], Process]       # launches the producer; its stdout is the dump
    database: str | None = None        # which database this stream holds, if any
    # A new completeness check for each start (drtool/sources/stream_checks.py, pg_archive.py):
    # it sees every byte on the way and vetoes the commit of a stream that exited 0 but is short.
    # A check makes the relay copy through Python instead of os.splice (cost: bench/README.md).
    check: "Callable[[], StreamCheck] | None" = None


class DumpSession:
    """The streams to back up and the fingerprint that describes exactly what they hold.

    The fingerprint may be a Future: PostgreSQL counts rows in the exported snapshot while
    pg_dump reads that same snapshot, instead of scanning every table before the dump starts.
    The engine reads it only after every stream was consumed.
    """

    def __init__(self, fingerprint: "Fingerprint | Future[Fingerprint]", streams: list[DumpStream]) -> None:
        self._fingerprint = fingerprint
        self.streams = streams

    @property
    def fingerprint(self) -> Fingerprint:
        fp = self._fingerprint
        return fp.result() if isinstance(fp, Future) else fp


@dataclass
class DbTarget:
    """Where a database restore goes: a scratch instance or a named server."""

    kind: str                          # "postgres" | "mariadb" | "sqlite"
    host: str | None = "127.0.0.1"
    port: int | None = None
    user: str | None = None
    password: Secret | None = None
    socket: str | None = None
    path: Path | None = None           # sqlite: the file to restore into
    database: str | None = None        # restore this one database under this name
    bin_dir: str | None = None         # where the server's client tools live
    env: dict[str, str] = field(default_factory=dict)  # how a `command` step reaches it

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        where = self.socket or f"{self.host}:{self.port}"
        return f"{self.kind}://{self.user or ''}@{where}/{self.database or ''}"


@dataclass
class RestorePhase:
    name: str                          # "download+decrypt" | "load" | "index build" | ...
    duration_s: float
    bytes: int | None = None

    @property
    def throughput_mb_s(self) -> float | None:
        if not self.bytes or self.duration_s <= 0:
            return None
        return self.bytes / self.duration_s / 1e6


@dataclass
class RestoreResult:
    databases: list[str]
    phases: list[RestorePhase] = field(default_factory=list)
    bytes: int = 0


class StreamReader(Protocol):
    """Reads one stream of the snapshot set being restored (restic dump)."""

    def names(self) -> list[str]: ...
    def open(self, name: str) -> Process: ...          # stdout = the stream's bytes
    def save(self, name: str, dest: Path) -> int: ...   # into a file (seekable); returns bytes
    def size(self, name: str) -> int | None: ...        # stream size in bytes, if known


class DatabaseSource(Protocol):
    kind: str

    def open_dump(self) -> AbstractContextManager[DumpSession]: ...
    def restore(self, reader: StreamReader, target: DbTarget, *, force: bool = False) -> RestoreResult: ...
    def fingerprint_target(self, target: DbTarget, databases: list[str]) -> Fingerprint: ...
    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]: ...


def compare_fingerprints(expected: Fingerprint, actual: Fingerprint) -> list[str]:
    """Human-readable differences; empty when the restore holds exactly what was backed up."""
    problems: list[str] = []
    exp_dbs: dict[str, dict[str, int]] = expected.get("databases", {})
    act_dbs: dict[str, dict[str, int]] = actual.get("databases", {})
    for db, tables in exp_dbs.items():
        got = act_dbs.get(db)
        if got is None:
            problems.append(f"database {db}: missing after restore")
            continue
        for table, rows in tables.items():
            if table not in got:
                problems.append(f"{db}.{table}: table missing after restore")
            elif got[table] != rows:
                problems.append(f"{db}.{table}: {got[table]} rows restored, {rows} at backup")
        for table in sorted(set(got) - set(tables)):
            problems.append(f"{db}.{table}: table not in the backup fingerprint")
    return problems


def iter_sources() -> Iterator[str]:
    yield from ("postgres", "mariadb", "sqlite", "files")
