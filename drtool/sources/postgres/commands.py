"""PostgreSQL: pure builders -- argv lists, SQL text, parsing. No processes here.

Unit-tested with exact lists (tests/unit/test_postgres_argv.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drtool.errors import SourceError
from drtool.sources.base import DbTarget
from drtool.sources.psql import (
    FIELD_SEP,
    RECORD_SEP,
    conn_args,
    conninfo_dbname,
    libpq_env,
    pg_tool,
    quote_ident,
    quote_literal,
)

DUMP_SUFFIX = ".pgdump"
GLOBALS_STREAM = "globals.sql"
LARGE_OBJECTS_KEY = "(large objects)"
MAINTENANCE_DB = "postgres"
COUNT_CHUNK = 200                 # tables per counting statement

# User relations counted in fingerprints: ordinary and partitioned tables.
# Views have no rows of their own; materialized views may be unpopulated.
TABLES_SQL = """
SELECT coalesce(json_agg(json_build_array(n.nspname || '.' || c.relname,
                                          format('%I.%I', n.nspname, c.relname))
                         ORDER BY n.nspname, c.relname), '[]')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""

# The same tables with what the content hash needs to know about each: partitioned
# (its rows are hashed in its partitions), has children (hash ONLY its own rows), is a
# child or partition (pg_dump may recreate its columns in another order: hash a jsonb
# form, whose keys are sorted, instead of the positional row text).
CONTENT_TABLES_SQL = """
SELECT coalesce(json_agg(json_build_array(n.nspname || '.' || c.relname,
                                          format('%I.%I', n.nspname, c.relname),
                                          c.relkind = 'p', c.relhassubclass,
                                          EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid),
                                          {record_hashable})
                         ORDER BY n.nspname, c.relname), '[]')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""

# Column types whose hash function hashes the value itself, the same on any server: bool,
# bytea, "char", name, int8, int2, int4, text, oid, float4, float8, bpchar, varchar, date,
# time, timestamp, timestamptz, numeric, uuid, jsonb (built-in OIDs, fixed in every PostgreSQL).
# Not enums (hashed by the label's OID, which a restore changes), not arrays, domains,
# composites, regclass & co, or types without a hash function; and no column whose collation
# is nondeterministic (it would hash 'Ana' like 'ANA').
RECORD_HASH_TYPES = (16, 17, 18, 19, 20, 21, 23, 25, 26, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1700,
                     2950, 3802)
RECORD_HASHABLE_SQL = (
    "NOT EXISTS (SELECT 1 FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation "
    "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    f"AND (a.atttypid <> ALL ('{{{','.join(map(str, RECORD_HASH_TYPES))}}}'::oid[]) "
    "OR NOT coalesce(co.collisdeterministic, true)))")


def content_tables_sql(method: str) -> str:
    """CONTENT_TABLES_SQL, with whether each table's rows can be record-hashed (HASH_RECORD only:
    pg_collation.collisdeterministic exists from PostgreSQL 12 on)."""
    return CONTENT_TABLES_SQL.replace("{record_hashable}", RECORD_HASHABLE_SQL if method == HASH_RECORD else "false")

# Content hashes hash each row's text form, so every setting that changes how a value is
# written as text is pinned: the backup server and a scratch restore then write the same
# row the same way (timestamptz in UTC, floats exact, bytea in hex, regclass qualified).
CONTENT_SETTINGS_SQL = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
                        "SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C'; "
                        "SET search_path = pg_catalog")

# Row hash methods, recorded per database in the fingerprint so a verify computes the same one.
# hashtextextended (PostgreSQL 11+) hashes the bytes of the text in the database encoding: for
# UTF8 databases. Any other encoding (a restore converts it to the target's UTF8) or an older
# server: the first 64 bits of md5 over the UTF-8 form (about 3x slower, same on both sides).
HASH_TEXT = "pg-hashtext-sum-v1"
HASH_MD5_UTF8 = "pg-md5utf8-sum-v1"
# PostgreSQL 14+ (UTF8): hash_record_extended over the row itself where every column's type is
# in RECORD_HASH_TYPES, no text form built: 1.5x (integers) to 4.6x (text) less server CPU than
# HASH_TEXT (bench/README.md); other tables of the same database fall back to HASH_TEXT's form.
HASH_RECORD = "pg-hashrecord-sum-v1"

USER_RELATIONS_SQL = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""


# ------------------------------------------------------------------ argv

def pg_dump_argv(bin_dir: str | None, conn: list[str], database: str, snapshot: str) -> list[str]:
    # -Z0: restic deduplicates unchanged table data between nights only if it is
    # not compressed first; restic (repository v2) compresses it itself.
    return [pg_tool(bin_dir, "pg_dump"), "-Fc", "-Z0", f"--snapshot={snapshot}", *conn,
            f"--dbname={conninfo_dbname(database)}"]


def pg_dumpall_globals_argv(bin_dir: str | None, conn: list[str]) -> list[str]:
    # Role password hashes are kept: a recovered server needs them (the snapshot is encrypted).
    return [pg_tool(bin_dir, "pg_dumpall"), "--globals-only", *conn]


def pg_restore_argv(
    bin_dir: str | None,
    conn: list[str],
    database: str,
    *,
    file: str | None = None,
    jobs: int | None = None,
    sections: tuple[str, ...] = (),
    keep_owners: bool = True,
    single_transaction: bool = False,
) -> list[str]:
    """pg_restore into `database`; reads stdin when `file` is None.

    --no-tablespaces: tablespace paths of the old server rarely exist on a new one.
    Without the globals (roles) owners and grants cannot be restored, so they are left out.
    `single_transaction`: tables created and loaded in one transaction are not WAL-logged on a
    server with wal_level=minimal (drtool's scratch and recovery instances while they load).
    """
    argv = [pg_tool(bin_dir, "pg_restore"), *conn, "--exit-on-error", "--no-tablespaces"]
    if not keep_owners:
        argv += ["--no-owner", "--no-privileges"]
    if single_transaction:
        argv.append("--single-transaction")
    if jobs:
        argv += ["-j", str(jobs)]
    argv += [f"--section={s}" for s in sections]
    argv.append(f"--dbname={conninfo_dbname(database)}")
    if file is not None:
        argv.append(file)
    return argv


# ------------------------------------------------------------------ SQL

def count_sql(tables: list[tuple[str, str]]) -> str:
    """One statement counting rows of (key, quoted name) tables, answering one JSON object."""
    parts = [f"SELECT {quote_literal(key)} AS k, count(*) AS n FROM {qualified}" for key, qualified in tables]
    return "SELECT coalesce(json_object_agg(k, n), '{}') FROM (" + " UNION ALL ".join(parts) + ") s"


@dataclass(frozen=True)
class ContentTable:
    """One row of CONTENT_TABLES_SQL."""

    key: str                 # schema.table as in the fingerprint
    qualified: str           # quoted for SQL
    partitioned: bool = False
    has_children: bool = False
    is_child: bool = False
    record_hashable: bool = False    # every column's type in RECORD_HASH_TYPES (asked for HASH_RECORD only)


def hash_method(server_version_num: int, encoding: str) -> str:
    if encoding.upper() != "UTF8" or server_version_num < 110000:
        return HASH_MD5_UTF8
    return HASH_RECORD if server_version_num >= 140000 else HASH_TEXT


def row_hash_sql(method: str, table: ContentTable) -> str:
    """A signed 64-bit hash of one row `r` of `table`; summed, the order of rows does not matter."""
    text = "to_jsonb(r)::text" if table.is_child else "ROW(r.*)::text"
    # A child's columns may come back in another order: positional hashing is for the others.
    if method == HASH_RECORD and table.record_hashable and not table.is_child:
        return "hash_record_extended(r, 0)"
    if method in (HASH_TEXT, HASH_RECORD):
        return f"hashtextextended({text}, 0)"
    if method == HASH_MD5_UTF8:
        return f"('x' || left(md5(convert_to({text}, 'UTF8')), 16))::bit(64)::bigint"
    raise SourceError(f"unknown PostgreSQL content hash method {method!r} in the fingerprint",
                      hint="the backup was taken by a newer drtool; upgrade drtool to verify it")


def content_sql(tables: list[ContentTable], method: str) -> str:
    """Row count and content hash of each table in one scan, answering {key: [rows, "hash"|null]}.

    The hash is the exact (numeric) sum of the row hashes, so it is independent of the rows'
    physical order. Partitioned tables get no hash of their own: their partitions carry it.
    """
    parts = []
    for t in tables:
        k = quote_literal(t.key)
        h = row_hash_sql(method, t)
        if t.partitioned:
            parts.append(f"SELECT {k} AS k, count(*) AS n, NULL::text AS h FROM {t.qualified}")
        elif t.has_children:   # counts include the children's rows, as count_sql's do
            parts.append(f"SELECT {k} AS k, (SELECT count(*) FROM {t.qualified}) AS n, "
                         f"(SELECT coalesce(sum({h}), 0)::text FROM ONLY {t.qualified} AS r) AS h")
        else:
            parts.append(f"SELECT {k} AS k, count(*) AS n, coalesce(sum({h}), 0)::text AS h "
                         f"FROM {t.qualified} AS r")
    return "SELECT coalesce(json_object_agg(k, json_build_array(n, h)), '{}') FROM (" + " UNION ALL ".join(parts) + ") s"


# ------------------------------------------------------------------ parsing and planning

def stream_databases(names: list[str], wanted: str | None) -> dict[str, str]:
    """Map each `<db>.pgdump` stream to the database it is restored into."""
    streams = sorted(n for n in names if n.endswith(DUMP_SUFFIX))
    if not streams:
        raise SourceError("the snapshot set holds no PostgreSQL dump (*.pgdump) stream",
                          hint="check that the snapshot belongs to a postgres source")
    if wanted is None:
        return {s: s[: -len(DUMP_SUFFIX)] for s in streams}
    if len(streams) == 1:
        return {streams[0]: wanted}
    chosen = wanted + DUMP_SUFFIX
    if chosen in streams:
        return {chosen: wanted}
    have = ", ".join(s[: -len(DUMP_SUFFIX)] for s in streams)
    raise SourceError(f"the snapshot set holds several databases ({have}); none is named {wanted}",
                      hint="name one of them as the target database, or restore all without a name")


def filter_globals(sql: str, user: str | None) -> str:
    """Drop the statements that would recreate or alter the role we connect as.

    Applying the backed-up `ALTER ROLE postgres ... PASSWORD` would change the
    target's own login password under our feet.
    """
    if not user:
        return sql
    names = {user, quote_ident(user)}
    keep = []
    for line in sql.splitlines(keepends=True):
        match = re.match(r"(CREATE|ALTER) ROLE (\"(?:[^\"]|\"\")+\"|\S+?)[ ;]", line)
        if match and match.group(2) in names:
            continue
        keep.append(line)
    return "".join(keep)


def parse_records(out: bytes) -> list[list[str]]:
    """Rows of `psql -A -t -F US -R RS` output (values may hold newlines)."""
    text = out.decode("utf-8", "replace")
    text = text.removesuffix("\n")
    if not text:
        return []
    return [record.split(FIELD_SEP) for record in text.split(RECORD_SEP)]


# ------------------------------------------------------------------ connections

@dataclass(frozen=True)
class Endpoint:
    """How to reach one server: conn argv, libpq env (with PGPASSWORD) and a name for messages."""

    host: str | None
    port: int | None
    user: str | None
    password: str | None
    bin_dir: str | None

    @property
    def conn(self) -> list[str]:
        return conn_args(self.host, self.port, self.user)

    @property
    def env(self) -> dict[str, str]:
        return libpq_env(self.password)

    def where(self, database: str | None = None) -> str:
        return f"postgres {self.user or ''}@{self.host}:{self.port}/{database or ''}"


def target_endpoint(target: DbTarget) -> Endpoint:
    return Endpoint(host=target.socket or target.host, port=target.port, user=target.user,
                    password=target.password.reveal() if target.password else None, bin_dir=target.bin_dir)
