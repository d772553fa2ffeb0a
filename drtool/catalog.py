"""Run and drill history: SQLite under state_dir, mirrored offsite as JSON.

Every run, success or failure, becomes a RunRecord. The local SQLite file
answers "when did P last succeed" quickly; the offsite copy (next to the
restic repository) lets history survive the server.

A run is recorded as "running" when it starts, with its pid and the pid's start
time; a later run that finds such a record whose process is gone marks it
"interrupted" (drtool was killed, the machine lost power). The `debris` table
lists snapshots a run could not remove (the storage was down during a rollback,
or the run was killed mid-stream); the next backup of the repository removes them.

The catalog is a cache of what the signed offsite records hold: a file that is
not a database any more is moved aside (catalog.db.corrupt-TIME) and a new one
started, loudly; a catalog that cannot be written (locked, disk full) raises
StateError, and the run goes on to record itself offsite and alert.
"""

from __future__ import annotations

import json
import logging
import os
import time
import secrets as _random
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drtool.errors import StateError
from drtool.secrets import redact

log = logging.getLogger(__name__)

SCHEMA = """
create table if not exists runs (
    id text primary key,
    policy text not null,
    kind text not null,
    status text not null,
    started_at text not null,
    finished_at text,
    duration_s real,
    bytes_added integer,
    files_new integer,
    snapshots text,
    error text,
    trigger text,
    details text
);
create index if not exists runs_policy_kind on runs(policy, kind, started_at);
create index if not exists runs_status on runs(status);
create table if not exists debris (
    run_id text not null,
    repository text not null,
    tags text not null,
    reason text not null,
    created_at text not null,
    primary key (run_id, repository, tags)
);
"""
LOCK_TIMEOUT_S = 10.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(kind: str, when: datetime | None = None) -> str:
    when = when or utcnow()
    return f"{when:%Y%m%dT%H%M%SZ}-{kind}-{_random.token_hex(3)}"


@dataclass
class RunRecord:
    id: str
    policy: str
    kind: str                           # backup | forget | check | drill | kit-verify | recover
    status: str                         # running | success | failed | cancelled | interrupted
    started_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    bytes_added: int = 0
    files_new: int = 0
    snapshots: list[str] = field(default_factory=list)
    error: str | None = None
    trigger: str = "manual"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def finish(self, status: str, error: str | None = None) -> "RunRecord":
        self.finished_at = utcnow()
        self.duration_s = (self.finished_at - self.started_at).total_seconds()
        self.status = status
        self.error = redact(error) if error else None
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        data = dict(data)
        data.pop("signature", None)
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        if data.get("finished_at"):
            data["finished_at"] = datetime.fromisoformat(data["finished_at"])
        return cls(**data)


class Catalog:
    def __init__(self, state_dir: Path, *, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = state_dir / "catalog.db"
        self.lock_timeout = lock_timeout
        self.recovered_from: Path | None = None     # where a corrupt catalog was moved
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._create()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise _state_error(self.path, exc) from None
            self._quarantine(exc)
        except OSError as exc:
            raise _state_error(self.path, exc) from None

    def _create(self) -> None:
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)
        os.chmod(self.path, 0o600)

    def _quarantine(self, exc: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(f"catalog.db.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        log.error("catalog %s is damaged (%s); moved aside to %s, starting a new one "
                  "(run history stays readable from the signed records offsite)", self.path, exc, aside)
        try:
            os.replace(self.path, aside)
            self._create()
        except (OSError, sqlite3.DatabaseError) as again:
            raise _state_error(self.path, again) from None
        self.recovered_from = aside

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.lock_timeout)
        db.row_factory = sqlite3.Row
        return db

    def _write(self, sql: str, args: Any = ()) -> None:
        try:
            with closing(self._connect()) as db, db:
                db.execute(sql, args)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _state_error(self.path, exc) from None

    def record(self, run: RunRecord) -> None:
        row = run.to_dict()
        row["snapshots"] = json.dumps(run.snapshots)
        row["details"] = json.dumps(run.details, default=str)
        self._write(
            "insert or replace into runs values (:id, :policy, :kind, :status, :started_at, :finished_at,"
            " :duration_s, :bytes_added, :files_new, :snapshots, :error, :trigger, :details)",
            row,
        )

    def running(self) -> list[RunRecord]:
        """Runs recorded as running (live ones, and dead ones not yet marked interrupted)."""
        return self._select("select * from runs where status = 'running' order by started_at", ())

    # ------------------------------------------------------------ debris

    def add_debris(self, run_id: str, repository: str, tags: list[str], reason: str) -> None:
        self._write("insert or replace into debris values (?, ?, ?, ?, ?)",
                    (run_id, repository, json.dumps(sorted(tags)), reason, utcnow().isoformat()))

    def debris(self, repository: str) -> list[dict[str, Any]]:
        rows = self._select_rows("select * from debris where repository = ? order by created_at", (repository,))
        return [{**r, "tags": json.loads(r["tags"])} for r in rows]

    def clear_debris(self, run_id: str, repository: str, tags: list[str]) -> None:
        self._write("delete from debris where run_id = ? and repository = ? and tags = ?",
                    (run_id, repository, json.dumps(sorted(tags))))

    def _select(self, sql: str, args: Any) -> list[RunRecord]:
        return [_from_row(r) for r in self._select_rows(sql, args)]

    def _select_rows(self, sql: str, args: Any) -> list[dict[str, Any]]:
        try:
            with closing(self._connect()) as db:
                return [dict(r) for r in db.execute(sql, args)]
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _state_error(self.path, exc) from None

    def runs(self, policy: str | None = None, kind: str | None = None, limit: int = 50,
             status: str | None = None) -> list[RunRecord]:
        query, args = "select * from runs where 1=1", []
        for column, value in (("policy", policy), ("kind", kind), ("status", status)):
            if value is not None:
                query += f" and {column} = ?"
                args.append(value)
        query += " order by started_at desc limit ?"
        args.append(limit)
        return self._select(query, args)

    def last_run(self, policy: str, kind: str, status: str | None = None) -> RunRecord | None:
        found = self.runs(policy=policy, kind=kind, status=status, limit=1)
        return found[0] if found else None

    def last_started_by_job(self, drill_window: int = 20) -> dict[tuple[str, str, str | None], datetime]:
        """Newest started_at per scheduled job, in one read: what `last_run(policy, kind)` gives for
        each (policy, kind, None), and for drills (policy, "drill", playbook) from the policy's newest
        `drill_window` drill runs (as a scan of `runs(policy, "drill", limit=drill_window)` finds it)."""
        found: dict[tuple[str, str, str | None], datetime] = {}
        for row in self._select_rows("select policy, kind, max(started_at) as started_at from runs"
                                     " where kind != 'drill' group by policy, kind", ()):
            found[(row["policy"], row["kind"], None)] = datetime.fromisoformat(row["started_at"])
        rows = self._select_rows(
            "select policy, started_at, details from (select policy, started_at, details, row_number() over"
            " (partition by policy order by started_at desc) as n from runs where kind = 'drill') where n <= ?"
            " order by started_at desc", (drill_window,))
        for row in rows:
            playbook = json.loads(row["details"] or "{}").get("playbook")
            key = (row["policy"], "drill", playbook)
            if playbook is not None and key not in found:
                found[key] = datetime.fromisoformat(row["started_at"])
        return found

    def get(self, run_id: str) -> RunRecord | None:
        found = self._select("select * from runs where id = ?", (run_id,))
        return found[0] if found else None


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "file is encrypted" in text


def _state_error(path: Path, exc: BaseException) -> StateError:
    text = getattr(exc, "strerror", None) or str(exc)
    if "locked" in text.lower() or "busy" in text.lower():
        hint = "another process holds the catalog; find it with `fuser` and let it finish"
    elif "no space" in text.lower() or "disk is full" in text.lower() or "full" in text.lower():
        hint = f"free space on the file system of {path.parent} (state_dir)"
    else:
        hint = f"check permissions and free space of {path.parent} (state_dir)"
    return StateError(f"the local catalog {path} cannot be used: {text}", hint=hint)


def _from_row(row: sqlite3.Row | dict[str, Any]) -> RunRecord:
    data = dict(row)
    data["snapshots"] = json.loads(data["snapshots"] or "[]")
    data["details"] = json.loads(data["details"] or "{}")
    return RunRecord.from_dict(data)
