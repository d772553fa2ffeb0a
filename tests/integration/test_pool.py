"""The drill pool: a real PostgreSQL queue, 3 worker processes, 6 fire drills of 3 sites.

Each site really backed up (SQLite or PostgreSQL, small data) and made a drill kit; the fleet
file holds the kits' paths and passphrase references, nothing else of the sites. The test
queues 6 drills, SIGKILLs the worker that runs the PostgreSQL site's drill while its recovered
server is up, starts a replacement worker, and checks: every drill ran to a result exactly once
(the killed one: interrupted, then retried once and passed), no server and no scratch file is
left, two runs of one drill never overlapped, each report is signed with the pool's key in its
site's bucket, and `fleet status` trusts those reports through `trusted_keys`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from drtool.crypto.signing import load_or_create_signing_key, public_key_b64
from drtool.execute import LocalRunner
from drtool.secrets import Secret
from tests.support.drtool_env import data_root, make_env, servers_under
from tests.support.postgres import pg_server

pytestmark = pytest.mark.integration

PASSPHRASE = "pool drill passphrase 17"
DB_PASSWORD = "pool-Catalog-pw-9d1e"


@pytest.fixture(scope="module")
def prod_pg():
    yield from pg_server()


@pytest.fixture(scope="module")
def central_pg():
    yield from pg_server(password=Secret(DB_PASSWORD))


def _kit(env, root: Path, passfile: Path, policy: str) -> Path:  # noqa: ANN001
    kit = root / f"{env.root.name}.drill.age"
    fd = os.open(passfile, os.O_RDONLY)
    try:
        made = subprocess.run([sys.executable, "-m", "drtool", "-c", str(env.config), "kit", "create", policy,
                               "--out", str(kit), "--custodian", "drill", "--with-credentials",
                               "--passphrase-fd", str(fd)], env={**os.environ, **env.env}, capture_output=True,
                              text=True, timeout=300, pass_fds=(fd,), check=False)
    finally:
        os.close(fd)
    assert made.returncode == 0, made.stderr
    return kit


def _psql(pg, sql: str, db: str = "postgres") -> None:  # noqa: ANN001
    LocalRunner().run([f"{pg.bin_dir}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                       "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql], timeout=60)


@pytest.fixture(scope="module")
def sites(tmp_path_factory, s3_server, prod_pg):
    root = tmp_path_factory.mktemp("pool")
    passfile = root / "kit.pass"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    out = {}
    with data_root() as prod:
        for name in ("kantor-a", "kantor-b"):
            db = prod / f"{name}.db"
            with sqlite3.connect(db) as conn:
                conn.execute("create table arsip (id integer primary key, judul text)")
                conn.executemany("insert into arsip (judul) values (?)", [("a",), ("b",), ("c",)])
            bucket = f"{name}-{uuid.uuid4().hex[:6]}"
            s3_server.make_bucket(bucket)
            env = make_env(root / name, s3_server, bucket)
            env.policy("arsip", [{"name": "arsip-db", "sqlite": {"path": str(db)}}], targets={"rto": "1h"})
            env.backup("arsip")
            out[name] = {"env": env, "policy": "arsip", "kit": _kit(env, root, passfile, "arsip"),
                         "check": {"source": "arsip-db", "query": "select count(*) from arsip", "expect": {"equals": 3}}}
        _psql(prod_pg, "create database siak")
        _psql(prod_pg, "create table penduduk (nik text primary key); "
                       "insert into penduduk select 'NIK' || g from generate_series(1, 50) g", db="siak")
        bucket = f"kantor-pg-{uuid.uuid4().hex[:6]}"
        s3_server.make_bucket(bucket)
        env = make_env(root / "kantor-pg", s3_server, bucket)
        env.policy("siak", [{"name": "siak-db", "postgres": {"database": "siak", "port": prod_pg.port,
                                                              "bin_dir": prod_pg.bin_dir}}], targets={"rto": "1h"})
        env.backup("siak")
        out["kantor-pg"] = {"env": env, "policy": "siak", "kit": _kit(env, root, passfile, "siak"),
                            "check": {"source": "siak-db", "query": "select count(*) from penduduk",
                                      "expect": {"equals": 50}}}
        yield {"root": root, "passfile": passfile, "sites": out, "s3": s3_server}


def _fleet_file(sites, central_pg, scratch: Path) -> Path:  # noqa: ANN001
    root = sites["root"]
    dbpass = root / "db.pass"
    dbpass.write_text(DB_PASSWORD + "\n")
    dbpass.chmod(0o600)
    entries = []
    for name, site in sites["sites"].items():
        env = site["env"]
        drills = [{"name": f"fire-{n}", "policy": site["policy"], "targets": {"rto": "1h"},
                   "from_nothing": {"kit": str(site["kit"]), "passphrase": {"file": str(sites["passfile"])}},
                   "steps": [{"name": "records are back", "sql": site["check"]}]} for n in (1, 2)]
        entries.append({"name": name, "repository": env.s3.repo_url(env.bucket, env.prefix),
                        "s3": {"access_key_id": {"env": "FLEET_S3_KEY"}, "secret_access_key": {"env": "FLEET_S3_SECRET"}},
                        "signing_key": public_key_b64(load_or_create_signing_key(env.state_dir)), "drills": drills})
    doc = {"state_dir": str(root / "central"), "sites": entries,
           "pool": {"database": {"host": "127.0.0.1", "port": central_pg.port, "user": "postgres",
                                 "dbname": "postgres", "password": {"file": str(dbpass)}},
                    "scratch_dir": str(scratch), "heartbeat": "1s", "stalled_after": "5s"}}
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _drtool(fleet: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drtool", *args, "--fleet", str(fleet)], capture_output=True,
                          text=True, timeout=timeout)


def _worker(fleet: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "drtool", "-v", "pool", "worker", "--fleet", str(fleet)],
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"), start_new_session=True)


def _rows(conn, sql: str, *args) -> list[tuple]:  # noqa: ANN001, ANN002
    return conn.execute(sql, args).fetchall()


def _wait(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_pool_runs_each_drill_once_and_survives_a_killed_worker(sites, central_pg):
    import psycopg

    scratch = Path(tempfile.mkdtemp(prefix="dpool-"))
    scratch.chmod(0o711)          # the postgres OS user walks into the recovered server's directory
    fleet = _fleet_file(sites, central_pg, scratch)
    log = sites["root"] / "workers.log"
    queued = _drtool(fleet, "pool", "enqueue", *[f"{s}/fire-{n}" for s in sites["sites"] for n in (1, 2)], "--json")
    assert queued.returncode == 0, queued.stderr
    assert [q["outcome"] for q in json.loads(queued.stdout)] == ["queued"] * 6
    again = _drtool(fleet, "pool", "enqueue", "kantor-a/fire-1", "--json")
    assert json.loads(again.stdout)[0]["outcome"] == "already-queued"

    conn = psycopg.connect(host="127.0.0.1", port=central_pg.port, user="postgres", dbname="postgres",
                           password=DB_PASSWORD, autocommit=True)
    workers = [_worker(fleet, log) for _ in range(3)]
    try:
        # The worker on a PostgreSQL drill, while its recovered server runs: SIGKILL it.
        lease = _wait(lambda: next((row for row in _rows(conn, "select pid, scratch, job_id from drtool_pool_leases"
                                                               " where site = 'kantor-pg'")
                                    if servers_under(Path(row[1]))), None), 300, "a recovered server of kantor-pg")
        victim = next(w for w in workers if w.pid == lease[0])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
        assert servers_under(Path(lease[1])), "the dead worker's server should still be running until reaped"
        workers.append(_worker(fleet, log))          # the next worker

        final = "status in ('passed', 'failed', 'error')"
        _wait(lambda: _rows(conn, f"select count(*) from drtool_pool_results where {final}")[0][0] >= 6, 600,
              "6 drill results")
        time.sleep(2)                                # a duplicate run would show up now
        results = _rows(conn, "select site, drill, attempt, status, drill_id, offsite_record, started_at, finished_at,"
                              " job_id, error from drtool_pool_results order by site, drill, attempt")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
    text = log.read_text()
    per_drill: dict[tuple[str, str], list[tuple]] = {}
    for row in results:
        per_drill.setdefault((row[0], row[1]), []).append(row)
    assert len(per_drill) == 6
    for key, rows in per_drill.items():
        finals = [r for r in rows if r[3] != "interrupted"]
        assert len(finals) == 1 and finals[0][3] == "passed" and finals[0][5] is True, (key, rows, text[-3000:])
    killed = per_drill[next(k for k in per_drill if any(r[8] == lease[2] for r in per_drill[k]))]
    assert [(r[2], r[3]) for r in killed] == [(1, "interrupted"), (2, "passed")]
    # One drill never ran twice at once: its attempts follow each other.
    assert all(a[7] <= b[7] for rows in per_drill.values() for a, b in zip(rows, rows[1:]))
    # Nothing left: no server, no scratch directory, no lease.
    assert not servers_under(scratch) and list(scratch.iterdir()) == []
    assert _rows(conn, "select count(*) from drtool_pool_leases")[0][0] == 0
    assert "cleaned up after a dead worker" in text and DB_PASSWORD not in text and PASSPHRASE not in text

    pool_key = _drtool(fleet, "pool", "key").stdout.strip()
    for (site, _drill), rows in per_drill.items():
        env = sites["sites"][site]["env"]
        final = next(r for r in rows if r[3] == "passed")
        stored = next((env.s3.root / env.bucket).rglob(f"repo.drtool/drills/{final[4]}.json"))
        report = json.loads(stored.read_text())
        assert report["signature"]["public_key"] == pool_key and report["passed"] and report["trigger"] == "pool"
        assert report["pool"]["attempt"] == final[2]
    retried = json.loads(next((sites["sites"]["kantor-pg"]["env"].s3.root).rglob(
        f"drills/{killed[-1][4]}.json")).read_text())
    assert retried["pool"]["earlier_attempts"][0]["status"] == "interrupted"

    # The fleet view trusts the pool's reports once its key is listed.
    doc = yaml.safe_load(fleet.read_text())
    doc["trusted_keys"] = [pool_key]
    fleet.write_text(yaml.safe_dump(doc))
    status = subprocess.run(
        [sys.executable, "-m", "drtool", "fleet", "status", "--fleet", str(fleet), "--json"], capture_output=True,
        text=True, timeout=300, env={**os.environ, "FLEET_S3_KEY": sites["s3"].access_key,
                                     "FLEET_S3_SECRET": sites["s3"].secret_key})
    view = json.loads(status.stdout)
    for site in view["sites"]:
        assert site["invalid_records"] == [] and site["policies"][0]["last_drill"]["passed"], site
        assert site["policies"][0]["last_drill"]["trigger"] == "pool"


def test_the_daemon_hook_queues_due_fleet_drills_once(sites, central_pg, tmp_path):
    from drtool.actions.daemon import Daemon
    from drtool.config import load_settings

    fleet = _fleet_file(sites, central_pg, tmp_path / "scratch")
    doc = yaml.safe_load(fleet.read_text())
    # A drill name of its own: the module's earlier tests ran fire-1 on the same pool, so it is
    # not due this month any more.
    drill = f"hook-{uuid.uuid4().hex[:6]}"
    doc["sites"][0]["drills"][0].update(name=drill, schedule="0 3 1 * *")   # monthly: due now (never run)
    doc["pool"]["queue"] = f"hook-{uuid.uuid4().hex[:6]}"          # a queue of its own: no worker takes it
    fleet.write_text(yaml.safe_dump(doc))
    config = tmp_path / "drtool.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "fleet": str(fleet),
                                      "repositories": {"r": {"url": "/srv/none", "password": {"env": "X"}}}}))
    daemon = Daemon(load_settings(str(config)))
    assert daemon.enqueue_pool_drills() == [f"{doc['sites'][0]['name']}/{drill}"]
    assert daemon.enqueue_pool_drills() == []        # already queued: procrastinate's queueing lock
