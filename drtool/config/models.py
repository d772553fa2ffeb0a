"""Typed models for drtool.yaml, policies/*.yaml and playbooks/*.yaml.

Unknown keys are rejected everywhere (`extra="forbid"`): a typo must not
silently turn off a backup.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator,
                      model_validator)

from drtool.config.durations import parse_duration
from drtool.config.secrets import SecretRef


def _duration(value: object, info: ValidationInfo) -> float:
    # Files are validated with context {"file": True}: there a bare number is refused (no unit);
    # Python callers may still pass seconds.
    return parse_duration(value, bare_numbers=not (info.context or {}).get("file"))


DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*[smhdwSMHDW]\s*)+$"
Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(
    {"type": "string", "pattern": DURATION_PATTERN, "description": "a duration with a unit: 90s, 30m, 24h, 7d, 1h30m"})]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "ASCII letters, digits, `_ . -`, up to 64 characters, starting with a letter or digit"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description=f"a name: {NAME_RULE}")]
Argv = Annotated[list[str], Field(min_length=1)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- drtool.yaml

class S3Settings(Model):
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    region: str = "us-east-1"
    # Create the bucket on `init-repo` / first backup when it does not exist.
    create_bucket: bool = True


class Repository(Model):
    url: str
    password: SecretRef
    s3: S3Settings | None = None
    # How long a throttling (503 SlowDown) or unreachable storage is waited out, with
    # exponential backoff, before a run gives up on it.
    wait_unavailable: Duration = 300.0

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if url.startswith(("s3:", "/", "local:", "sftp:", "rest:")):
            return url
        raise ValueError("expected a restic repository URL such as s3:http://127.0.0.1:9000/bucket/prefix or /srv/restic-repo")

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3:")


class Host(Model):
    address: str
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key: SecretRef | None = None          # private key text, by reference
    key_file: str | None = None            # or a key file path
    use_agent: bool = False
    known_hosts: str | None = None         # default: <state_dir>/known_hosts
    connect_timeout: Duration = 15.0
    jump: str | None = None                # name of another host
    # Files from this host: run restic there (fast, deduplicated, but the host holds the
    # repository credentials while it runs) or stream a tar archive (needs only tar; no secrets).
    files_mode: Literal["auto", "restic", "tar"] = "auto"


# A URL that carries a token (a webhook path, a healthchecks uuid, an ntfy topic) may be
# given by reference like any other secret: {env: NAME}, {file: PATH}, {command: [...]}.
UrlOrRef = str | SecretRef
RunKind = Literal["backup", "forget", "check", "drill", "kit-verify", "recover"]


class Webhook(Model):
    url: UrlOrRef
    events: list[str] | None = None
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, UrlOrRef] = {}      # e.g. Authorization: {env: HOOK_TOKEN}
    body: str | None = None                # Jinja2 template (sandboxed); default: the event as JSON
    content_type: str = "application/json"


class Email(Model):
    host: str
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: SecretRef | None = None
    sender: str = Field(alias="from")
    to: list[str]
    events: list[str] | None = None


class Healthcheck(Model):
    url: UrlOrRef                          # base ping URL; /start and /fail are appended
    policy: str | None = None
    kinds: list[RunKind] = ["backup"]      # which runs ping this check


class AppriseTarget(Model):
    """Any service Apprise speaks: ntfy://, slack://, tgram://, matrix://, gotify://, mailto://..."""
    url: UrlOrRef
    events: list[str] | None = None
    title: str | None = None               # Jinja2 templates; defaults: the event's subject and text
    body: str | None = None


class Notifications(Model):
    webhooks: list[Webhook] = []
    email: list[Email] = []
    healthchecks: list[Healthcheck] = []
    apprise: list[AppriseTarget] = []
    on_success: bool = False
    timeout: Duration = 10.0               # per delivery attempt
    attempts: int = Field(3, ge=1, le=10)  # per channel, with exponential backoff


class Metrics(Model):
    textfile: str | None = None            # node_exporter textfile collector path
    port: int | None = Field(None, ge=1, le=65535)
    pushgateway: str | None = None         # e.g. http://127.0.0.1:9091, for hosts without node_exporter


class ForecastSettings(Model):
    # `status` and alerts flag a policy whose forecast RTO exceeds its target within this horizon.
    horizon: Duration = 90 * 86400.0


class Config(Model):
    state_dir: str = "/var/lib/drtool"
    hostname: str | None = None            # restic --host; default: this machine's name
    policies_dir: str | None = None        # default: policies/ beside drtool.yaml
    playbooks_dir: str | None = None       # default: playbooks/ beside drtool.yaml
    timezone: str | None = None            # IANA name; default TZ, then the system zone (drtool.timezones)
    max_concurrent_jobs: int = Field(1, ge=1, le=64)
    repositories: dict[Name, Repository]
    hosts: dict[Name, Host] = {}
    notifications: Notifications = Notifications()
    metrics: Metrics = Metrics()
    forecast: ForecastSettings = ForecastSettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            from drtool.timezones import iana_zone
            iana_zone(name)        # ZoneError (a ValueError) names the closest zones
        return name


# ---------------------------------------------------------------- policies

class Targets(Model):
    rpo: Duration | None = None
    rto: Duration | None = None


class Retention(Model):
    last: int | None = Field(None, ge=0)
    hourly: int | None = Field(None, ge=0)
    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)
    yearly: int | None = Field(None, ge=0)
    within: Duration | None = None


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(value: object) -> int:
    """Bytes from '512M', '4G', '2GiB' (binary units); a bare integer is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 512M or 4G, got {value!r}")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower())
    if not match:
        raise ValueError(f"expected a size like 512M or 4G, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[KMGTkmgt]?(i?[Bb])?\s*$",
     "description": "a size: 512M, 4G, 2GiB (binary units)"})]


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


class PostgresSource(Model):
    database: str | None = None
    databases: list[str] | None = None
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    password: SecretRef | None = None
    globals: bool = True                   # pg_dumpall --globals-only as its own stream
    bin_dir: str | None = None             # where pg_dump lives, if not on PATH
    pitr: PitrSettings | None = None       # physical base backups + continuous WAL (point-in-time recovery)

    @model_validator(mode="after")
    def _one_db_field(self) -> "PostgresSource":
        if (self.database is None) == (self.databases is None):
            raise ValueError("give exactly one of database: NAME or databases: [NAMES]")
        return self

    @property
    def database_names(self) -> list[str]:
        return [self.database] if self.database else list(self.databases or [])


class MariadbSource(Model):
    database: str | None = None
    databases: list[str] | None = None
    host: str | None = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    socket: str | None = None
    user: str = "root"
    password: SecretRef | None = None

    @model_validator(mode="after")
    def _one_db_field(self) -> "MariadbSource":
        if (self.database is None) == (self.databases is None):
            raise ValueError("give exactly one of database: NAME or databases: [NAMES]")
        return self

    @property
    def database_names(self) -> list[str]:
        return [self.database] if self.database else list(self.databases or [])


class SqliteSource(Model):
    path: str


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


class Hooks(Model):
    before: list[Argv] = []
    after: list[Argv] = []
    on_failure: list[Argv] = []
    timeout: Duration = 300.0


class CheckSchedule(Model):
    schedule: str | None = None
    read_data_subset: str | None = None    # e.g. 5% or 1/10; the daemon rotates n/N


class Policy(Model):
    name: Name
    repository: Name
    host: Name | None = None
    schedule: str | None = None
    # A backup that failed for a transient cause (storage throttled or unreachable, a lock
    # held) is tried again, up to `retries` times, `retry_wait` apart; only the sources that
    # failed run again, and the run keeps one record with every attempt.
    retries: int = Field(1, ge=0, le=10)
    retry_wait: Duration = 60.0
    targets: Targets = Targets()
    retention: Retention = Retention()
    sources: Annotated[list[Source], Field(min_length=1)]
    hooks: Hooks = Hooks()
    check: CheckSchedule = CheckSchedule()
    forget_schedule: str | None = None
    path: str | None = Field(None, exclude=True)   # the file it came from

    @model_validator(mode="after")
    def _pitr_local(self) -> "Policy":
        pitr = [s.name for s in self.sources if s.postgres is not None and s.postgres.pitr is not None]
        if pitr and self.host is not None:
            raise ValueError(f"pitr (source {', '.join(pitr)}) needs pg_receivewal and pg_basebackup on this machine; "
                             "it is not supported for a policy with host: (back up that server with a policy "
                             "without host:, its postgres host/port pointing at it)")
        return self

    @model_validator(mode="after")
    def _unique_sources(self) -> "Policy":
        seen: set[str] = set()
        for src in self.sources:
            if src.name in seen:
                raise ValueError(f"source name {src.name!r} is used twice")
            seen.add(src.name)
        return self

    def source(self, name: str) -> Source:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)


# ---------------------------------------------------------------- playbooks

class SnapshotBefore(Model):
    before: datetime

    @field_validator("before")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class SnapshotRandomWithin(Model):
    random_within: Duration


SnapshotSelector = Literal["latest"] | SnapshotBefore | SnapshotRandomWithin


PointInTime = Literal["latest"] | datetime | SnapshotRandomWithin


class RestoreStep(Model):
    source: Name
    into: str = "scratch"                  # scratch | a server URL | an absolute path
    force: bool = False
    host: Name | None = None               # restore onto this host (over SSH)
    # PITR sources: recover the base backup + WAL to this moment (latest, a time, {random_within: 7d});
    # into: scratch only.
    at: PointInTime | None = None

    @field_validator("at")
    @classmethod
    def _aware_at(cls, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class VerifyStep(Model):
    source: Name
    content: bool = True                   # files: compare content hashes too


class Expect(Model):
    equals: Any = None
    min: float | None = None
    max: float | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _something(self) -> "Expect":
        if self.equals is None and self.min is None and self.max is None and self.regex is None:
            raise ValueError("expect needs at least one of equals, min, max, regex")
        if self.regex is not None:
            re.compile(self.regex)
        return self


class SqlStep(Model):
    source: Name
    query: str
    database: str | None = None
    expect: Expect


class CommandStep(Model):
    argv: Argv
    env: dict[str, str] = {}
    host: Name | None = None


class HttpStep(Model):
    url: str
    status: int = 200
    body_regex: str | None = None


class KitStep(Model):
    file: str | None = None                # a recovery kit; default: the configured password
    passphrase: SecretRef | None = None


STEP_KINDS = ("restore", "verify", "sql", "command", "http", "kit")


class Step(Model):
    name: str
    timeout: Duration | None = None
    on_failure: Literal["stop", "continue"] = "stop"
    restore: RestoreStep | None = None
    verify: VerifyStep | None = None
    sql: SqlStep | None = None
    command: CommandStep | None = None
    http: HttpStep | None = None
    kit: KitStep | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        # `command: [argv...]` and `kit: {}` / `kit: true` are accepted shorthands.
        if isinstance(data, dict):
            if isinstance(data.get("command"), list):
                data = {**data, "command": {"argv": data["command"]}}
            if data.get("kit") is True or ("kit" in data and data["kit"] is None):
                data = {**data, "kit": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "Step":
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step needs exactly one of {', '.join(STEP_KINDS)}"
                             + (f"; got {', '.join(kinds)}" if kinds else ""))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)

    @property
    def spec(self) -> Any:
        return getattr(self, self.kind)


class FromNothing(Model):
    """A fire drill: recover in a sandbox that has nothing but this kit (drtool.actions.fire_drill)."""

    kit: str                               # the recovery kit file; relative paths: beside the playbook
    passphrase: SecretRef | None = None    # the kit's passphrase, or
    identity: str | None = None            # a custodian's age / SSH identity file
    mode: Literal["drtool", "runbook"] = "drtool"   # `drtool recover`, or the generated runbook in bash
    timeout: Duration = 7200.0

    @model_validator(mode="after")
    def _one_key(self) -> "FromNothing":
        if (self.passphrase is None) == (self.identity is None):
            raise ValueError("give exactly one of passphrase: (a secret reference) or identity: FILE")
        return self


FROM_NOTHING_STEP_KINDS = ("sql", "http", "command")


class Playbook(Model):
    name: Name
    policy: Name
    snapshot: SnapshotSelector = "latest"
    targets: Targets | None = None
    schedule: str | None = None
    from_nothing: FromNothing | None = None
    steps: list[Step] = []
    path: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _steps_fit(self) -> "Playbook":
        if self.from_nothing is None and not self.steps:
            raise ValueError("a playbook needs at least one step (or from_nothing: for a fire drill)")
        if self.from_nothing is not None:
            wrong = [s.name for s in self.steps if s.kind not in FROM_NOTHING_STEP_KINDS]
            if wrong:
                raise ValueError(f"a from_nothing drill recovers every source itself; its steps are checks "
                                 f"({', '.join(FROM_NOTHING_STEP_KINDS)}) only, not: {', '.join(wrong)}")
        return self


def beside(config_path: Path, configured: str | None, default: str) -> Path:
    if configured:
        p = Path(configured)
        return p if p.is_absolute() else (config_path.parent / p)
    return config_path.parent / default
