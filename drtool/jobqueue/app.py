"""The queue: a procrastinate App on the pool's PostgreSQL, its schema, and connection settings.

procrastinate (a well-kept PostgreSQL task library) does the scheduling across processes and
machines: a job is fetched by exactly one worker (`SELECT ... FOR UPDATE SKIP LOCKED`), a job's
`lock` keeps two jobs of the same drill from running at once, its `queueing_lock` keeps the
same drill from being queued twice, and workers send heartbeats, so the jobs of a worker that
died are found (`get_stalled_jobs`) and retried (`retry_job`). drtool adds no protocol of its own.
"""

from __future__ import annotations

from typing import Any

from drtool.config.fleet import PoolDatabase
from drtool.errors import DrtoolError, UsageError

SCHEMA_LOCK = 7_271_300_017          # pg_advisory_lock key: one process applies the schema


class PoolDatabaseError(DrtoolError):
    """The drill pool's PostgreSQL cannot be reached or used."""


def conninfo(db: PoolDatabase) -> str:
    """A libpq conninfo string for psycopg (in memory only: it may hold the password)."""
    from psycopg.conninfo import make_conninfo

    if db.url is not None:
        return db.url.resolve().reveal()
    params: dict[str, Any] = {"host": db.host, "port": db.port, "dbname": db.dbname, "user": db.user,
                              "connect_timeout": max(1, int(db.connect_timeout)), "application_name": "drtool-pool"}
    if db.password is not None:
        params["password"] = db.password.resolve().reveal()
    if db.sslmode:
        params["sslmode"] = db.sslmode
    return make_conninfo(**params)


def where(db: PoolDatabase) -> str:
    """For messages: the server and database, never the password."""
    return "the configured pool database URL" if db.url is not None else f"{db.user}@{db.host}:{db.port}/{db.dbname}"


def connect(db: PoolDatabase) -> Any:
    """A psycopg connection (autocommit), or a PoolDatabaseError that says where and what to check."""
    import psycopg

    try:
        return psycopg.connect(conninfo(db), autocommit=True)
    except psycopg.Error as exc:
        raise PoolDatabaseError(f"cannot connect to the drill pool's PostgreSQL ({where(db)}): "
                                f"{str(exc).strip().splitlines()[0][:300]}",
                                hint="check pool.database in the fleet file, that the server runs and accepts "
                                     "this user, and its password reference") from None


def make_app(db: PoolDatabase) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=conninfo(db), min_size=1, max_size=4))


def ensure_schema(db: PoolDatabase, extra_sql: str) -> None:
    """procrastinate's tables (once, under an advisory lock) and drtool's own (`extra_sql`, idempotent)."""
    from procrastinate.schema import SchemaManager

    with connect(db) as conn:
        try:
            conn.execute("select pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            present = conn.execute("select to_regclass('procrastinate_jobs')").fetchone()[0]
            if present is None:
                conn.execute(SchemaManager.get_schema())
            conn.execute(extra_sql)
        except Exception as exc:  # psycopg.Error, imported lazily
            if isinstance(exc, DrtoolError):
                raise
            raise PoolDatabaseError(f"cannot prepare the drill pool's tables in {where(db)}: "
                                    f"{str(exc).strip().splitlines()[0][:300]}",
                                    hint="the pool's database user needs CREATE on the database") from None
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def require_pool(fleet: Any) -> Any:
    if fleet.pool is None:
        raise UsageError(f"the fleet file {fleet.path} has no `pool:` section: the drill pool is not configured",
                         hint="add pool: {database: {host, port, dbname, user, password: {file: ...}}}; without it "
                              "each office runs its own drills (drtool daemon, SQLite)")
    return fleet.pool
