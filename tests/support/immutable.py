"""Immutable repositories for tests: a drtool setup on moto (Object Lock) or on an append-only
restic REST server (`rclone serve restic --append-only`), and what tests read back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tests.support.drtool_env import DrtoolEnv, make_env
from tests.support.services import free_port, wait_port


def set_repository(env: DrtoolEnv, name: str = "offsite", **fields: Any) -> None:
    """Change (or add) repository `name` in the setup's drtool.yaml."""
    doc = yaml.safe_load(env.config.read_text())
    repo = doc["repositories"].setdefault(name, {})
    repo.update(fields)
    for key in [k for k, v in repo.items() if v is None]:
        del repo[key]
    env.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def moto_env(root: Path, moto: Any, bucket: str, *, mode: str = "compliance", days: int = 3,
             create_locked: bool | None = True) -> DrtoolEnv:
    """A setup whose repository lives in a moto bucket: created with Object Lock (True), plain
    (False), or left to drtool to create (None)."""
    env = make_env(root, moto, bucket)
    set_repository(env, immutable={"mode": mode, "days": days})
    if create_locked is not None:
        moto.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=create_locked)
    return env


def make_sqlite(path: Path, rows: int = 200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("create table penduduk (nik text primary key, nama text, lahir text)")
    conn.executemany("insert into penduduk values (?, ?, ?)",
                     [(f"1671{i:012d}", f"warga {i}", f"19{i % 90 + 10}-01-01") for i in range(rows)])
    conn.execute("create table dokumen (id integer primary key, isi blob)")
    conn.executemany("insert into dokumen (isi) values (?)", [(os.urandom(2000),) for _ in range(30)])
    conn.commit()
    conn.close()
    return path


def sqlite_rows(path: Path) -> list[tuple]:
    """Every row of every table, in order: what "identical to the backup" means for a database."""
    conn = sqlite3.connect(path)
    try:
        out = []
        for (table,) in conn.execute("select name from sqlite_master where type='table' order by name"):
            out += [(table, *row) for row in conn.execute(f"select * from {table} order by 1")]
        return out
    finally:
        conn.close()


def current_objects(client: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += page.get("Contents", [])
    return out


def retention(client: Any, bucket: str, key: str) -> tuple[str | None, datetime | None]:
    """(mode, retain-until) of the current version, from HeadObject (moto 5.2's server answers
    GetObjectRetention with the object's content; HeadObject carries the same two values)."""
    head = client.head_object(Bucket=bucket, Key=key)
    until = head.get("ObjectLockRetainUntilDate")
    return head.get("ObjectLockMode"), until.astimezone(timezone.utc) if until else None


@dataclass
class RestServer:
    url: str                 # rest:http://127.0.0.1:PORT (no credentials)
    port: int
    root: Path
    username: str
    password: str
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_rest_server(root: Path, *, append_only: bool, username: str, password: str) -> RestServer:
    """`rclone serve restic` on loopback; the credentials reach rclone through its environment
    (RCLONE_USER / RCLONE_PASS), not its command line."""
    import shutil

    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    argv = [shutil.which("rclone") or "rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}",
            "--config", "/dev/null", str(root)]
    if append_only:
        argv.insert(3, "--append-only")
    env = {**os.environ, "RCLONE_USER": username, "RCLONE_PASS": password}
    log = open(root.parent / f"rest-{port}.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    wait_port(port, proc)
    return RestServer(f"rest:http://127.0.0.1:{port}", port, root, username, password, proc)
