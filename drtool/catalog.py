"""Run and drill history: SQLite under state_dir, mirrored offsite as JSON.

Every run, success or failure, becomes a RunRecord. The local SQLite file
answers "when did P last succeed" quickly; the offsite copy (next to the
restic repository) lets history survive the server.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drtool.secrets import redact

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
"""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(kind: str, when: datetime | None = None) -> str:
    when = when or utcnow()
    return f"{when:%Y%m%dT%H%M%SZ}-{kind}-{_random.token_hex(3)}"


@dataclass
class RunRecord:
    id: str
    policy: str
    kind: str                           # backup | forget | check | drill
    status: str                         # running | success | failed | cancelled
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
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "catalog.db"
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)
        os.chmod(self.path, 0o600)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def record(self, run: RunRecord) -> None:
        row = run.to_dict()
        row["snapshots"] = json.dumps(run.snapshots)
        row["details"] = json.dumps(run.details, default=str)
        with closing(self._connect()) as db, db:
            db.execute(
                "insert or replace into runs values (:id, :policy, :kind, :status, :started_at, :finished_at,"
                " :duration_s, :bytes_added, :files_new, :snapshots, :error, :trigger, :details)",
                row,
            )

    def runs(self, policy: str | None = None, kind: str | None = None, limit: int = 50,
             status: str | None = None) -> list[RunRecord]:
        query, args = "select * from runs where 1=1", []
        for column, value in (("policy", policy), ("kind", kind), ("status", status)):
            if value is not None:
                query += f" and {column} = ?"
                args.append(value)
        query += " order by started_at desc limit ?"
        args.append(limit)
        with closing(self._connect()) as db:
            return [_from_row(r) for r in db.execute(query, args)]

    def last_run(self, policy: str, kind: str, status: str | None = None) -> RunRecord | None:
        found = self.runs(policy=policy, kind=kind, status=status, limit=1)
        return found[0] if found else None

    def last_started_by_job(self, drill_window: int = 20) -> dict[tuple[str, str, str | None], datetime]:
        """Newest started_at per scheduled job, in one read: what `last_run(policy, kind)` gives for
        each (policy, kind, None), and for drills (policy, "drill", playbook) from the policy's newest
        `drill_window` drill runs (as a scan of `runs(policy, "drill", limit=drill_window)` finds it)."""
        found: dict[tuple[str, str, str | None], datetime] = {}
        with closing(self._connect()) as db:
            for row in db.execute("select policy, kind, max(started_at) as started_at from runs"
                                  " where kind != 'drill' group by policy, kind"):
                found[(row["policy"], row["kind"], None)] = datetime.fromisoformat(row["started_at"])
            rows = db.execute(
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
        with closing(self._connect()) as db:
            row = db.execute("select * from runs where id = ?", (run_id,)).fetchone()
        return _from_row(row) if row else None


def _from_row(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    data["snapshots"] = json.loads(data["snapshots"] or "[]")
    data["details"] = json.loads(data["details"] or "{}")
    return RunRecord.from_dict(data)
