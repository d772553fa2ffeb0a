"""PostgreSQL through the CLI: backup to real S3, restore into a new database, and a
pg_dump killed mid-stream leaves no new snapshot (the engine's commit gate)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from drtool.execute import LocalRunner
from tests.support.postgres import pg_server
from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg():
    yield from pg_server()


def psql(pg, sql: str, db: str = "postgres") -> str:
    argv = [f"{pg.bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg.port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=120).text.strip()


@pytest.fixture(scope="module")
def siak(pg):
    psql(pg, "create database siak")
    psql(pg, "create table penduduk (nik text primary key, nama text, foto bytea);"
             "insert into penduduk select 'NIK' || g, 'Warga ' || g || ' Ṡ', decode(md5(g::text), 'hex') "
             "from generate_series(1, 2000) g;"
             "create table bulk (id int, pad text);"
             "insert into bulk select g, repeat(md5(g::text), 20) from generate_series(1, 60000) g;", db="siak")
    return "siak"


def _ws(tmp_path, s3_server, bucket, pg):
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("siak", [{"name": "siak-db", "postgres": {"database": "siak", "port": pg.port,
                                                         "bin_dir": pg.bin_dir}}],
              targets={"rpo": "24h", "rto": "4h"})
    return ws


def test_postgres_backup_and_restore_via_cli(tmp_path, s3_server, bucket, pg, siak):
    ws = _ws(tmp_path, s3_server, bucket, pg)
    run = json.loads(ws.drtool("backup", "siak", "--json", check=True).stdout.strip().splitlines()[-1])
    fp = run["details"]["sources"]["siak-db"]["fingerprint"]
    assert fp["databases"]["siak"]["public.penduduk"] == 2000
    # streams: the dump, the globals and the fingerprint, each its own tagged snapshot
    assert len(run["snapshots"]) == 3

    url = f"postgresql://postgres@127.0.0.1:{pg.port}/siak_restored"
    out = json.loads(ws.drtool("restore", "siak", "--source", "siak-db", "--target", url, "--json", check=True).stdout)
    assert out["verified"] is True and out["problems"] == []
    assert psql(pg, "select count(*), md5(string_agg(nik || nama || encode(foto, 'hex'), ',' order by nik)) from penduduk",
                db="siak_restored") == psql(pg, "select count(*), md5(string_agg(nik || nama || encode(foto, 'hex'), "
                                                "',' order by nik)) from penduduk", db="siak")
    again = ws.drtool("restore", "siak", "--source", "siak-db", "--target", url)
    assert again.returncode == 2 and "nothing was changed" in again.stderr   # refused: nothing touched


def test_pg_dump_killed_mid_stream_leaves_no_snapshot(tmp_path, s3_server, bucket, pg, siak):
    ws = _ws(tmp_path, s3_server, bucket, pg)
    ws.drtool("backup", "siak", check=True)
    before = json.loads(ws.drtool("snapshots", "siak", "--json", check=True).stdout)
    raw_before = json.loads(ws.restic("snapshots", "--json").stdout)

    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmd and cmd[0].endswith(b"pg_dump") and str(pg.port).encode() in b" ".join(cmd):
                    time.sleep(0.05)   # let some bytes flow first: a truly mid-stream kill
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            time.sleep(0.005)

    t = threading.Thread(target=killer)
    t.start()
    proc = ws.drtool("backup", "siak", "--json")
    t.join()
    assert killed, "pg_dump finished before it could be killed; make the table bigger"
    assert proc.returncode == 1
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["status"] == "failed" and "signal 9" in run["error"]
    # No new complete set, and no stray stream snapshot either.
    assert json.loads(ws.drtool("snapshots", "siak", "--json", check=True).stdout) == before
    assert len(json.loads(ws.restic("snapshots", "--json").stdout)) == len(raw_before)
