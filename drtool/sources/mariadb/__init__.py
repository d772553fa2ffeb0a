"""MariaDB / MySQL: dump with mariadb-dump, restore with the mariadb client, count rows.

One stream per database, named "<db>.sql": plain `mariadb-dump --single-transaction
--routines --triggers --events --hex-blob <db>` output, without CREATE DATABASE /
USE, so it restores under any name with bare tools:
`mariadb -e 'CREATE DATABASE x' && mariadb x < db.sql`.

The source in parts, in the order data flows:

* `commands`    pure builders: connection options, argv, SQL text, batch-output parsing
* `client`      the client programs of the runner's host, one-shot SQL
* `session`     a client kept open on a pipe (the lock session)
* `dump`        backup: FLUSH TABLES WITH READ LOCK, counts, content hashes, mariadb-dump streams
                (what is guaranteed about their consistency is written there)
* `fingerprint` the same counts and content hashes on a restored server
* `restore`     refusal of non-empty targets, recreate, load
* `partial`     the sections of a dump stream that restore only some tables

Password: MYSQL_PWD in the client's environment, not a --defaults-extra-file:
the same argv must work through an SSH runner, where only env and stdin reach
the remote side (a local option file would not exist there, and stdin carries
the dump or the SQL). The environment of a process is readable only by its
owner and root, unlike argv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

from drtool.config.models import MariadbSource
from drtool.execute import Runner
from drtool.sources.base import DbTarget, DumpSession, Fingerprint, RestoreResult, StreamReader
from drtool.sources.mariadb import dump, fingerprint, restore
from drtool.sources.mariadb.client import Client
from drtool.sources.mariadb.commands import (
    Conn,
    build_fingerprint,
    client_argv,
    conn_from_spec,
    conn_from_target,
    counts_sql,
    dump_argv,
    missing_databases,
    objects_sql,
    parse_batch,
    quote_ident,
    quote_str,
    restore_plan,
    tables_sql,
    unescape_field,
)
from drtool.sources.mariadb.session import SqlSession


class MariadbDatabase:
    kind = "mariadb"

    def __init__(self, spec: MariadbSource, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self.client = Client(runner)

    def open_dump(self) -> AbstractContextManager[DumpSession]:
        return dump.open_dump(self.client, self.spec)

    def restore(self, reader: StreamReader, target: DbTarget, *, force: bool = False,
                tables: Sequence[str] = ()) -> RestoreResult:
        """Every database of the set, or only `tables` of its one database (partial.py)."""
        return restore.restore(self.client, reader, target, force=force, tables=tables)

    def fingerprint_target(self, target: DbTarget, databases: list[str],
                           content: Mapping[str, str] | None = None) -> Fingerprint:
        return fingerprint.fingerprint_target(self.client, target, databases, content)

    def query(self, target: DbTarget, sql: str, database: str | None = None) -> list[list[str]]:
        conn = conn_from_target(target)
        return self.client.run_sql(conn, sql if sql.rstrip().endswith(";") else sql + ";",
                                   database or target.database)


__all__ = [
    "Conn", "MariadbDatabase", "SqlSession", "build_fingerprint", "client_argv", "conn_from_spec",
    "conn_from_target", "counts_sql", "dump_argv", "missing_databases", "objects_sql", "parse_batch",
    "quote_ident", "quote_str", "restore_plan", "tables_sql", "unescape_field",
]
