"""MariaDB fingerprints of a restored server: exact row counts per table.

At backup time the counts are taken in dump.py, under the read lock and inside the
consistent snapshot the dumps share; here the same counting runs on the restored
databases, in the same shape, so the two compare table by table.
"""

from __future__ import annotations

from drtool.sources.base import DbTarget, Fingerprint
from drtool.sources.mariadb.client import Client
from drtool.sources.mariadb.commands import build_fingerprint, conn_from_target, counts_sql, tables_sql


def fingerprint_target(client: Client, target: DbTarget, databases: list[str]) -> Fingerprint:
    conn = conn_from_target(target)
    if target.database and len(databases) == 1:
        databases = [target.database]
    rows = client.run_sql(conn, "SHOW DATABASES;")
    existing = [r[0] for r in rows]
    present = [db for db in databases if db in existing]
    tables = [(r[0], r[1]) for r in client.run_sql(conn, tables_sql(present))] if present else []
    counts = client.run_sql(conn, counts_sql(tables)) if tables else []
    return build_fingerprint(present, tables, counts)
