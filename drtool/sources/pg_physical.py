"""A PostgreSQL source with `pitr:`: its logical dumps plus one physical base backup per backup.

The base backup is one more stream of the source's snapshot set (`base.tar`, produced by
`pg_basebackup -D - -F t -X fetch`), so it goes through the same commit gate as every
dump: restic commits it only after pg_basebackup exited 0 and `BaseBackupCheck` saw a
whole tar; a failed base backup is never a snapshot, and the set is complete only with
fingerprint.json, written last. The fingerprint gains a `pitr` block (start/stop LSN,
timeline, system identifier, segment size, stop time) that recovery and status read.

Restores, fingerprints of targets and queries are the logical source's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from drtool.config.models import PostgresSource
from drtool.execute import Process, Runner
from drtool.sources.base import (
    DbTarget,
    DumpSession,
    DumpStream,
    Fingerprint,
    RestoreResult,
    StreamReader,
)
from drtool.sources.pg_basebackup import (
    BASE_STREAM,
    BaseBackupCheck,
    pg_basebackup_argv,
)
from drtool.sources.postgres import PostgresDatabase
from drtool.sources.psql import conn_args, libpq_env

PITR_KEY = "pitr"


class PitrSession(DumpSession):
    """The logical session's streams plus base.tar; its fingerprint gains the base backup's facts."""

    def __init__(self, inner: DumpSession, base: DumpStream, checks: list[BaseBackupCheck]) -> None:
        super().__init__(inner._fingerprint, [*inner.streams, base])
        self._inner, self._checks = inner, checks

    @property
    def fingerprint(self) -> Fingerprint:
        # Read by the engine only after every stream (base.tar included) was committed: the
        # newest check is the one that saw the committed base.tar.
        return {**self._inner.fingerprint, PITR_KEY: self._checks[-1].info()}


class PitrDatabase:
    kind = "postgres"

    def __init__(self, spec: PostgresSource, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self.logical = PostgresDatabase(spec, runner)

    @contextmanager
    def open_dump(self) -> Iterator[DumpSession]:
        with self.logical.open_dump() as session:
            checks: list[BaseBackupCheck] = []   # one per start of the stream (the pipeline's factory)

            def new_check() -> BaseBackupCheck:
                checks.append(BaseBackupCheck())
                return checks[-1]

            stream = DumpStream(name=BASE_STREAM, start=partial(self._start_base_backup), check=new_check)
            yield PitrSession(session, stream, checks)

    def _start_base_backup(self) -> Process:
        spec = self.spec
        password = spec.password.resolve().reveal() if spec.password else None
        argv = pg_basebackup_argv(spec.bin_dir, conn_args(spec.host, spec.port, spec.user), "drtool base backup")
        return self.runner.start(argv, env=libpq_env(password))

    def restore(self, reader: StreamReader, target: DbTarget, *, force: bool = False, **kw: Any) -> RestoreResult:
        return self.logical.restore(reader, target, force=force, **kw)

    def fingerprint_target(self, target: DbTarget, databases: list[str]) -> Fingerprint:
        return self.logical.fingerprint_target(target, databases)

    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]:
        return self.logical.query(target, sql, database)
