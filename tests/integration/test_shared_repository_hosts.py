"""Two hosts, one repository, one policy name: every command sees only its own host's sets.

host-a and host-b write the policy `shared` (a files source and an SQLite database whose
contents differ per host) into the same real restic repository on rclone S3. Before the
fix, host-a's `forget` with `last: 1` removed all of host-a's snapshots and kept host-b's,
its restore and drill brought back host-b's data, and `status` on a host with no backup at
all said "ok". Each command is checked here, and the repository with bare restic.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.drtool_env import REPO_PASSWORD, DrtoolEnv, data_root, make_env

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery staple 42"


def _host_env(root: Path, s3, bucket: str, host: str, data: Path, rows: int) -> DrtoolEnv:
    env = make_env(root, s3, bucket, prefix="shared-repo")
    config = yaml.safe_load(env.config.read_text())
    config["hostname"] = host
    env.config.write_text(yaml.safe_dump(config, sort_keys=False))
    docs = data / host / "docs"
    docs.mkdir(parents=True)
    (docs / "owner.txt").write_text(f"{host}\n")
    db = sqlite3.connect(data / host / "app.sqlite")
    db.execute("create table t (n integer)")
    db.executemany("insert into t values (?)", [(i,) for i in range(rows)])
    db.commit()
    db.close()
    env.policy("shared", [{"name": "docs", "files": {"paths": [str(docs)]}},
                          {"name": "db", "sqlite": {"path": str(data / host / "app.sqlite")}}],
               retention={"last": 1})
    env.playbook("shared-drill", {"policy": "shared", "steps": [
        {"name": "restore db", "restore": {"source": "db"}},
        {"name": "verify db", "verify": {"source": "db"}},
        {"name": "rows", "sql": {"source": "db", "query": "select count(*) from t", "expect": {"equals": rows}}},
    ]})
    return env


def _bare_snapshots(env: DrtoolEnv, host: str | None = None) -> list[dict]:
    pw = env.root / "repo.pass"
    argv = ["restic", "-r", env.s3.repo_url(env.bucket, env.prefix), "--password-file", str(pw),
            "snapshots", "--json", "--no-lock"] + (["--host", host] if host else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "AWS_ACCESS_KEY_ID": env.s3.access_key,
                              "AWS_SECRET_ACCESS_KEY": env.s3.secret_key})
    return json.loads(out.stdout)


def _sets_by_source(env: DrtoolEnv, *args: str) -> dict[str, list[dict]]:
    code, rows, err = env.run_json("snapshots", "shared", *args)
    assert code == 0, err
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["source"], []).append(row)
    return out


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory, s3_server):
    """Both hosts back up twice; the tests below run in order, forget last (it changes the repository)."""
    bucket = f"shared-hosts-{uuid.uuid4().hex[:8]}"
    (s3_server.root / bucket).mkdir(parents=True)
    root = tmp_path_factory.mktemp("hosts")
    with data_root() as data:
        a = _host_env(root / "a", s3_server, bucket, "host-a", data, rows=3)
        b = _host_env(root / "b", s3_server, bucket, "host-b", data, rows=5)
        for env in (a, b, a, b):
            env.backup("shared")
        yield a, b, bucket


def test_listing_restore_drill_and_status_see_only_their_own_host(two_hosts, tmp_path, s3_server):
    a, b, bucket = two_hosts
    mine = _sets_by_source(a)
    assert {s: len(v) for s, v in mine.items()} == {"docs": 2, "db": 2}
    assert {row["host"] for rows in mine.values() for row in rows} == {"host-a"}
    everyone = _sets_by_source(a, "--all-hosts")
    assert {row["host"] for rows in everyone.values() for row in rows} == {"host-a", "host-b"}
    other = _sets_by_source(a, "--host", "host-b")
    assert {row["host"] for rows in other.values() for row in rows} == {"host-b"}

    # restore latest: host-a's files, unless host-b's are asked for on purpose
    code, out, err = a.run("restore", "shared", "--source", "docs", "--target", str(tmp_path / "ra"))
    assert code == 0, err
    assert [p.read_text() for p in (tmp_path / "ra").rglob("owner.txt")] == ["host-a\n"]
    code, out, err = a.run("restore", "shared", "--source", "docs", "--target", str(tmp_path / "rb"),
                           "--host", "host-b")
    assert code == 0, err
    assert [p.read_text() for p in (tmp_path / "rb").rglob("owner.txt")] == ["host-b\n"]
    code, out, err = a.run("restore", "shared", "--source", "db", "--target", str(tmp_path / "a.sqlite"))
    assert code == 0, err
    assert sqlite3.connect(tmp_path / "a.sqlite").execute("select count(*) from t").fetchone() == (3,)

    # a drill of host-a restores host-a's database and verifies it against host-a's fingerprint
    code, report, err = a.run_json("drill", "shared-drill")
    assert code == 0, json.dumps(report, indent=1) + err
    assert report["host"] == "host-a"
    assert [s["status"] for s in report["steps"]] == ["passed"] * 3
    restored_ids = {i for src in report["snapshot"]["sources"].values() for i in src["snapshots"]}
    assert restored_ids <= {s["id"] for s in _bare_snapshots(a, "host-a")}

    # status of a host that never backed up: no backup, whatever the repository holds
    c = make_env(tmp_path / "c", s3_server, bucket, prefix="shared-repo")
    config = yaml.safe_load(c.config.read_text())
    config["hostname"] = "host-c"
    c.config.write_text(yaml.safe_dump(config, sort_keys=False))
    c.policy("shared", [{"name": "docs", "files": {"paths": ["/nonexistent-docs"]}}], targets={"rpo": "1h"})
    code, rows, err = c.run_json("status")
    [row] = rows
    assert row["last_backup"] is None and row["verdict"] == "rpo-breach", row
    code, rows, err = a.run_json("status")
    [row] = rows
    newest_a = max(s["time"] for s in _bare_snapshots(a, "host-a") if "source=db" in s.get("tags", []))
    assert row["last_backup"] is not None and row["last_backup"][:19] <= newest_a[:19]

    # the runbook selects host-a's snapshots in every restic command
    code, text, err = a.run("runbook", "shared")
    assert code == 0, err
    reads = [line for line in text.splitlines() if line.startswith(("restic dump", "restic restore", "restic snap"))]
    assert reads and all("--host host-a " in line for line in reads), reads


def _cli(args: list[str], *, env: dict, passphrase: str = PASSPHRASE) -> subprocess.CompletedProcess:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, passphrase.encode() + b"\n")
    os.close(write_fd)
    try:
        return subprocess.run([sys.executable, "-m", "drtool", *args, "--passphrase-fd", str(read_fd)],
                              capture_output=True, text=True, env=env, timeout=300, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)


def test_kit_and_recover_take_the_kit_hosts_backups(two_hosts, tmp_path):
    a, b, _bucket = two_hosts
    kit = tmp_path / "a.drkit"
    env = {**os.environ, **a.env}
    made = _cli(["-c", str(a.config), "kit", "create", "shared", "--out", str(kit), "--with-credentials"], env=env)
    assert made.returncode == 0, made.stderr
    verified = _cli(["kit", "verify", str(kit), "--json"], env=env)
    assert verified.returncode == 0, verified.stderr
    [repo] = json.loads(verified.stdout)["repositories"]
    assert repo["host"] == "host-a"
    newest_a = {row["source"]: row["run"] for row in a.run_json("snapshots", "shared")[1]}
    assert {name: info["newest_run"] for name, info in repo["policies"]["shared"].items()} == newest_a

    fresh = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
             "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    (tmp_path / "home").mkdir()
    root = tmp_path / "recovered"
    done = _cli(["recover", "--kit", str(kit), "--policy", "shared", "--target-root", str(root), "--json"], env=fresh)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["host"] == "host-a"
    assert [p.read_text() for p in root.rglob("owner.txt")] == ["host-a\n"]
    assert sqlite3.connect(next(root.rglob("app.sqlite"))).execute("select count(*) from t").fetchone() == (3,)
    assert REPO_PASSWORD not in done.stdout + done.stderr


def test_forget_never_touches_another_hosts_snapshots(two_hosts):
    """Last: it changes the repository the other tests read."""
    a, b, _bucket = two_hosts
    before_b = {s["id"] for s in _bare_snapshots(a, "host-b")}
    code, run, err = a.run_json("forget", "shared")
    assert code == 0, err
    assert run["details"]["host"] == "host-a"
    after_b = {s["id"] for s in _bare_snapshots(a, "host-b")}
    assert after_b == before_b, "host-a's retention forgot host-b's snapshots"
    left_a = _sets_by_source(a)
    assert {s: len(v) for s, v in left_a.items()} == {"docs": 1, "db": 1}
    assert {s: len(v) for s, v in _sets_by_source(b).items()} == {"docs": 2, "db": 2}
    # host-b's own retention then keeps its newest set of each source
    code, run, err = b.run_json("forget", "shared")
    assert code == 0, err
    assert {s: len(v) for s, v in _sets_by_source(b).items()} == {"docs": 1, "db": 1}
    assert {s: len(v) for s, v in _sets_by_source(a).items()} == {"docs": 1, "db": 1}
