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
counts (and hashes) what a restored database holds; `verify_restored` compares it
with the backup's fingerprint, for drills, `drtool restore` and `drtool recover`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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
#   {"kind": "postgres", "databases": {"siak": {"public.penduduk": 1234, ...}},
#    "content": {"siak": {"method": "pg-hashtext-sum-v1", "tables": {"public.penduduk": "-8817..."}}}}
# "content" (order-independent hashes of each table's rows) is absent from fingerprints
# written before it existed or with content_hash: false; those verify by counts alone.
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
    tables: list[str] = field(default_factory=list)    # a partial restore: the tables restored
    skipped: list[str] = field(default_factory=list)   # ... and what was left out because it needs more


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
    def fingerprint_target(self, target: DbTarget, databases: list[str],
                           content: Mapping[str, str] | None = None) -> Fingerprint: ...
    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]: ...


def compare_fingerprints(expected: Fingerprint, actual: Fingerprint) -> list[str]:
    """Human-readable differences; empty when the restore holds exactly what was backed up.

    Per table, in the backup's order: missing, a different row count, or -- where both
    sides carry a content hash of that database -- different content with the same count.
    """
    problems: list[str] = []
    exp_dbs: dict[str, dict[str, int]] = expected.get("databases", {})
    act_dbs: dict[str, dict[str, int]] = actual.get("databases", {})
    for db, tables in exp_dbs.items():
        got = act_dbs.get(db)
        if got is None:
            problems.append(f"database {db}: missing after restore")
            continue
        exp_hash, act_hash = _content_of(expected, db), _content_of(actual, db)
        for table, rows in tables.items():
            if table not in got:
                problems.append(f"{db}.{table}: table missing after restore")
            elif got[table] != rows:
                problems.append(f"{db}.{table}: {got[table]} rows restored, {rows} at backup")
            elif exp_hash and act_hash is not None and table in exp_hash and act_hash.get(table) != exp_hash[table]:
                problems.append(f"{db}.{table}: content differs from the backup (same {rows} rows, "
                                f"content hash {act_hash.get(table)} restored, {exp_hash[table]} at backup)")
        for table in sorted(set(got) - set(tables)):
            problems.append(f"{db}.{table}: table not in the backup fingerprint")
    return problems


def _content_of(fingerprint: Fingerprint, db: str) -> dict[str, str] | None:
    entry = fingerprint.get("content", {}).get(db)
    return None if entry is None else dict(entry.get("tables", {}))


def only_tables(fingerprint: Fingerprint, tables: Sequence[str]) -> Fingerprint:
    """The fingerprint cut down to `tables` (of each database): what a partial restore holds."""
    wanted = set(tables)
    out: Fingerprint = {**fingerprint, "databases": {
        db: {t: n for t, n in counts.items() if t in wanted} for db, counts in fingerprint.get("databases", {}).items()}}
    if "content" in fingerprint:
        out["content"] = {db: {**entry, "tables": {t: h for t, h in entry.get("tables", {}).items() if t in wanted}}
                          for db, entry in fingerprint["content"].items()}
    return out


def content_methods(fingerprint: Fingerprint) -> dict[str, str]:
    """Database -> the content hash method its backup used (none for older fingerprints)."""
    return {db: entry["method"] for db, entry in fingerprint.get("content", {}).items() if entry.get("method")}


def expected_for(fingerprint: Fingerprint, restored: list[str]) -> Fingerprint:
    """The backup fingerprint keyed by restored database names (one database may be renamed)."""
    original = fingerprint.get("databases", {})
    if len(original) == 1 and len(restored) == 1:
        names = {restored[0]: next(iter(original))}
    else:
        names = {db: db for db in restored}
    out: Fingerprint = {"databases": {new: original.get(old, {}) for new, old in names.items()}}
    content = fingerprint.get("content", {})
    hashed = {new: content[old] for new, old in names.items() if old in content}
    if hashed:
        out["content"] = hashed
    return out


@dataclass
class Verification:
    """A restored database compared with its backup fingerprint."""

    problems: list[str]
    tables: int
    rows: int
    hashed_tables: int                 # tables whose content hash was compared too

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        text = f"{self.tables} tables, {self.rows} rows: exactly the counts recorded at backup time"
        if self.hashed_tables:
            text += f"; content of {self.hashed_tables} tables equal to the backup (row hashes)"
        else:
            text += "; no content hashes in this backup's fingerprint (counts only)"
        return text

    def data(self) -> dict[str, Any]:
        return {"tables": self.tables, "rows": self.rows, "content_tables": self.hashed_tables}


def verify_restored(db: DatabaseSource, target: DbTarget, databases: list[str], fingerprint: Fingerprint, *,
                    content: bool = True, tables: Sequence[str] | None = None) -> Verification:
    """Count (and, where the backup recorded content hashes, hash) the restore and compare.

    `content=False` compares counts only, whatever the fingerprint holds. `tables`: a
    partial restore, compared on those tables only (of its one database).
    """
    expected = expected_for(fingerprint, databases)
    methods = content_methods(expected) if content else {}
    if not content:
        expected.pop("content", None)
    actual = db.fingerprint_target(target, databases, methods or None)
    if tables is not None:
        expected, actual = only_tables(expected, tables), only_tables(actual, tables)
    problems = compare_fingerprints(expected, actual)
    tables = sum(len(t) for t in expected["databases"].values())
    rows = sum(sum(t.values()) for t in expected["databases"].values())
    hashed = sum(len(entry.get("tables", {})) for entry in expected.get("content", {}).values())
    return Verification(problems, tables, rows, hashed)


def iter_sources() -> Iterator[str]:
    yield from ("postgres", "mariadb", "sqlite", "files")
