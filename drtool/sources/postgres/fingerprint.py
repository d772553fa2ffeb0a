"""PostgreSQL fingerprints: exact row counts and content hashes of every user table, in one snapshot.

At backup time they are taken in the transaction whose snapshot pg_dump --snapshot dumps
(see dump.py), concurrently with the dump; after a restore the same statements run in a
REPEATABLE READ transaction on the restored database, so the two compare table by table.

Content hash of a table: the exact sum of a 64-bit hash of each row, so it does not depend on
the rows' physical order (which a restore changes), only on their values. The row hash is
hash_record_extended over the row itself where every column's type hashes its value
(PostgreSQL 14+, commands.RECORD_HASH_TYPES), else a hash of the row's text form.
Not covered by content hashes: large objects (counted only), sequences' positions, and what
is not table data (views, functions, grants).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from drtool.execute import Runner
from drtool.sources.base import Fingerprint
from drtool.sources.postgres.client import open_session
from drtool.sources.postgres.commands import (
    CONTENT_SETTINGS_SQL,
    COUNT_CHUNK,
    LARGE_OBJECTS_KEY,
    TABLES_SQL,
    ContentTable,
    Endpoint,
    content_sql,
    content_tables_sql,
    count_sql,
    hash_method,
)
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


def backup_method(session: PsqlSession, version: int) -> str:
    """The hash method for this database: it depends on the server version and encoding."""
    return hash_method(version, session.value("SELECT current_setting('server_encoding')"))


def count_and_hash(session: PsqlSession, method: str) -> tuple[dict[str, int], dict[str, str]]:
    """Counts (as count_rows) and content hashes, from one scan of each table."""
    session.query(CONTENT_SETTINGS_SQL)
    tables = [ContentTable(*t) for t in json.loads(session.value(content_tables_sql(method)))]
    counts: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for i in range(0, len(tables), COUNT_CHUNK):
        answer = json.loads(session.value(content_sql(tables[i : i + COUNT_CHUNK], method), COUNT_TIMEOUT))
        for key, (rows, digest) in answer.items():
            counts[key] = int(rows)
            if digest is not None:
                hashes[key] = digest
    counts[LARGE_OBJECTS_KEY] = int(session.value("SELECT count(*) FROM pg_largeobject_metadata"))
    return counts, hashes


def fingerprint_sessions(sessions: Mapping[str, PsqlSession], version: int, *, content: bool) -> Fingerprint:
    """The backup fingerprint, from sessions already inside the dump's exported snapshots."""
    fp: Fingerprint = {"kind": KIND, "server_version_num": version, "databases": {}}
    for db, session in sessions.items():
        if content:
            method = backup_method(session, version)
            fp["databases"][db], tables = count_and_hash(session, method)
            fp.setdefault("content", {})[db] = {"method": method, "tables": tables}
        else:
            fp["databases"][db] = count_rows(session)
    return fp


def fingerprint_target(runner: Runner, ep: Endpoint, databases: list[str],
                       content: Mapping[str, str] | None = None) -> Fingerprint:
    """What a restored server holds, in the same shape as the backup's fingerprint.

    `content` maps a database to the hash method its backup fingerprint used; those
    databases are hashed too, the others only counted.
    """
    fp: Fingerprint = {"kind": KIND, "server_version_num": 0, "databases": {}}
    for db in databases:
        session = open_session(runner, ep, db)
        try:
            session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            fp["server_version_num"] = int(session.value("SELECT current_setting('server_version_num')"))
            method = (content or {}).get(db)
            if method:
                fp["databases"][db], tables = count_and_hash(session, method)
                fp.setdefault("content", {})[db] = {"method": method, "tables": tables}
            else:
                fp["databases"][db] = count_rows(session)
        finally:
            session.close()
    return fp
