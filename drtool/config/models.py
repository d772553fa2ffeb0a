"""Typed models for drtool.yaml, policies/*.yaml and playbooks/*.yaml.

Unknown keys are rejected everywhere (`extra="forbid"`): a typo must not
silently turn off a backup.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from drtool.config.base import (DURATION_PATTERN, NAME_PATTERN, NAME_RULE, Argv, Duration, Model, Name,  # noqa: F401
                                Rate, _duration, defaults)
from drtool.config.secrets import SecretRef
from drtool.config.source_models import (SOURCE_KINDS, DatabaseSpec, FilesSource, MariadbSource,  # noqa: F401
                                         PitrSettings, PostgresSource, Retention, Source, SqliteSource)
from drtool.config.storage_models import (DEFAULT_LOCK_SCHEDULE, Immutable, Maintenance, RestSettings,  # noqa: F401
                                          S3Settings, backend_problem, rest_url_problem)


# ---------------------------------------------------------------- drtool.yaml

class Repository(Model):
    url: str
    password: SecretRef
    s3: S3Settings | None = None
    rest: RestSettings | None = None       # rest: URLs: the server's username and password
    immutable: Immutable | None = None
    maintenance: Maintenance | None = None
    provider: str | None = None            # who holds it, for 3-2-1-1-0 (default: the endpoint host)
    # How long a throttling (503 SlowDown) or unreachable storage is waited out, with
    # exponential backoff, before a run gives up on it.
    wait_unavailable: Duration = 300.0
    # How long a command waits for a live restic lock (another drtool, an admin's restic, another
    # host) before it fails; stale locks of dead processes on this host are removed at once.
    lock_wait: Duration = 120.0
    # Bandwidth for every restic process on this repository (restic --limit-upload/-download).
    limit_upload: Rate | None = None
    limit_download: Rate | None = None
    # This machine opens the repository with a key of its own (a random 256-bit password in
    # state_dir, a small scrypt work factor): each restic process starts without its ~0.5 s key
    # derivation. drtool/actions/machine_key.py says why that weakens nothing.
    machine_key: bool = True

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if url.startswith(("s3:", "/", "local:", "sftp:", "rest:")):
            problem = rest_url_problem(url)
            if problem:
                raise ValueError(problem)
            return url
        raise ValueError("expected a restic repository URL such as s3:http://127.0.0.1:9000/bucket/prefix or /srv/restic-repo")

    @model_validator(mode="after")
    def _backend_settings_fit(self) -> "Repository":
        problem = backend_problem(self.url, self.rest, self.immutable)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3:")

    @property
    def is_rest(self) -> bool:
        return self.url.startswith("rest:")

    @property
    def object_lock(self) -> bool:
        return self.immutable is not None and self.immutable.mode != "append-only"

    @property
    def append_only(self) -> bool:
        return self.immutable is not None and self.immutable.mode == "append-only"


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
RunKind = Literal["backup", "forget", "check", "drill", "kit-verify", "recover", "lock-extend", "copy", "rollback"]


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


class DashboardSettings(Model):
    """Pages `drtool daemon` keeps current (rebuilt after every job) and may serve on loopback."""
    out_dir: str | None = None             # default: <state_dir>/dashboard
    listen: str | None = None              # e.g. 127.0.0.1:8088 (loopback only); none: not served
    token: SecretRef | None = None         # optional: required as Bearer / ?token= / cookie


class Config(Model):
    state_dir: str = "/var/lib/drtool"
    hostname: str | None = None            # restic --host; default: this machine's name
    policies_dir: str | None = None        # default: policies/ beside drtool.yaml
    playbooks_dir: str | None = None       # default: playbooks/ beside drtool.yaml
    timezone: str | None = None            # IANA name; default TZ, then the system zone (drtool.timezones)
    max_concurrent_jobs: int = Field(1, ge=1, le=64)
    repositories: dict[Name, Repository]
    hosts: dict[Name, Host] = {}
    notifications: Notifications = defaults(Notifications)
    metrics: Metrics = defaults(Metrics)
    forecast: ForecastSettings = defaults(ForecastSettings)
    dashboard: DashboardSettings = defaults(DashboardSettings)
    fleet: str | None = None               # a fleet file (central site): dashboard fleet.html, daemon queues pool drills

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
    targets: Targets = defaults(Targets)
    retention: Retention = defaults(Retention)
    sources: Annotated[list[Source], Field(min_length=1)]
    hooks: Hooks = defaults(Hooks)
    check: CheckSchedule = defaults(CheckSchedule)
    forget_schedule: str | None = None
    # More repositories that get every successful backup's snapshot set (`restic copy`), each
    # with its own password and credentials: the second and third copies of 3-2-1-1-0.
    copies: list[Name] = []
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
        if len(set(self.copies)) != len(self.copies):
            raise ValueError("copies: names a repository twice")
        return self

    @property
    def repositories(self) -> list[str]:
        """The repository the policy backs up to, then the ones it copies to."""
        return [self.repository, *self.copies]

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


# The part keys of a restore (`restore --path/--table/--schema`, a restore step's paths:/tables:/
# schemas:) and the source kinds each is for.
PART_SOURCE_KINDS: dict[str, tuple[str, ...]] = {"paths": ("files",), "tables": ("postgres", "mariadb"),
                                                 "schemas": ("postgres",)}


class RestoreStep(Model):
    source: Name
    into: str = "scratch"                  # scratch | a server URL | an absolute path
    force: bool = False
    host: Name | None = None               # restore onto this host (over SSH)
    # PITR sources: recover the base backup + WAL to this moment (latest, a time, {random_within: 7d});
    # into: scratch only.
    at: PointInTime | None = None
    # Part of a source, as `drtool restore --path/--table/--schema`: files by restic --include
    # pattern; PostgreSQL [SCHEMA.]TABLE or a schema, MariaDB TABLE, with what belongs to them. A
    # later verify step compares that part only.
    paths: list[str] = []
    tables: list[str] = []
    schemas: list[str] = []

    @model_validator(mode="after")
    def _part_not_at(self) -> "RestoreStep":
        if self.at is not None and (self.paths or self.tables or self.schemas):
            raise ValueError("paths:/tables:/schemas: restore part of a set; at: recovers a whole cluster: choose one")
        return self

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


class ImmutabilityStep(Model):
    """The attack drill: with the production credentials, try what ransomware would."""
    repository: Name | None = None         # default: the repository the drill reads


STEP_KINDS = ("restore", "verify", "sql", "command", "http", "kit", "immutability")


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
    immutability: ImmutabilityStep | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        # `command: [argv...]`, `kit: {}` / `kit: true` (and the same for immutability) are accepted shorthands.
        if isinstance(data, dict):
            if isinstance(data.get("command"), list):
                data = {**data, "command": {"argv": data["command"]}}
            for kind in ("kit", "immutability"):
                if data.get(kind) is True or (kind in data and data[kind] is None):
                    data = {**data, kind: {}}
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
    # Drill another repository of the policy (one of its `copies:`), so every copy is proven restorable.
    from_: Name | None = Field(None, alias="from")
    from_nothing: FromNothing | None = None
    steps: list[Step] = []
    path: str | None = Field(None, exclude=True)

    def repository_for(self, policy: "Policy") -> str:
        """The repository this drill reads: `from:`, else the policy's own."""
        return self.from_ or policy.repository

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
