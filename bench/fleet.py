"""Bench section `fleet`: `drtool fleet status` over N simulated sites on the local S3.

Each simulated site is a bucket of its own on `rclone serve s3` holding what a real office's
drtool publishes: signed run records (14 nightly backups with their sizes and targets, 2 checks,
2 forgets) and 4 signed drill reports with restore phases (so the forecast has data), each site
signed with its own Ed25519 key (22 records, ~40 KB per site). The fleet file lists every site
with its public key and credentials by reference.

Measured, as a subprocess (`python -m drtool fleet status --json`, what an operator runs):
- cold: an empty cache, every selected record fetched and verified;
- warm: the same again, with the cache from the cold run (listings only, nothing fetched);
- bare: the same objects fetched by a minimal boto3 script (one client, 16 threads, no
  signature check, no evaluation): the floor of reading them at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

RECORDS = {"backup": 14, "check": 2, "forget": 2}
DRILLS = 4


def _id(at: datetime, kind: str, n: int) -> str:
    return f"{at:%Y%m%dT%H%M%SZ}-{kind}-{n:06x}"


def _records(site: int, now: datetime) -> list[tuple[str, dict]]:
    out = []
    for kind, count in RECORDS.items():
        for day in range(count):
            at = now - timedelta(days=count - day, hours=site % 5)
            rid = _id(at, kind, site * 100 + day)
            size = 1_000_000_000 + day * 5_000_000
            out.append((f"runs/{rid}.json", {
                "id": rid, "policy": "siak", "kind": kind, "status": "success", "started_at": at.isoformat(),
                "finished_at": (at + timedelta(minutes=7)).isoformat(), "duration_s": 420.0, "bytes_added": 1000,
                "files_new": 0, "snapshots": [], "error": None, "trigger": "schedule",
                "details": {"targets": {"rpo_s": 86400.0 * (3 if site % 10 else 0.5), "rto_s": 14400.0},
                            "process": {"host": f"office-{site}"},
                            "sources": {"siak-db": {"streams": {"siak.pgdump": {"bytes_in": size}}}}}}))
    for n in range(DRILLS):
        at = now - timedelta(days=30 * (DRILLS - n))
        rid = _id(at, "drill", site * 100 + n)
        restored = 1_000_000_000 + n * 20_000_000
        out.append((f"drills/{rid}.json", {
            "id": rid, "playbook": "siak-drill", "policy": "siak", "trigger": "schedule", "host": f"office-{site}",
            "started_at": at.isoformat(), "finished_at": (at + timedelta(minutes=40)).isoformat(), "passed": True,
            "snapshot": {"id": "x", "time": (at - timedelta(hours=3)).isoformat(), "sources": {"siak-db": {}}},
            "rto": {"target_s": 14400.0, "achieved_s": 2400.0 + 40 * n, "met": True},
            "rpo": {"target_s": 86400.0, "achieved_s": 10800.0, "met": True},
            "steps": [{"name": "restore", "kind": "restore", "status": "passed", "started_at": at.isoformat(),
                       "duration_s": 2300.0 + 40 * n, "bytes": restored,
                       "phases": [{"name": "download+decrypt", "duration_s": 900.0, "bytes": restored},
                                  {"name": "load", "duration_s": 1000.0 + 40 * n}, {"name": "index build",
                                                                                    "duration_s": 400.0}]}],
            "failures": [], "error": None, "kept": []}))
    return out


def make_sites(data_dir: Path, s3, n: int, root: Path) -> Path:  # noqa: ANN001 - LocalS3
    """Write n sites' signed records straight into rclone's data directory; return the fleet file."""
    from drtool.crypto.signing import public_key_b64, sign_record
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = datetime.now(timezone.utc)
    sites = []
    for i in range(n):
        key = Ed25519PrivateKey.generate()
        bucket = f"office-{n}-{i:04d}"          # buckets of their own per fleet size
        folder = data_dir / bucket / "siak.drtool"
        for rel, record in _records(i, now):
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(sign_record(record, key)))
        sites.append({"name": bucket, "repository": s3.repo_url(bucket, "siak"),
                      "s3": {"access_key_id": {"env": "BENCH_S3_KEY"}, "secret_access_key": {"env": "BENCH_S3_SECRET"}},
                      "signing_key": public_key_b64(key)})
    fleet = root / f"fleet-{n}.yaml"
    fleet.write_text(yaml.safe_dump({"state_dir": str(root / f"fleet-state-{n}"), "sites": sites}, sort_keys=False))
    return fleet


def _status(fleet: Path, env: dict) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "drtool", "fleet", "status", "--fleet", str(fleet), "--json"],
                          capture_output=True, text=True, env=env, timeout=3600)
    took = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"fleet status failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took, json.loads(proc.stdout.splitlines()[-1])["summary"]


BARE = r"""
import sys, json, boto3, concurrent.futures as cf
from botocore.config import Config
endpoint, key, secret, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                                   region_name="us-east-1", config=Config(s3={"addressing_style": "path"},
                                                                          max_pool_connections=16))
def site(i):
    b = f"office-{n}-{i:04d}"
    keys = [o["Key"] for p in ("siak.drtool/runs/", "siak.drtool/drills/")
            for o in c.list_objects_v2(Bucket=b, Prefix=p).get("Contents", [])]
    return sum(len(c.get_object(Bucket=b, Key=k)["Body"].read()) for k in keys)
with cf.ThreadPoolExecutor(16) as pool:
    print(sum(pool.map(site, range(n))))
"""


def bench_fleet(root: Path, sizes: list[int]) -> dict:
    from drtool.storage.local_s3 import start_local_s3

    data = root / "fleet-s3"
    s3 = start_local_s3(data, access_key="bench-fleet", secret_key="bench-fleet-secret-0123")
    env = {**os.environ, "BENCH_S3_KEY": s3.access_key, "BENCH_S3_SECRET": s3.secret_key}
    out: dict = {"records_per_site": sum(RECORDS.values()) + DRILLS, "sizes": {}}
    try:
        for n in sizes:
            started = time.monotonic()
            fleet = make_sites(data, s3, n, root)
            made = time.monotonic() - started
            time.sleep(1.5)                          # rclone's directory cache (1 s) sees the new buckets
            cold, cold_summary = _status(fleet, env)
            warm, warm_summary = _status(fleet, env)
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", BARE, s3.endpoint, s3.access_key, s3.secret_key, str(n)],
                           check=True, capture_output=True, timeout=3600)
            bare = time.monotonic() - started
            out["sizes"][str(n)] = {"cold_s": round(cold, 2), "warm_s": round(warm, 2), "bare_s": round(bare, 2),
                                    "setup_s": round(made, 1), "fetched_cold": cold_summary["fetched"],
                                    "fetched_warm": warm_summary["fetched"], "cached_warm": warm_summary["cached"],
                                    "sites_in_breach": cold_summary["sites_in_breach"],
                                    "load": os.getloadavg()[0]}
    finally:
        s3.stop()
    return out


def report_lines(res: dict) -> list[str]:
    lines = [f"fleet status ({res['records_per_site']} signed records per site, local S3, subprocess wall time):"]
    for n, r in res["sizes"].items():
        lines.append(f"  {n:>4} sites: cold {r['cold_s']:.1f} s ({r['fetched_cold']} fetched + verified), "
                     f"warm {r['warm_s']:.1f} s ({r['fetched_warm']} fetched, {r['cached_warm']} from cache), "
                     f"bare boto3 GET of the same objects {r['bare_s']:.1f} s; load {r['load']:.1f}")
    return lines


if __name__ == "__main__":           # python -m bench.fleet [N ...]
    import tempfile

    sizes = [int(a) for a in sys.argv[1:]] or [100, 500]
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-fleet-") as tmp:
        result = bench_fleet(Path(tmp), sizes)
    print("\n".join(report_lines(result)))
    print(json.dumps(result))
