"""Issue 15: point-in-time recovery on restic, measured.

    python -m bench.pitr [--ship 10,60] [--steady S] [--burns N] [--rate R] [--base-mb M] [--out FILE]

Per wal_ship setting, on a fresh primary (wal_level=replica) with a steady insert load of
R rows/s (one row = id + clock_timestamp(), autocommit) and a base backup of ~M MB taken first:

1. shipping cost: `drtool wal-ship` runs alone for S seconds; the restic processes it started
   (its spool's state.json counts them) and the S3 requests that reached the bucket (a counting
   proxy in front of `rclone serve s3`) are scaled to one hour;
2. achieved RPO, N times: at a random moment the shipper is SIGKILLed (the fire takes the
   server and its spool; what is offsite is what is left), the latest moment is recovered from
   the repository into a new cluster (drtool's own path: drtool/actions/pitr.py recover_into,
   drill tuning), and RPO = time of the last row committed before the kill - time of the newest
   row in the recovered cluster. Then the shipper starts again (the slot kept the WAL), and the
   next fire comes once it has caught up, at a random phase of its wal_ship cycle;
3. restore time, after the last burn: drtool's recovery (base from `restic dump`, WAL through the
   broker) vs the bare recovery from a local copy of the same files (tar -x of base.tar, every
   batch already in a local directory, restore_command `cp`, pg_ctl start -w), same settings.

Target: achieved RPO <= 2 x wal_ship. The primary runs with fsync off (its own durability is not
what is measured; it keeps the 2 shared cores for the load, the shipper and restic).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Proxied:
    """make_workspace's view of the S3 server, through the counting proxy."""
    proxy: object
    access_key: str
    secret_key: str

    def repo_url(self, bucket: str, prefix: str) -> str:
        return self.proxy.repo_url(bucket, prefix)  # type: ignore[attr-defined]


def shipper(ws) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen([sys.executable, "-m", "drtool", "-c", str(ws.config), "wal-ship", "bench"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ws.env)


def spool_state(ws) -> dict:  # noqa: ANN001
    path = ws.root / "state" / "wal" / "bench" / "db" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_caught_up(ws, since: datetime, timeout: float = 120) -> None:  # noqa: ANN001
    """Until a batch proves WAL written after `since` offsite (the shipper's state.json `upto`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        upto = spool_state(ws).get("upto")
        if upto and datetime.fromisoformat(upto) > since:
            return
        time.sleep(0.5)
    raise RuntimeError("the restarted shipper did not catch up")


def recover_latest(ws, policy, source, handle) -> tuple[float, datetime | None, dict]:  # noqa: ANN001
    """drtool's recovery of the latest moment into a throwaway cluster: (seconds, newest row, details)."""
    from drtool.actions.pitr import plan_for, read_chain, recover_into
    from drtool.scratch.common import free_port
    from drtool.scratch.pg_recovery import RecoveryPostgres

    started = time.perf_counter()
    chain = read_chain(handle.restic, policy, source, host="drtool-test")
    plan = plan_for(chain, None)
    with RecoveryPostgres(plan.base.major or 15) as server:
        result = recover_into(server, handle.restic, policy, source, plan, port=free_port())
        took = time.perf_counter() - started
        newest = server.socket_sql("SELECT max(at) FROM ticks", "bench")
    return took, datetime.fromisoformat(newest) if newest else None, {**result.to_dict(), "plan_files": len(plan.files)}


def bare_recovery(ws, handle, policy, source, root: Path) -> float:  # noqa: ANN001
    """The same base and WAL, copied to local files first (untimed), then recovered with plain tools."""
    from drtool.actions.pitr import plan_for, read_chain
    from drtool.scratch.common import free_port
    from drtool.scratch.postgres import installed_majors

    plan = plan_for(read_chain(handle.restic, policy, source, host="drtool-test"), None)
    local = root / "bare-copy"
    wal = local / "wal"
    wal.mkdir(parents=True)
    with open(local / "base.tar", "wb") as out:
        proc, pw = handle.restic.dump(plan.base.snapshot_id, "/base.tar")
        shutil.copyfileobj(proc.stdout, out)
        proc.wait(600)
        pw.close()
    for snap in plan.snapshots:
        handle.restic.restore(snap, wal)
    for name, ref in plan.files.items():                  # the newest copy of the last segment, padded
        if ref.partial_bytes is not None:
            part = wal / ref.stored_as
            data = part.read_bytes()
            (wal / name).write_bytes(data + bytes(plan.segsize - len(data)))
    (wal / "manifest.json").unlink(missing_ok=True)
    subprocess.run(["chown", "-R", "postgres:postgres", str(local)], check=True)
    local.chmod(0o755)
    bin_dir = installed_majors()[plan.base.major or 15]
    data = root / "bare-data"
    data.mkdir(mode=0o700)
    shutil.chown(data, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    started = time.perf_counter()
    subprocess.run([*as_pg, "tar", "-x", "-f", str(local / "base.tar"), "-C", str(data)], check=True)
    with open(data / "postgresql.auto.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n"
                   f"archive_mode = off\nhot_standby = off\nfsync = off\n"
                   f"restore_command = 'cp {wal}/%f %p'\nrecovery_target_action = 'promote'\n")
    (data / "recovery.signal").touch()
    subprocess.run(["chown", "-R", "postgres:postgres", str(data)], check=True)
    subprocess.run([*as_pg, f"{bin_dir}/pg_ctl", "-D", str(data), "-l", str(data / "log"), "-w", "-t", "3600",
                    "start"], check=True, capture_output=True, cwd="/")
    took = time.perf_counter() - started
    subprocess.run([*as_pg, f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                   cwd="/")
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(local, ignore_errors=True)
    return took


def setup(ship: int, args: argparse.Namespace, root: Path, pg, s3, proxy) -> tuple:  # noqa: ANN001
    """A database with ~base_mb of data, a workspace on the proxied bucket, one base backup."""
    import dataclasses

    from drtool.actions.common import open_repo
    from drtool.config import load_settings
    from tests.support.pg_primary import psql
    from tests.support.workspace import make_workspace

    psql(pg, "CREATE DATABASE bench")
    rows = max(1000, args.base_mb * 2**20 // 400)
    psql(pg, "CREATE TABLE pad (id int, body text); INSERT INTO pad SELECT g, repeat(md5(g::text), 10) "
             f"FROM generate_series(1, {rows}) g", "bench")
    ws = make_workspace(root / f"ws-{ship}", Proxied(proxy, s3.access_key, s3.secret_key), "bench-pitr")
    ws.policy("bench", [{"name": "db", "postgres": {"database": "bench", "port": pg.port, "bin_dir": pg.bin_dir,
                                                   "pitr": {"wal_ship": f"{ship}s"}}}])
    ws.drtool("init-repo", "offsite", check=True)
    ws.drtool("backup", "bench", check=True)
    os.environ.update(ws.env)
    settings = load_settings(str(ws.config))
    policy = settings.policy("bench")
    handle = open_repo(settings, "offsite")
    # Restores read the bucket directly: the counting proxy (Python) would slow them down.
    handle.restic.access = dataclasses.replace(handle.restic.access, url=s3.repo_url("bench-pitr", "repo"))
    return ws, policy, policy.source("db"), handle


def steady(ws, proxy, ship: int, seconds: float) -> dict:  # noqa: ANN001
    """Shipping alone: restic processes and S3 requests, scaled to an hour."""
    time.sleep(min(ship, 15))                                          # started, first batch out
    before, runs_before, t0 = proxy.requests, spool_state(ws).get("restic_runs", 0), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    requests, runs = proxy.requests - before, spool_state(ws).get("restic_runs", 0) - runs_before
    log(f"wal_ship {ship}s: {runs} batches, {requests} S3 requests in {elapsed:.0f}s")
    return {"steady_s": round(elapsed, 1), "restic_per_hour": round(runs / elapsed * 3600),
            "s3_requests_per_hour": round(requests / elapsed * 3600),
            "s3_requests_per_batch": round(requests / runs, 1) if runs else None}


def burns(ws, writer, proc, ship: int, count: int, recover, bare) -> tuple[dict, subprocess.Popen]:  # noqa: ANN001
    """`count` fires: kill the shipper, recover the latest moment, measure the loss; start it again."""
    samples, out, restarted = [], {}, None
    for i in range(count):
        if restarted is not None:       # a restarted shipper first catches up; then a fire at a random phase
            wait_caught_up(ws, restarted)
        time.sleep(ship + random.uniform(0, ship))
        fire = datetime.now(UTC)
        proc.send_signal(signal.SIGKILL)                                 # the fire
        proc.wait(30)
        last = [r for r in writer.rows if r[1] <= fire][-1]              # the last row committed before it
        took, newest, detail = recover()
        samples.append((last[1] - newest).total_seconds())
        log(f"wal_ship {ship}s burn {i + 1}: RPO {samples[-1]:.2f}s, recovery {took:.1f}s "
            f"({detail['wal_files_served']} WAL files, {detail['wal_batches_fetched']} batches; "
            + ", ".join(f"{p['name']} {p['duration_s']:.1f}s" for p in detail["phases"]) + ")")
        if i == count - 1:
            out.update({"bare_restore_s": round(bare(), 2), "drtool_restore_s": round(took, 2),
                        "restore_detail": detail})
        proc, restarted = shipper(ws), datetime.now(UTC)
    out.update({"rpo_samples_s": [round(x, 2) for x in samples], "rpo_max_s": round(max(samples), 2),
                "rpo_median_s": round(statistics.median(samples), 2), "target_s": 2 * ship,
                "met": max(samples) <= 2 * ship,
                "restore_ratio": round(out["drtool_restore_s"] / out["bare_restore_s"], 2)})
    return out, proc


def run_setting(ship: int, args: argparse.Namespace, root: Path) -> dict:
    from tests.support.faultproxy import FaultProxy
    from tests.support.pg_primary import Writer, pitr_primary
    from tests.support.services import start_rclone_s3

    s3 = start_rclone_s3(root / f"s3-{ship}")
    proxy = FaultProxy(s3.port).start()
    (s3.root / "bench-pitr").mkdir(parents=True, exist_ok=True)
    out: dict = {"wal_ship_s": ship}
    try:
        with pitr_primary() as pg:
            ws, policy, source, handle = setup(ship, args, root, pg, s3, proxy)
            with Writer(pg, "bench", every=1.0 / args.rate) as writer:
                proc = shipper(ws)
                out.update(steady(ws, proxy, ship, args.steady))
                fired, proc = burns(ws, writer, proc, ship, args.burns,
                                    lambda: recover_latest(ws, policy, source, handle),
                                    lambda: bare_recovery(ws, handle, policy, source, root))
                out.update(fired)
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    finally:
        proxy.stop()
        s3.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pitr", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ship", default="10,60", help="wal_ship settings in seconds (default 10,60)")
    ap.add_argument("--steady", type=float, default=120.0, help="seconds of shipping alone, for the cost")
    ap.add_argument("--burns", type=int, default=3, help="fires (recoveries) per setting")
    ap.add_argument("--rate", type=float, default=20.0, help="inserts per second")
    ap.add_argument("--base-mb", type=int, default=50, help="size of the base backup's data")
    ap.add_argument("--out", default="bench/results/pitr.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    root = Path(tempfile.mkdtemp(prefix="drtool-bench-pitr-", dir="/var/tmp"))
    root.chmod(0o711)
    started = datetime.now(UTC)
    results = []
    try:
        for ship in [int(x) for x in args.ship.split(",")]:
            results.append(run_setting(ship, args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()
    print(f"drtool bench.pitr {started.isoformat(timespec='seconds')}  cpus={os.cpu_count()}  load {load[0]:.2f}  "
          f"rate {args.rate}/s, base {args.base_mb} MB, steady {args.steady:.0f}s, burns {args.burns}")
    print(f"{'wal_ship':>8} {'RPO max':>8} {'median':>7} {'target':>7} {'ok':>3} {'restic/h':>9} {'S3 req/h':>9} "
          f"{'req/batch':>9} {'restore':>8} {'bare':>6} {'ratio':>6}")
    for r in results:
        print(f"{r['wal_ship_s']:>7}s {r['rpo_max_s']:>7.2f}s {r['rpo_median_s']:>6.2f}s {r['target_s']:>6}s "
              f"{'yes' if r['met'] else 'NO':>3} {r['restic_per_hour']:>9} {r['s3_requests_per_hour']:>9} "
              f"{r['s3_requests_per_batch'] or '-':>9} {r['drtool_restore_s']:>7.2f}s {r['bare_restore_s']:>5.2f}s "
              f"{r['restore_ratio']:>6.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"started": started.isoformat(), "args": vars(args), "results": results},
                                         indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
