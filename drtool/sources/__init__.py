"""Data sources: how to dump, restore and fingerprint each kind of data.

`database_source(source, runner)` is the explicit registry: kind -> class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `python -m drtool.sources.sqlite_dump` (run remotely) light
    from drtool.config.models import Source
    from drtool.execute import Runner
    from drtool.sources.base import DatabaseSource


def database_source(source: "Source", runner: "Runner") -> "DatabaseSource":
    kind = source.kind
    if kind == "postgres" and source.spec.pitr is not None:   # type: ignore[union-attr]
        from drtool.sources.pg_physical import PitrDatabase   # logical dumps + a physical base backup
        return PitrDatabase(source.spec, runner)  # type: ignore[arg-type]
    if kind == "postgres":
        from drtool.sources.postgres import PostgresDatabase
        return PostgresDatabase(source.spec, runner)  # type: ignore[arg-type]
    if kind == "mariadb":
        from drtool.sources.mariadb import MariadbDatabase
        return MariadbDatabase(source.spec, runner)  # type: ignore[arg-type]
    if kind == "sqlite":
        from drtool.sources.sqlite import SqliteDatabase
        return SqliteDatabase(source.spec, runner)  # type: ignore[arg-type]
    raise ValueError(f"{kind} is not a database source")
