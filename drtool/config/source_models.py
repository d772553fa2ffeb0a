"""Policy sources: what to back up and how (databases, files, point-in-time recovery), and
the retention a source may override. Re-exported by drtool.config.models."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from drtool.config.base import Duration, Model, Name, Size
from drtool.config.secrets import SecretRef


class Retention(Model):
    last: int | None = Field(None, ge=0)
    hourly: int | None = Field(None, ge=0)
    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)
    yearly: int | None = Field(None, ge=0)
    within: Duration | None = None


class PitrSettings(Model):
    """Point-in-time recovery for a PostgreSQL source (drtool/actions/wal_ship.py, actions/pitr.py).

    Each backup of the source adds a physical base backup (`pg_basebackup -Ft -X fetch`, streamed)
    to its logical dumps; `drtool daemon` (or `drtool wal-ship POLICY`) streams WAL with
    pg_receivewal into a bounded local spool and ships it to the repository in batches."""

    wal_ship: Duration = 60.0              # WAL reaches the repository at most this long after it is written
    spool_dir: str | None = None           # default: <state_dir>/wal/<policy>/<source>
    spool_max: Size = 4 << 30              # a full spool pauses receiving (the slot keeps WAL on the server) and alerts
    slot: str | bool = True                # replication slot: true = drtool_<policy>_<source>, a name, or false
    canary: Duration | None = None         # opt-in: update drtool_canary every this often (achieved-RPO probe)
    canary_database: str = "postgres"      # where the drtool_canary table lives

    @field_validator("wal_ship")
    @classmethod
    def _ship_bounds(cls, value: float) -> float:
        if not 1.0 <= value <= 3600.0:
            raise ValueError("wal_ship must be between 1s and 1h")
        return value

    @field_validator("spool_max")
    @classmethod
    def _spool_bounds(cls, value: int) -> int:
        if value < 64 << 20:
            raise ValueError("spool_max must be at least 64M (a few WAL segments of 16 MB)")
        return value

    @field_validator("canary")
    @classmethod
    def _canary_bounds(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise ValueError("canary must be at least 1s")
        return value

    @field_validator("slot")
    @classmethod
    def _slot_name(cls, value: str | bool) -> str | bool:
        if isinstance(value, str) and not re.fullmatch(r"[a-z0-9_]{1,63}", value):
            raise ValueError("a replication slot name is 1-63 characters of a-z, 0-9 and _")
        return value


class DatabaseSpec(Model):
    """What PostgreSQL and MariaDB sources share: one database or several, content hashes."""
    database: str | None = None
    databases: list[str] | None = None
    content_hash: bool = True              # hash every table's rows into the fingerprint (bench/README.md)

    @model_validator(mode="after")
    def _one_db_field(self) -> "DatabaseSpec":
        if (self.database is None) == (self.databases is None):
            raise ValueError("give exactly one of database: NAME or databases: [NAMES]")
        return self

    @property
    def database_names(self) -> list[str]:
        return [self.database] if self.database else list(self.databases or [])


class PostgresSource(DatabaseSpec):
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    password: SecretRef | None = None
    globals: bool = True                   # pg_dumpall --globals-only as its own stream
    bin_dir: str | None = None             # where pg_dump lives, if not on PATH
    pitr: PitrSettings | None = None       # physical base backups + continuous WAL (point-in-time recovery)


class MariadbSource(DatabaseSpec):
    host: str | None = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    socket: str | None = None
    user: str = "root"
    password: SecretRef | None = None


class SqliteSource(Model):
    path: str
    content_hash: bool = True              # hash every table's rows into the fingerprint


class FilesSource(Model):
    paths: Annotated[list[str], Field(min_length=1)]
    exclude: list[str] = []
    one_file_system: bool = False

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p.startswith("/"):
                raise ValueError(f"paths must be absolute, got {p!r}")
        return paths


SOURCE_KINDS = ("postgres", "mariadb", "sqlite", "files")


class Source(Model):
    name: Name
    postgres: PostgresSource | None = None
    mariadb: MariadbSource | None = None
    sqlite: SqliteSource | None = None
    files: FilesSource | None = None
    retention: Retention | None = None     # overrides the policy's retention for this source
    # A dump (or restic reading files) that moves no byte for stall_timeout is stuck: the source
    # fails and nothing is committed. timeout bounds the whole source.
    stall_timeout: Duration = 600.0
    timeout: Duration = 86400.0

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "Source":
        kinds = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a source needs exactly one of {', '.join(SOURCE_KINDS)}"
                             + (f"; got {', '.join(kinds)}" if kinds else ""))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def spec(self) -> PostgresSource | MariadbSource | SqliteSource | FilesSource:
        return getattr(self, self.kind)
