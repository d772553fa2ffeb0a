"""MariaDB: pure builders -- connection options, argv lists, SQL text, parsing. No processes here.

Unit-tested with exact lists (tests/unit/test_mariadb_argv.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drtool.config.models import MariadbSource
from drtool.errors import SourceError
from drtool.secrets import Secret
from drtool.sources.base import DbTarget, Fingerprint

QUERY_TIMEOUT = 300.0
TRANSACTIONAL_ENGINES = frozenset({"InnoDB"})
TABLE_TYPES = ("BASE TABLE", "SYSTEM VERSIONED")

DUMP_OPTIONS = ("--single-transaction", "--quick", "--routines", "--triggers", "--events",
                "--hex-blob", "--default-character-set=utf8mb4", "--max-allowed-packet=1G")


@dataclass(frozen=True)
class Conn:
    """How to reach one server: argv options plus environment (the password)."""

    host: str | None
    port: int | None
    socket: str | None
    user: str
    password: Secret | None
    use_socket: bool

    def args(self) -> list[str]:
        where = ([f"--socket={self.socket}", "--protocol=SOCKET"] if self.use_socket
                 else [f"--host={self.host or '127.0.0.1'}", f"--port={self.port or 3306}", "--protocol=TCP"])
        return [*where, f"--user={self.user}"]

    def env(self) -> dict[str, str]:
        return {"MYSQL_PWD": self.password.reveal()} if self.password else {}

    def describe(self) -> str:
        where = self.socket if self.use_socket else f"{self.host}:{self.port}"
        return f"{self.user}@{where}"


def conn_from_spec(spec: MariadbSource) -> Conn:
    # A configured socket is an explicit choice; otherwise TCP.
    password = spec.password.resolve() if spec.password else None
    return Conn(spec.host, spec.port, spec.socket, spec.user, password, use_socket=bool(spec.socket))


def conn_from_target(target: DbTarget) -> Conn:
    # Targets (scratch instances) carry both; TCP with the password is the path
    # that works for any OS user, the socket only when no port is known.
    use_socket = target.port is None and bool(target.socket)
    return Conn(target.host, target.port, target.socket, target.user or "root", target.password, use_socket)


def dump_argv(program: str, conn: Conn, database: str) -> list[str]:
    # No --databases: the output then has no CREATE DATABASE/USE and restores under any name.
    return [program, "--no-defaults", *conn.args(), *DUMP_OPTIONS, "--", database]


def client_argv(program: str, conn: Conn, database: str | None = None, *, force: bool = False) -> list[str]:
    # --unbuffered: a kept-open session must see each answer as soon as it exists.
    argv = [program, "--no-defaults", *conn.args(), "--batch", "--skip-column-names", "--unbuffered",
            "--default-character-set=utf8mb4", "--max-allowed-packet=1G"]
    if force:
        argv.append("--force")
    if database:
        argv.append(f"--database={database}")
    return argv


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0") + "'"


_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "0": "\0", "r": "\r"}


def unescape_field(field: str) -> str:
    """Undo the escaping the client applies to tab-separated --batch output."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            out.append(_UNESCAPE.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_batch(text: str) -> list[list[str]]:
    return [[unescape_field(f) for f in line.split("\t")] for line in text.splitlines() if line != ""]


def tables_sql(databases: Sequence[str]) -> str:
    schemas = ", ".join(quote_str(db) for db in databases)
    types = ", ".join(quote_str(t) for t in TABLE_TYPES)
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, IFNULL(ENGINE, '') FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA IN ({schemas}) AND TABLE_TYPE IN ({types}) ORDER BY 1, 2;")


def counts_sql(tables: Sequence[tuple[str, str]]) -> str:
    # One statement per table, tagged by position: names never need parsing back.
    return "".join(f"SELECT {i}, COUNT(*) FROM {quote_ident(db)}.{quote_ident(t)};\n"
                   for i, (db, t) in enumerate(tables))


def build_fingerprint(databases: Sequence[str], tables: Sequence[tuple[str, str]],
                      count_rows: Sequence[Sequence[str]]) -> Fingerprint:
    dbs: dict[str, dict[str, int]] = {db: {} for db in databases}
    for row in count_rows:
        db, table = tables[int(row[0])]
        dbs[db][table] = int(row[1])
    return {"kind": "mariadb", "databases": dbs}


# Content hash of a table: the exact sum (DECIMAL) of the first 64 bits of an md5 per row,
# over the md5 of each column's value taken in column-name order ('N' for NULL). Per-column
# md5s keep every string short (a row-long CONCAT over max_allowed_packet would be NULL) and
# make the form independent of column positions. Order of rows does not matter.
HASH_METHOD = "mariadb-md5-sum-v1"
# TIMESTAMP values are written as text in the session's time zone: pin it on both sides.
CONTENT_SETTINGS_SQL = "SET time_zone = '+00:00';\n"


def columns_sql(databases: Sequence[str]) -> str:
    schemas = ", ".join(quote_str(db) for db in databases)
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            f"WHERE TABLE_SCHEMA IN ({schemas}) ORDER BY 1, 2, 3;")


def group_columns(rows: Sequence[Sequence[str]]) -> dict[tuple[str, str], list[str]]:
    """(database, table) -> its column names, sorted (the hash form's column order)."""
    out: dict[tuple[str, str], list[str]] = {}
    for db, table, column in rows:
        out.setdefault((db, table), []).append(column)
    return {key: sorted(cols) for key, cols in out.items()}


def row_hash_sql(columns: Sequence[str]) -> str:
    parts = ", ".join(f"IFNULL(MD5({quote_ident(c)}), 'N')" for c in sorted(columns))
    return f"CAST(CONV(LEFT(MD5(CONCAT_WS(',', {parts})), 16), 16, 10) AS UNSIGNED)"


def hashes_sql(tables: Sequence[tuple[str, str]], columns: dict[tuple[str, str], list[str]]) -> str:
    """One statement per table, tagged by position like counts_sql: `i, content hash`."""
    return "".join(f"SELECT {i}, IFNULL(SUM({row_hash_sql(columns[(db, t)])}), 0) "
                   f"FROM {quote_ident(db)}.{quote_ident(t)};\n"
                   for i, (db, t) in enumerate(tables) if columns.get((db, t)))


def build_content(databases: Sequence[str], tables: Sequence[tuple[str, str]],
                  hash_rows: Sequence[Sequence[str]]) -> dict[str, dict[str, object]]:
    content: dict[str, dict[str, object]] = {db: {"method": HASH_METHOD, "tables": {}} for db in databases}
    for row in hash_rows:
        db, table = tables[int(row[0])]
        content[db]["tables"][table] = row[1]  # type: ignore[index]
    return content


def missing_databases(databases: Sequence[str], existing: Sequence[str]) -> list[str]:
    return [db for db in databases if db not in set(existing)]


def restore_plan(names: Sequence[str], rename_to: str | None) -> list[tuple[str, str]]:
    """(stream, target database) pairs; `rename_to` picks/renames one database."""
    streams = [n for n in names if n.endswith(".sql")]
    if not streams:
        raise SourceError(f"the snapshot holds no MariaDB dump streams (found: {', '.join(names) or 'nothing'})",
                          hint="pick a snapshot of a mariadb source")
    if rename_to is None:
        return [(s, s[: -len(".sql")]) for s in streams]
    if len(streams) == 1:
        return [(streams[0], rename_to)]
    wanted = f"{rename_to}.sql"
    if wanted in streams:
        return [(wanted, rename_to)]
    raise SourceError(f"the snapshot holds several databases ({', '.join(streams)}); "
                      f"cannot tell which one to restore as {rename_to}",
                      hint="name one of those databases as the target database")


def objects_sql(databases: Sequence[str]) -> str:
    """Per database: how many tables, views and routines it holds (0 = empty or missing)."""
    parts = []
    for db in databases:
        s = quote_str(db)
        parts.append(f"SELECT {s}, (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {s})"
                     f" + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {s});")
    return "\n".join(parts)


def access_hint(stderr: str) -> str | None:
    text = stderr.lower()
    if "access denied" in text:
        return "check the user and password configured for this server"
    if "can't connect" in text or "connection refused" in text or "lost connection" in text:
        return "is the server running and reachable on that host/port/socket?"
    return None

