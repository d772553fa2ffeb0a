"""Point-in-time recovery end to end: a real PostgreSQL primary (wal_level=replica) written to
continuously, base backups through the commit gate, WAL shipped by `drtool wal-ship`, the
primary burned (immediate stop, data directory deleted), then recovered by `drtool restore --at`
to the latest moment and to a moment between two known writes, row for row."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drtool.sources.wal_names import batch_from_tags
from tests.support.pg_primary import Writer, burn, pitr_primary, psql, psql_port, wait_for
from tests.support.workspace import Workspace, make_workspace

pytestmark = pytest.mark.integration

SHIP = "2s"


@pytest.fixture()
def server_root():
    """Where recovered servers live: outside the 0700 pytest dirs (the postgres user must enter it)."""
    root = Path(tempfile.mkdtemp(prefix="drtool-pitr-"))
    root.chmod(0o711)
    started: list[dict] = []
    yield root, started
    for out in started:
        subprocess.run(out["service"]["stop"], capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


def workspace(tmp_path: Path, s3_server, bucket: str, pg, **pitr) -> Workspace:  # noqa: ANN001
    psql(pg, "CREATE DATABASE siak")
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("siak", [{"name": "db", "postgres": {"database": "siak", "port": pg.port, "bin_dir": pg.bin_dir,
                                                  "pitr": {"wal_ship": SHIP, **pitr}}}],
              targets={"rpo": "1m"})
    ws.drtool("init-repo", "offsite", check=True)
    return ws


def start_shipper(ws: Workspace) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "drtool", "-c", str(ws.config), "wal-ship", "siak"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ws.env)


def batches(ws: Workspace) -> list:
    # --no-lock: the test watches, it must not hold a lock a forget of the daemon then meets
    snaps = json.loads(ws.restic("--no-lock", "snapshots", "--json").stdout or "[]")
    found = [batch_from_tags(s["id"], datetime.fromisoformat(s["time"][:26] + "+00:00"), s["tags"]) for s in snaps]
    return [b for b in found if b is not None]


def newest_upto(ws: Workspace) -> datetime | None:
    times = [b.upto for b in batches(ws) if b.upto is not None]
    return max(times) if times else None


def wait_offsite(ws: Workspace, moment: datetime, timeout: float = 60) -> None:
    wait_for(lambda: (newest_upto(ws) or datetime.min.replace(tzinfo=timezone.utc)) > moment, timeout,
             what=f"WAL up to {moment.isoformat()} offsite")


def restored_ids(out: dict, bin_dir: str) -> list[int]:
    os.environ["PGPASSFILE"] = out["passfile"]
    try:
        text = psql_port(bin_dir, out["port"], "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ticks",
                         "siak")
    finally:
        os.environ.pop("PGPASSFILE", None)
    return [int(x) for x in text.split(",") if x]


def restore_at(ws: Workspace, at: str, target: Path, started: list) -> dict:  # noqa: ANN001
    proc = ws.drtool("restore", "siak", "--source", "db", "--at", at, "--target", str(target), "--json",
                     timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    started.append(out)
    return out


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


def test_burn_then_recover_latest_and_a_moment_between_two_writes(tmp_path, s3_server, bucket, server_root):
    root, started = server_root
    with pitr_primary() as pg:
        ws = workspace(tmp_path, s3_server, bucket, pg)
        shipper = start_shipper(ws)
        try:
            with Writer(pg, "siak", every=0.4) as writer:
                wait_for(lambda: len(writer.rows) >= 3, what="first rows")
                ws.drtool("backup", "siak", check=True)            # base backup while rows keep coming
                backed_up = datetime.now(timezone.utc)
                time.sleep(2)
                psql(pg, "SELECT pg_switch_wal()")                  # a complete segment goes out too
                time.sleep(3)
            assert writer.error is None
            rows = list(writer.rows)
            wait_offsite(ws, rows[-1][1])
        finally:
            # The fire: the shipper dies with the server (SIGKILL: no last batch), then the server.
            stop(shipper, signal.SIGKILL)
        burn(pg)
        assert not pg.data_dir.exists()

        latest = restore_at(ws, "latest", root / "latest", started)
        assert restored_ids(latest, pg.bin_dir) == [n for n, _ in rows]       # every committed row, no other
        assert latest["recovered_to"] == "no recovery target specified" and latest["timeline"] == 2
        assert latest["wal_files_served"] >= 2 and latest["settings"]["fsync"] == "on"

        # A moment between two writes made after the base backup: exactly the rows before it.
        k = next(i for i, (_n, at) in enumerate(rows) if at > backed_up + timedelta(seconds=1))
        moment = rows[k][1] + (rows[k + 1][1] - rows[k][1]) * 0.6
        between = restore_at(ws, moment.isoformat(), root / "between", started)
        assert restored_ids(between, pg.bin_dir) == [n for n, _ in rows[: k + 1]]
        assert between["target"].startswith(moment.isoformat()[:19])

        # Before the first base backup: refused, nothing written.
        refused = ws.drtool("restore", "siak", "--source", "db", "--at", (rows[0][1] - timedelta(hours=1)).isoformat(),
                            "--target", str(root / "refused"))
        assert refused.returncode == 2, refused.stderr
        assert "outside the recoverable window" in refused.stderr and "Traceback" not in refused.stderr
        assert not (root / "refused").exists()


def test_drill_recovers_to_latest_and_to_a_random_moment_and_measures_the_data_loss(tmp_path, s3_server, bucket):
    with pitr_primary() as pg:
        ws = workspace(tmp_path, s3_server, bucket, pg, canary="1s")
        ws.playbook("siak-pitr", {"policy": "siak", "targets": {"rpo": "30s", "rto": "10m"}, "steps": [
            {"name": "recover to now", "restore": {"source": "db", "into": "scratch", "at": "latest"}},
            {"name": "rows are back", "sql": {"source": "db", "query": "SELECT count(*) FROM ticks",
                                              "expect": {"min": 5}}},
            {"name": "a random moment", "restore": {"source": "db", "into": "scratch",
                                                    "at": {"random_within": "1h"}}},
            {"name": "canary is there", "sql": {"source": "db", "database": "postgres",
                                                "query": "SELECT count(*) FROM drtool_canary", "expect": {"equals": 1}}},
            {"name": "verify has nothing to compare", "verify": {"source": "db"}, "on_failure": "continue"},
        ]})
        shipper = start_shipper(ws)
        try:
            with Writer(pg, "siak", every=0.3):
                ws.drtool("backup", "siak", check=True)
                time.sleep(4)
                proc = ws.drtool("drill", "siak-pitr", "--json", timeout=600)
        finally:
            stop(shipper)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        steps = {s["name"]: s for s in report["steps"]}
        assert steps["recover to now"]["status"] == "passed", steps["recover to now"]
        assert steps["rows are back"]["status"] == "passed" and steps["canary is there"]["status"] == "passed"
        latest = steps["recover to now"]["pitr"]
        assert latest["rpo_method"] == "canary" and latest["target"] == "latest"
        # The data a fire at the step's start would have cost: WAL waits at most wal_ship (2 s) plus a batch's
        # trip; the canary is written every second.
        assert 0 <= latest["achieved_rpo_s"] <= 2 * 2 + 1 + 3, latest
        past = steps["a random moment"]["pitr"]
        assert past["target"] != "latest" and past["achieved_rpo_s"] <= 1 + 1.5, past
        assert report["rpo"]["achieved_s"] == max(latest["achieved_rpo_s"], past["achieved_rpo_s"])
        assert report["rpo"]["met"] is True
        assert steps["verify has nothing to compare"]["status"] == "failed"
        assert "point in time" in steps["verify has nothing to compare"]["detail"]
        assert proc.returncode == 1                          # that failing (continue) step fails the drill
