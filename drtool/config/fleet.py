"""The fleet file: the sites a central office watches, and its drill pool.

    sites[]   each office's repository (its bucket/prefix, where its signed records are),
              read-only credentials by reference, the public key its records are signed with,
              and optionally the fire drills the central drill pool runs for it
    pool      the drill pool's PostgreSQL queue (only when configured; the embedded default
              stays one controller with SQLite)

Loaded like every drtool file: all problems at once with file:line:col, unknown keys refused.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from drtool.config.base import defaults
from drtool.config.models import (Duration, ForecastSettings, Model, Name, Notifications, Playbook, Targets,
                                  beside)
from drtool.config.secrets import SecretRef
from drtool.errors import ConfigError

DEFAULT_PATHS = ("fleet.yaml", "/etc/drtool/fleet.yaml")


def _public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected a base64 Ed25519 public key (the `signing_public_key` of the site's "
                         "recovery kit, 44 characters)") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes; this one is {len(raw)}")
    return value


PublicKey = Annotated[str, Field(description="base64 Ed25519 public key (44 characters)")]


class ReadOnlyS3(Model):
    """Credentials that may only list and read the site's bucket (its records)."""
    access_key_id: SecretRef
    secret_access_key: SecretRef
    region: str = "us-east-1"


class Site(Model):
    name: Name
    repository: str                        # the site's restic repository URL: s3:http(s)://HOST/BUCKET/PREFIX
    s3: ReadOnlyS3 | None = None           # default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    signing_key: PublicKey                 # the site's record-signing key (from its recovery kit)
    policies: list[Name] = []              # expected policies: one without any record is a breach
    targets: dict[Name, Targets] = {}      # per policy: overrides the targets the site's records carry
    drills: list[Playbook] = []            # fire drills (from_nothing) the drill pool runs for this site

    @field_validator("repository")
    @classmethod
    def _s3_only(cls, url: str) -> str:
        if not url.startswith("s3:"):
            raise ValueError("the fleet reads records from the site's bucket: expected s3:http(s)://HOST/BUCKET/PREFIX")
        from drtool.errors import StorageError
        from drtool.storage.s3_url import parse_s3_url
        try:
            parse_s3_url(url)
        except StorageError as exc:
            raise ValueError(exc.message) from None
        return url

    @field_validator("signing_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _public_key(value)

    @field_validator("drills")
    @classmethod
    def _fire_drills(cls, drills: list[Playbook]) -> list[Playbook]:
        names = set()
        for drill in drills:
            if drill.from_nothing is None:
                raise ValueError(f"drill {drill.name!r}: the drill pool runs fire drills only "
                                 "(from_nothing: {kit, passphrase|identity})")
            if drill.name in names:
                raise ValueError(f"drill name {drill.name!r} is used twice in this site")
            names.add(drill.name)
        return drills


class RecordWindow(Model):
    """How many of a site's newest records of each kind are read (the rest is never fetched)."""
    backups: int = Field(30, ge=1, le=2000)
    checks: int = Field(5, ge=1, le=500)
    forgets: int = Field(5, ge=1, le=500)
    drills: int = Field(12, ge=1, le=500)


class PoolDatabase(Model):
    """The PostgreSQL the drill pool's queue and central catalog live in."""
    url: SecretRef | None = None           # a libpq URL / conninfo (it may hold a password): by reference
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    dbname: str = "drtool"
    user: str = "drtool"
    password: SecretRef | None = None
    sslmode: str | None = None
    connect_timeout: Duration = 10.0


class PoolSettings(Model):
    database: PoolDatabase = defaults(PoolDatabase)
    queue: Name = "drills"
    scratch_dir: str | None = None         # where sandboxes live; default <state_dir>/pool-scratch
    heartbeat: Duration = 10.0             # how often a worker says it is alive
    stalled_after: Duration = 60.0         # a worker silent this long is dead: its drill is retried
    retries: int = Field(1, ge=0, le=5)    # a drill whose worker died is run again this many times


class Fleet(Model):
    state_dir: str = "/var/lib/drtool-fleet"   # the record cache, the pool's signing key and scratch
    timezone: str | None = None            # of drill schedules; default TZ, then the system zone
    trusted_keys: list[PublicKey] = []     # signers trusted for every site (the drill pool's key)
    concurrency: int = Field(16, ge=1, le=256)   # sites read at once
    records: RecordWindow = defaults(RecordWindow)
    forecast: ForecastSettings = defaults(ForecastSettings)
    notifications: Notifications = defaults(Notifications)   # alerts of the pool's drills
    sites: Annotated[list[Site], Field(min_length=1)]
    pool: PoolSettings | None = None
    path: str | None = Field(None, exclude=True)

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        return [_public_key(k) for k in keys]

    @model_validator(mode="after")
    def _unique_sites(self) -> "Fleet":
        seen: set[str] = set()
        for site in self.sites:
            if site.name in seen:
                raise ValueError(f"site name {site.name!r} is used twice")
            seen.add(site.name)
        return self

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        known = ", ".join(s.name for s in self.sites[:20])
        raise ConfigError(f"no site named {name!r} in {self.path} (known: {known})")

    @property
    def state_path(self) -> Path:
        path = Path(self.state_dir)
        return path if path.is_absolute() or not self.path else Path(self.path).parent / path

    @property
    def scratch_path(self) -> Path:
        configured = self.pool.scratch_dir if self.pool else None
        if not configured:
            return self.state_path / "pool-scratch"
        return beside(Path(self.path or "fleet.yaml"), configured, "pool-scratch")


def find_fleet(option: str | None) -> Path:
    """--fleet FILE, then $DRTOOL_FLEET, then ./fleet.yaml, then /etc/drtool/fleet.yaml."""
    for candidate in (option, os.environ.get("DRTOOL_FLEET")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"fleet file {path} does not exist",
                                  hint="give --fleet FILE (a fleet.yaml listing the sites)")
            return path
    for candidate in DEFAULT_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError("no fleet file found (looked at --fleet, $DRTOOL_FLEET, ./fleet.yaml, /etc/drtool/fleet.yaml)",
                      hint="write a fleet.yaml listing the sites (README: Fleet) and pass --fleet FILE")


def load_fleet(option: str | None = None) -> Fleet:
    from drtool.config.loader import read_document, validate

    path = find_fleet(option)
    fleet = validate(Fleet, read_document(path), what="fleet")
    if any(s.drills for s in fleet.sites):
        # Relative kit paths are beside the fleet file, like a playbook's beside the playbook.
        sites = [s.model_copy(update={"drills": [d.model_copy(update={"path": str(path)}) for d in s.drills]})
                 for s in fleet.sites]
        fleet = fleet.model_copy(update={"sites": sites})
    if fleet.timezone is not None:
        from drtool.timezones import iana_zone
        try:
            iana_zone(fleet.timezone)
        except ValueError as exc:
            raise ConfigError(f"{path}: at 'timezone': {exc}") from None
    return fleet
