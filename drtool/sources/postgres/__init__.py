"""PostgreSQL: consistent dumps with exact row counts, restores, fingerprints.

The source in four parts, in the order data flows:

* `commands`    pure builders: pg_dump / pg_restore argv, SQL text, parsing, endpoints
* `dump`        backup: exported REPEATABLE READ snapshots, `pg_dump -Fc --snapshot=ID` streams
* `fingerprint` exact row counts and content hashes in the dump's snapshot, and of a restore
* `restore`     into a server: refusal of non-empty targets, stream / parallel / overlap loads
* `partial`     which entries of a dump restore only some tables or schemas

`PostgresDatabase` is the `DatabaseSource` the rest of drtool uses; it only wires
those parts to a `Runner`, so all of this works over SSH too. Dumps are plain
custom-format archives: `pg_restore` restores them without drtool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

from drtool.config.models import PostgresSource
from drtool.execute import Runner
from drtool.sources.base import DbTarget, DumpSession, Fingerprint, RestoreResult, StreamReader
from drtool.sources.postgres import dump, fingerprint
from drtool.sources.postgres.client import run_sql
from drtool.sources.postgres.commands import (
    count_sql,
    filter_globals,
    parse_records,
    pg_dump_argv,
    pg_dumpall_globals_argv,
    pg_restore_argv,
    stream_databases,
    target_endpoint,
)
from drtool.sources.postgres.restore import Restorer, Strategy


class PostgresDatabase:
    kind = "postgres"

    def __init__(self, spec: PostgresSource, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner

    def open_dump(self) -> AbstractContextManager[DumpSession]:
        return dump.open_dump(self.runner, self.spec)

    def fingerprint_target(self, target: DbTarget, databases: list[str],
                           content: Mapping[str, str] | None = None) -> Fingerprint:
        return fingerprint.fingerprint_target(self.runner, target_endpoint(target), databases, content)

    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]:
        """Rows as text (NULL as ''), for drill `sql` steps."""
        db = database or target.database or self.spec.database_names[0]
        return run_sql(self.runner, target_endpoint(target), db, sql)

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
        """The whole dump, or only `tables` ([SCHEMA.]NAME) / `schemas` with what belongs to them."""
        return Restorer(self.runner).restore(reader, target, force=force, strategy=strategy, jobs=jobs,
                                             work_dir=work_dir, tables=tables, schemas=schemas)


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
