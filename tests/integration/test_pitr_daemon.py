"""`drtool daemon` ships the WAL of a PITR source by itself, beside scheduled retention on the same
repository (a batch and forget/prune never collide), retention keeps exactly what the kept base
backup needs, and SIGTERM stops the shipper with its receiver; the kept base backup still
recovers every committed row."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime

import pytest

from drtool.catalog import Catalog
from drtool.sources.wal_names import DEFAULT_SEGMENT_SIZE, parse_lsn, parse_segment
from tests.integration.test_pitr import batches, restore_at, restored_ids, server_root, wait_offsite  # noqa: F401
from tests.integration.test_pitr_gaps import receivers_of
from tests.support.pg_primary import Writer, burn, pitr_primary, psql, wait_for
from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration


def test_daemon_ships_wal_beside_retention_and_stops_cleanly(tmp_path, s3_server, bucket, server_root):  # noqa: F811
    root, started = server_root
    with pitr_primary() as pg:
        psql(pg, "CREATE DATABASE siak")
        ws = make_workspace(tmp_path / "ws", s3_server, bucket)
        ws.policy("siak", [{"name": "db", "postgres": {"database": "siak", "port": pg.port, "bin_dir": pg.bin_dir,
                                                      "pitr": {"wal_ship": "1s"}}}],
                  retention={"last": 1}, forget_schedule="every 4s")
        ws.drtool("init-repo", "offsite", check=True)
        spool = ws.root / "state" / "wal" / "siak" / "db" / "wal"
        catalog = Catalog(ws.root / "state")
        with Writer(pg, "siak", every=0.2) as writer:
            ws.drtool("backup", "siak", check=True)                          # base backup 1
            daemon = subprocess.Popen([sys.executable, "-m", "drtool", "-c", str(ws.config), "daemon"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**ws.env, "DRTOOL_WATCHDOG_SECONDS": "3600", "DRTOOL_DAEMON_GRACE": "30"})
            try:
                wait_for(lambda: receivers_of(spool), what="the daemon's pg_receivewal")
                # Two segments, each offsite before the next switch: the first one's batch then lies
                # wholly before base backup 2, and retention must remove it (waiting, not sleeping: a
                # batch postponed by a forget could otherwise straddle the base backup's start).
                for _ in range(2):
                    psql(pg, "SELECT pg_switch_wal()")
                    done = parse_segment(psql(pg, "SELECT pg_walfile_name(pg_current_wal_lsn())"),
                                         DEFAULT_SEGMENT_SIZE).segno - 1
                    wait_for(lambda: any(s.segno >= done for b in batches(ws) for s in b.complete),  # noqa: B023
                             timeout=120, what=f"WAL segment {done} offsite")
                ws.drtool("backup", "siak", "--wait", check=True)             # base backup 2
                second = datetime.now().astimezone()
                psql(pg, "SELECT pg_switch_wal()")
                _wait_for_forget_after(catalog, second)
                writer.stop()
                rows = list(writer.rows)
                wait_offsite(ws, rows[-1][1])
            finally:
                daemon.send_signal(signal.SIGTERM)
                _out, err = daemon.communicate(timeout=120)
        assert daemon.returncode == 0, err
        assert not receivers_of(spool), "pg_receivewal outlived the daemon"
        forgets = [r for r in catalog.runs(policy="siak", limit=100) if r.kind == "forget"]
        assert forgets and all(r.status == "success" for r in forgets), [(r.status, r.error) for r in forgets]
        assert sum(r.details["sources"]["db (WAL)"]["forgotten"] for r in forgets) > 0   # retention did act

        # Retention: one base backup left, and no WAL batch wholly before its start. One forget more
        # first: on a loaded machine a batch of segments from before base backup 2 can reach the
        # repository after the daemon's last forget ran (that batch is the next forget's).
        ws.drtool("forget", "siak", check=True)
        sets = json.loads(ws.drtool("snapshots", "siak", "--json", check=True).stdout)
        assert len(sets) == 1
        fingerprint = json.loads(ws.restic("dump", "--tag", f"source=db,run={sets[0]['run']},stream=fingerprint.json",
                                           "latest", "/fingerprint.json").stdout)
        start = parse_lsn(fingerprint["pitr"]["start_lsn"]) // fingerprint["pitr"]["segsize"]
        left = batches(ws)
        assert left and all(b.newest.segno >= start for b in left), [(b.newest, start) for b in left]

        burn(pg)
        latest = restore_at(ws, "latest", root / "latest", started)
        assert restored_ids(latest, pg.bin_dir) == [n for n, _ in rows]


def _wait_for_forget_after(catalog: Catalog, moment: datetime) -> None:
    """A forget that started after `moment` succeeded. The one running at `moment` may take long
    on a loaded machine (prune over S3 under three test workers), and the next starts 4 s after it;
    a timeout says what the forgets did."""
    def forgets():  # noqa: ANN202
        return [r for r in catalog.runs(policy="siak", limit=50) if r.kind == "forget"]

    try:
        wait_for(lambda: [r for r in forgets() if r.status == "success" and r.started_at > moment],
                 timeout=240, what="a forget after the second base backup")
    except AssertionError as exc:
        seen = [(r.started_at.isoformat(timespec="seconds"), r.status, r.error) for r in forgets()]
        raise AssertionError(f"{exc}; second base backup at {moment:%H:%M:%S}; forgets: {seen}") from None
