"""MariaDB fingerprints of a restored server: exact row counts and content hashes per table.

At backup time the counts are taken in dump.py, under the read lock and inside the
consistent snapshot the dumps share, and the hashes in a second session whose snapshot
began under that lock; here the same statements run on the restored databases, in the
same shape, so the two compare table by table.
"""

from __future__ import annotations

from collections.abc import Mapping

from drtool.errors import SourceError
from drtool.sources.base import DbTarget, Fingerprint
from drtool.sources.mariadb.client import Client
from drtool.sources.mariadb.commands import (
    CONTENT_SETTINGS_SQL,
    HASH_METHOD,
    build_content,
    build_fingerprint,
    columns_sql,
    conn_from_target,
    counts_sql,
    group_columns,
    hashes_sql,
    tables_sql,
)

HASH_TIMEOUT = 4 * 3600.0


def fingerprint_target(client: Client, target: DbTarget, databases: list[str],
                       content: Mapping[str, str] | None = None) -> Fingerprint:
    """`content`: database -> hash method of its backup; those databases are hashed too."""
    conn = conn_from_target(target)
    if target.database and len(databases) == 1:
        databases = [target.database]
    rows = client.run_sql(conn, "SHOW DATABASES;")
    existing = [r[0] for r in rows]
    present = [db for db in databases if db in existing]
    tables = [(r[0], r[1]) for r in client.run_sql(conn, tables_sql(present))] if present else []
    counts = client.run_sql(conn, counts_sql(tables)) if tables else []
    fp = build_fingerprint(present, tables, counts)
    hashed = [db for db in present if (content or {}).get(db)]
    if hashed:
        fp["content"] = _hash_tables(client, conn, hashed, tables, content or {})
    return fp


def _hash_tables(client: Client, conn, databases: list[str], tables: list[tuple[str, str]],  # noqa: ANN001
                 methods: Mapping[str, str]) -> dict[str, dict[str, object]]:
    for db in databases:
        if methods[db] != HASH_METHOD:
            raise SourceError(f"unknown MariaDB content hash method {methods[db]!r} in the fingerprint",
                              hint="the backup was taken by a newer drtool; upgrade drtool to verify it")
    wanted = [(db, t) for db, t in tables if db in databases]
    columns = group_columns(client.run_sql(conn, columns_sql(databases)))
    sql = hashes_sql(wanted, columns)
    rows = client.run_sql(conn, CONTENT_SETTINGS_SQL + sql, timeout=HASH_TIMEOUT) if sql else []
    return build_content(databases, wanted, rows)
