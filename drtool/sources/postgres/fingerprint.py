"""PostgreSQL fingerprints: exact row counts of every user table, taken in one snapshot.

At backup time the counts run in the transaction whose snapshot pg_dump --snapshot
dumps (see dump.py); after a restore the same counting runs in a REPEATABLE READ
transaction on the restored database, so the two are comparable table by table.
"""

from __future__ import annotations

import json

from drtool.execute import Runner
from drtool.sources.base import Fingerprint
from drtool.sources.postgres.client import open_session
from drtool.sources.postgres.commands import COUNT_CHUNK, LARGE_OBJECTS_KEY, TABLES_SQL, Endpoint, count_sql
from drtool.sources.psql import PsqlSession

KIND = "postgres"
COUNT_TIMEOUT = 4 * 3600.0        # exact count(*) of every table of a big database takes a while


def export_snapshot(session: PsqlSession) -> tuple[str, int]:
    """Open the dump transaction and export its snapshot; rows are counted later in it."""
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    # The first statement fixes the transaction's snapshot: the export must be it.
    snapshot = session.value("SELECT pg_export_snapshot()")
    version = int(session.value("SELECT current_setting('server_version_num')"))
    return snapshot, version


def count_rows(session: PsqlSession) -> dict[str, int]:
    tables = [tuple(t) for t in json.loads(session.value(TABLES_SQL))]
    counts: dict[str, int] = {}
    for i in range(0, len(tables), COUNT_CHUNK):
        chunk = tables[i : i + COUNT_CHUNK]
        counts.update(json.loads(session.value(count_sql(chunk), COUNT_TIMEOUT)))  # type: ignore[arg-type]
    counts[LARGE_OBJECTS_KEY] = int(session.value("SELECT count(*) FROM pg_largeobject_metadata"))
    return counts


def fingerprint_target(runner: Runner, ep: Endpoint, databases: list[str]) -> Fingerprint:
    """What a restored server holds, in the same shape as the backup's fingerprint."""
    counted: dict[str, dict[str, int]] = {}
    version = 0
    for db in databases:
        session = open_session(runner, ep, db)
        try:
            session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = int(session.value("SELECT current_setting('server_version_num')"))
            counted[db] = count_rows(session)
        finally:
            session.close()
    return {"kind": KIND, "server_version_num": version, "databases": counted}
