"""A WAL chain with holes is never a silent loss: killed receivers and shippers (with the
replication slot) lose nothing; without a slot the lost WAL is an alert and a `wal-gap` breach;
a WAL batch deleted from the repository is a `wal-gap` breach too."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from drtool.actions.wal_ship import WalShipper
from drtool.sources.wal_names import DEFAULT_SEGMENT_SIZE, parse_segment
from tests.integration.test_pitr import (
    batches,
    restore_at,
    restored_ids,
    server_root,  # noqa: F401 - fixture
    start_shipper,
    stop,
    wait_offsite,
    workspace,
)
from tests.support.pg_primary import Writer, pitr_primary, psql, wait_for

pytestmark = pytest.mark.integration


def receivers_of(spool: Path) -> list[int]:
    """pg_receivewal processes writing into `spool`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"pg_receivewal") and str(spool).encode() in b" ".join(cmd):
                found.append(int(entry.name))
    return found


def _base_stop_segno(ws) -> int:  # noqa: ANN001
    """The segment holding the newest base backup's stop LSN: up to it, WAL is inside base.tar
    itself (-X fetch), so only a later segment missing from the batches is a hole."""
    from drtool.sources.wal_names import parse_lsn

    sets = json.loads(ws.drtool("snapshots", "siak", "--json", check=True).stdout)
    fingerprint = json.loads(ws.restic("dump", "--tag", f"source=db,run={sets[0]['run']},stream=fingerprint.json",
                                       "latest", "/fingerprint.json").stdout)
    return parse_lsn(fingerprint["pitr"]["stop_lsn"]) // fingerprint["pitr"]["segsize"]


def status(ws) -> tuple[int, dict]:  # noqa: ANN001
    proc = ws.drtool("status", "--json")
    rows = json.loads(proc.stdout)
    return proc.returncode, next(r for r in rows if r["policy"] == "siak")


def burn_wal(pg, rounds: int = 3) -> None:  # noqa: ANN001
    """New segments and checkpoints: a server without a slot recycles what nobody holds."""
    for i in range(rounds):
        psql(pg, f"INSERT INTO ticks SELECT 100000 + {i}, now(); SELECT pg_switch_wal(); CHECKPOINT;", "siak")


def test_killed_receiver_and_shipper_lose_nothing_and_a_deleted_batch_is_a_gap(tmp_path, s3_server, bucket,
                                                                              server_root):  # noqa: F811
    root, started = server_root
    with pitr_primary() as pg:
        ws = workspace(tmp_path, s3_server, bucket, pg)
        spool = ws.root / "state" / "wal" / "siak" / "db" / "wal"
        shipper = start_shipper(ws)
        try:
            with Writer(pg, "siak", every=0.2) as writer:
                ws.drtool("backup", "siak", check=True)
                [receiver] = wait_for(lambda: receivers_of(spool), what="pg_receivewal of the shipper")
                os.kill(receiver, signal.SIGKILL)                         # the receiver dies: restarted
                wait_for(lambda: [p for p in receivers_of(spool) if p != receiver], what="a new pg_receivewal")
                psql(pg, "SELECT pg_switch_wal()")
                time.sleep(1)
                stop(shipper, signal.SIGKILL)                             # the shipper dies, and its receiver
                wait_for(lambda: not receivers_of(spool), what="the receiver to die with the shipper")
                time.sleep(2)                                             # writes go on while nobody ships
                burn_wal(pg)                                              # ... and the server recycles WAL
                shipper = start_shipper(ws)
                time.sleep(2)
            rows = list(writer.rows)
            wait_offsite(ws, rows[-1][1])
        finally:
            err = stop(shipper)
        assert "Traceback" not in err, err

        code, row = status(ws)
        view = row["pitr"]["db"]
        assert view["gaps"] == [] and "wal-gap" not in row["problems"], view      # the slot kept every segment
        assert code == 0 or row["problems"] == ["never-drilled"], row

        latest = restore_at(ws, "latest", root / "latest", started)
        assert restored_ids(latest, pg.bin_dir) == sorted([n for n, _ in rows] + [100000, 100001, 100002])

        # Now lose one batch: the one holding the newest segment of the window no other batch holds
        # (a killed shipper may have shipped some twice). Only a segment after the base backup's stop
        # makes a hole in the recoverable window (older ones are outside it or inside base.tar).
        # Whether it is in the middle of the chain or its end depends on how the batches fell on
        # this machine: in the middle, the repository shows the hole; at the end, nothing follows
        # it, and what the host shipped (its spool state) shows it.
        every = batches(ws)
        start = _base_stop_segno(ws) + 1
        def unique(b):  # noqa: ANN001, ANN202
            return [s for s in b.complete if s.segno >= start and not any(s in o.complete for o in every if o is not b)]
        candidates = [b for b in every if unique(b)]
        assert candidates, f"no batch holds a segment of the window (from {start}) alone: {every}"
        doomed = max(candidates, key=lambda b: unique(b)[-1])
        lost = unique(doomed)[-1].name(doomed.segsize)
        ws.restic("unlock")            # the killed shipper's restic left a stale lock; forget needs the repository alone
        forget = ws.restic("forget", doomed.snapshot_id)
        assert forget.returncode == 0, forget.stderr
        code, row = status(ws)
        assert code == 1 and "wal-gap" in row["problems"], (lost, row)
        gap = row["pitr"]["db"]["gaps"][-1]
        assert gap["from"] <= lost <= gap["to"] and "is missing" in gap["message"], (lost, gap)
        text = ws.drtool("status")
        assert f"siak/db: wal-gap: WAL {gap['from']}" in text.stdout


def test_without_a_slot_lost_wal_is_an_alert_and_a_gap(tmp_path, s3_server, bucket, monkeypatch):
    with pitr_primary() as pg:
        ws = workspace(tmp_path, s3_server, bucket, pg, slot=False)
        for key, value in ws.env.items():
            monkeypatch.setenv(key, value)
        from drtool.config import load_settings

        settings = load_settings(str(ws.config))
        policy = settings.policy("siak")
        psql(pg, "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz)", "siak")
        ws.drtool("backup", "siak", check=True)
        events: list = []

        def run(until) -> None:  # noqa: ANN001
            done = threading.Event()
            shipper = WalShipper(settings, policy, policy.source("db"), send=events.append)
            thread = threading.Thread(target=shipper.run, args=(done,))
            thread.start()
            try:
                wait_for(until, timeout=30, what="the shipper")
            finally:
                done.set()
                thread.join(60)

        run(lambda: batches(ws))                   # ships, then stops (its partial stays in the spool)
        burn_wal(pg, rounds=4)                     # nobody holds the WAL: the server recycles it
        now_at = parse_segment(psql(pg, "SELECT pg_walfile_name(pg_current_wal_lsn())"), DEFAULT_SEGMENT_SIZE).segno
        # The receiver cannot resume where it stopped: an alert, then it starts at the server's position;
        # the hole shows in the repository once WAL from after it is there (not just more batches).
        run(lambda: [e for e in events if e.kind == "wal_gap"]
            and any(b.newest is not None and b.newest.segno >= now_at for b in batches(ws)))
        gaps = [e for e in events if e.kind == "wal_gap"]
        assert "no longer has the WAL" in gaps[0].message and "has already been removed" in gaps[0].message
        assert "drtool backup siak" in gaps[0].message
        code, row = status(ws)
        assert code == 1 and "wal-gap" in row["problems"], row
        assert row["pitr"]["db"]["gaps"], row["pitr"]


def test_a_full_spool_pauses_and_alerts_and_drops_nothing(tmp_path, s3_server, bucket, monkeypatch):
    from tests.support.faultproxy import FaultProxy
    from tests.support.workspace import make_workspace

    proxy = FaultProxy(s3_server.port).start()

    class Proxied:
        access_key, secret_key = s3_server.access_key, s3_server.secret_key

        def repo_url(self, b: str, prefix: str) -> str:
            return proxy.repo_url(b, prefix)

    try:
        with pitr_primary() as pg:
            psql(pg, "CREATE DATABASE siak")
            ws = make_workspace(tmp_path / "ws", Proxied(), bucket)
            ws.policy("siak", [{"name": "db", "postgres": {"database": "siak", "port": pg.port, "bin_dir": pg.bin_dir,
                                                          "pitr": {"wal_ship": "1s", "spool_max": "64M"}}}])
            ws.drtool("init-repo", "offsite", check=True)
            ws.drtool("backup", "siak", check=True)
            for key, value in ws.env.items():
                monkeypatch.setenv(key, value)
            from drtool.config import load_settings
            settings = load_settings(str(ws.config))
            policy = settings.policy("siak")
            events: list = []
            shipper = WalShipper(settings, policy, policy.source("db"), send=events.append)
            done = threading.Event()
            thread = threading.Thread(target=shipper.run, args=(done,))
            thread.start()
            try:
                wait_for(lambda: shipper.spool is not None and receivers_of(shipper.spool.wal), what="receiving")
                proxy.set("refuse")                                   # the storage is gone: nothing ships
                psql(pg, "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz)", "siak")
                for i in range(6):                                    # 6 segments of 16 MB > 64M
                    psql(pg, f"INSERT INTO ticks VALUES ({i}, now()); SELECT pg_switch_wal()", "siak")
                wait_for(lambda: [e for e in events if e.kind == "wal_spool_full"], timeout=60, what="wal_spool_full")
                assert shipper.receiver.paused and not receivers_of(shipper.spool.wal)
                assert "slot keeps the WAL on the server" in next(e for e in events if e.kind == "wal_spool_full").message
                wait_for(lambda: [e for e in events if e.kind == "wal_ship_failed"], timeout=60, what="wal_ship_failed")
                proxy.set("pass")                                     # back: the spool drains, receiving resumes
                wait_for(lambda: not shipper.receiver.paused and receivers_of(shipper.spool.wal), timeout=120,
                         what="receiving again")
                psql(pg, "INSERT INTO ticks VALUES (100, now()); SELECT pg_switch_wal()", "siak")
                wait_for(lambda: len([e for e in events if e.kind == "wal_ship_recovered"]) >= 2, timeout=120,
                         what="both alerts cleared")
            finally:
                done.set()
                thread.join(120)
            code, row = status(ws)
            view = row["pitr"]["db"]
            assert view["gaps"] == [] and "wal-gap" not in row["problems"], view        # nothing was dropped
            kinds = [e.kind for e in events]
            assert kinds.count("wal_spool_full") == 1 and kinds.count("wal_ship_failed") == 1, kinds   # once each
    finally:
        proxy.stop()
