"""SQLite: a consistent online copy via the backup API, restored atomically.

Backup: `open_dump` runs the producer (`python -m drtool.sources.sqlite_dump
snapshot PATH`, through the runner) which copies the database with SQLite's
backup API into a private 0700 temp directory and reports the copy's tables
and exact row counts. The one stream, named after the file ("app.sqlite"),
just reads that copy (`sqlite_dump cat`), so the fingerprint describes exactly
the bytes streamed, even while writers are active; with content_hash (the default)
it also hashes every row of the copy. The copy is removed when
the session closes. This temp copy is the one exception to "dumps are never
staged on disk": the backup API needs a destination database, and SQLite
files are usually small.

Restore: into `DbTarget(kind="sqlite", path=...)`, on drtool's own host. An
existing non-empty file is refused unless `force`; the stream is written to a
temp file beside the target, checked with `PRAGMA integrity_check`, fsynced
and renamed over the target, so the target is either the old file or the
complete new one.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO

from drtool.config.models import SqliteSource
from drtool.engine.relay import FileSink, relay
from drtool.errors import CommandError, RestoreRefused, SourceError
from drtool.execute import Process, Runner, stop_process
from drtool.sources import sqlite_dump
from drtool.sources.base import (
    DbTarget,
    DumpSession,
    DumpStream,
    Fingerprint,
    RestorePhase,
    RestoreResult,
    StreamReader,
)
from drtool.sources.sqlite_dump import open_readonly, table_counts, table_hashes
from drtool.sources.stream_checks import SqliteCopyCheck

log = logging.getLogger(__name__)

PRODUCER = "drtool.sources.sqlite_dump"
SNAPSHOT_TIMEOUT = 1800.0
RESTORE_TIMEOUT = 6 * 3600.0
CHUNK = 1 << 20


def producer_for(runner: Runner) -> Callable[[str, str], list[str]]:
    # Locally the very interpreter drtool runs in; elsewhere the host's python3
    # with drtool installed.
    if runner.name == "local":
        return local_producer_argv
    return lambda action, path: producer_argv("python3", action, path)


def producer_argv(python: str, action: str, path: str) -> list[str]:
    return [python, "-m", PRODUCER, action, path]


def local_producer_argv(action: str, path: str) -> list[str]:
    # Run the file as an isolated script (-I: no script dir, no user site):
    # importing the drtool.sources package would load the whole config layer
    # first, costing ~1 s on each of the three producer calls.
    return [sys.executable, "-I", sqlite_dump.__file__, action, path]


def fingerprint_of(name: str, tables: dict[str, int], content: dict | None = None) -> Fingerprint:
    fp: Fingerprint = {"kind": "sqlite", "databases": {name: dict(tables)}}
    if content is not None:
        fp["content"] = {name: content}
    return fp


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, spec: SqliteSource, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self.name = Path(spec.path).name

    # ------------------------------------------------------------ backup

    @contextmanager
    def open_dump(self) -> Iterator[DumpSession]:
        producer = producer_for(self.runner)
        info = self._snapshot(producer)
        try:
            copy = str(info["copy"])
            stream = DumpStream(self.name, lambda: self.runner.start(producer("cat", copy)),
                                database=self.name,
                                check=partial(SqliteCopyCheck, f"SQLite copy of {self.name}", info.get("size")))
            yield DumpSession(fingerprint_of(self.name, info["tables"], info.get("content")), [stream])
        finally:
            self._remove(producer, str(info["dir"]))

    def _snapshot(self, producer: Callable[[str, str], list[str]]) -> dict:
        # Counts (and content hashes) are taken on the very copy that is streamed.
        action = "snapshot-content" if self.spec.content_hash else "snapshot"
        try:
            res = self.runner.run(producer(action, self.spec.path), timeout=SNAPSHOT_TIMEOUT)
            return json.loads(res.text)
        except CommandError as exc:
            older = action == "snapshot-content" and "usage:" in exc.stderr_tail
            raise SourceError(f"could not copy SQLite database {self.spec.path} on {self.runner.name}: "
                              f"{exc.stderr_tail.strip() or exc.message}",
                              hint=f"the drtool on {self.runner.name} is older and cannot hash content: upgrade it "
                                   "there, or set content_hash: false for this source" if older else
                              "check the path and that drtool may read the file and its directory") from None
        except ValueError:
            raise SourceError(f"the SQLite producer on {self.runner.name} printed no valid snapshot report",
                              hint="is the same drtool version installed there?") from None

    def _remove(self, producer: Callable[[str, str], list[str]], workdir: str) -> None:
        try:
            self.runner.run(producer("remove", workdir), timeout=120)
        except CommandError as exc:
            # Never mask the real outcome of the backup; say what is left behind.
            log.warning("could not remove SQLite copy %s: %s", workdir, exc.message)

    # ------------------------------------------------------------ restore

    def restore(self, reader: StreamReader, target: DbTarget, *, force: bool = False) -> RestoreResult:
        dest = _target_path(target)
        if dest.is_symlink():
            raise RestoreRefused(f"restore target {dest} is a symlink (to {os.readlink(dest)}); nothing was changed",
                                 hint="give the path of the file itself: a restore never follows a link")
        stream = pick_stream(reader.names(), self.name)
        if dest.exists() and dest.stat().st_size > 0 and not force:
            raise RestoreRefused(f"{dest} exists and is not empty; nothing was changed",
                                 hint="restore into a scratch directory, or use force to replace it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        tmp = self._download(reader, stream, dest)
        phases = [RestorePhase("load", time.monotonic() - started, tmp.stat().st_size)]
        try:
            started = time.monotonic()
            check_integrity(tmp)
            phases.append(RestorePhase("integrity check", time.monotonic() - started))
            _replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return RestoreResult(databases=[dest.name], phases=phases, bytes=phases[0].bytes or 0)

    def _download(self, reader: StreamReader, stream: str, dest: Path) -> Path:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.drtool-", dir=dest.parent)
        tmp = Path(tmp_name)
        proc = reader.open(stream)
        try:
            with os.fdopen(fd, "wb") as out:
                _relay_with_deadline(proc, out)
                out.flush()
                os.fsync(out.fileno())
            code = proc.wait(120)
        except BaseException:
            stop_process(proc, grace=5)
            tmp.unlink(missing_ok=True)
            raise
        if code != 0:
            tmp.unlink(missing_ok=True)
            raise SourceError(f"reading stream {stream} for the restore of {dest} failed (exit {code}):\n    "
                              + proc.stderr_tail().strip()[-2000:], hint="check the snapshot (restic check)")
        return tmp

    # ------------------------------------------------------------ verify

    def fingerprint_target(self, target: DbTarget, databases: list[str],
                           content: Mapping[str, str] | None = None) -> Fingerprint:
        path = _target_path(target)
        name = databases[0] if databases else path.name
        method = (content or {}).get(name)
        if method and method != sqlite_dump.HASH_METHOD:
            raise SourceError(f"unknown SQLite content hash method {method!r} in the fingerprint",
                              hint="the backup was taken by a newer drtool; upgrade drtool to verify it")
        try:
            hashed = {"method": method, "tables": table_hashes(path)} if method else None
            return fingerprint_of(name, table_counts(path), hashed)
        except (OSError, sqlite3.Error) as exc:
            raise SourceError(f"cannot count rows in {path}: {exc}") from None

    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]:
        path = _target_path(target)
        try:
            conn = open_readonly(path)
            try:
                rows = conn.execute(sql).fetchall()
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as exc:
            raise SourceError(f"query on {path} failed: {exc}") from None
        return [["NULL" if v is None else str(v) for v in row] for row in rows]


# ---------------------------------------------------------------- helpers

def pick_stream(names: Sequence[str], expected: str) -> str:
    if expected in names:
        return expected
    if len(names) == 1:
        return names[0]
    raise SourceError(f"the snapshot holds {len(names)} streams ({', '.join(names) or 'none'}) "
                      f"and none is named {expected}", hint="pick a snapshot of this sqlite source")


def _target_path(target: DbTarget) -> Path:
    if target.kind != "sqlite" or target.path is None:
        raise SourceError(f"a SQLite restore needs a sqlite target with a path, got {target.describe()}")
    return Path(target.path)


def check_integrity(path: Path) -> None:
    # Read-write on purpose: a WAL-mode file opened read-only leaves -wal/-shm
    # behind; the last read-write connection to close removes them.
    try:
        conn = sqlite3.connect(path)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    except sqlite3.Error as exc:
        raise SourceError(f"restored file is not a usable SQLite database: {exc}",
                          hint="the snapshot may be damaged; try an older one") from None
    if result != [("ok",)]:
        raise SourceError(f"restored SQLite database fails integrity_check: {result[:5]}",
                          hint="the snapshot may be damaged; try an older one")


def _replace(tmp: Path, dest: Path) -> None:
    # A stale -wal/-shm of the old file would be replayed into the new one.
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, dest)
    with suppress(OSError):
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _relay_with_deadline(proc: Process, out: IO[bytes]) -> None:
    """The stream into a file through the one relay, bounded by RESTORE_TIMEOUT."""
    moved = relay(proc, FileSink(out), what="downloading the SQLite copy", timeout=RESTORE_TIMEOUT, close_dst=False)
    if moved.stopped == "timeout":
        raise SourceError(f"downloading the SQLite copy took longer than {RESTORE_TIMEOUT:.0f}s")
