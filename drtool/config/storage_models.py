"""How a repository is reached and protected: S3 and REST credentials, immutability (Object Lock
or an append-only REST server), and the privileged maintenance path forget/prune use."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from drtool.config.base import Model
from drtool.config.secrets import SecretRef


class S3Settings(Model):
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    region: str = "us-east-1"
    # Create the bucket on `init-repo` / first backup when it does not exist.
    create_bucket: bool = True


class RestSettings(Model):
    """HTTP basic auth of a restic REST server (rest-server, `rclone serve restic`)."""
    username: str | None = None
    password: SecretRef | None = None


DEFAULT_LOCK_SCHEDULE = "daily 04:30"


class Immutable(Model):
    """compliance / governance: S3 Object Lock on every object the kept snapshots need, kept
    until at least now + `days` (extended after each backup and on `schedule` by the daemon);
    append-only: a REST server that refuses deletes and overwrites (rest-server --append-only,
    rclone serve restic --append-only)."""
    mode: Literal["compliance", "governance", "append-only"] = "compliance"
    days: int | None = Field(None, ge=1, le=36500)
    schedule: str = DEFAULT_LOCK_SCHEDULE   # the daemon's full verification and extension of every lock

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, expr: str) -> str:
        from drtool.schedule_math import parse_schedule
        parse_schedule(expr)           # a ValueError says what is wrong
        return expr


class Maintenance(Model):
    """The privileged path forget/prune use instead of the production one (an append-only
    repository refuses deletes to the production credentials): another URL to the same
    repository and/or other credentials, used only by forget and prune."""
    url: str | None = None
    rest: RestSettings | None = None
    s3: S3Settings | None = None


def backend_problem(url: str, rest: RestSettings | None, immutable: Immutable | None) -> str | None:
    """Why these settings do not fit the repository URL's backend (None: they fit)."""
    is_s3, is_rest = url.startswith("s3:"), url.startswith("rest:")
    if rest is not None and not is_rest:
        return "rest: settings are for rest: repository URLs"
    if immutable is None:
        return None
    if is_s3 and (immutable.mode == "append-only" or immutable.days is None):
        return ("an immutable s3: repository needs mode: compliance or governance and days: N "
                "(how long every needed object stays locked)")
    if is_rest and (immutable.mode != "append-only" or immutable.days is not None):
        return ("an immutable rest: repository is append-only on the server: write "
                "immutable: {mode: append-only} (no days: the server refuses every delete)")
    if not (is_s3 or is_rest):
        return "immutable: needs an s3: repository (Object Lock) or a rest: one served append-only"
    return None


def rest_url_problem(url: str) -> str | None:
    if url.startswith("rest:") and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        return ("a rest: URL carries no user:password; give them as rest: {username, password: {file: PATH}} "
                "(the value is not shown)")
    return None
