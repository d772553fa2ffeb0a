"""Issue 18: what keeping a repository's Object Lock current costs, in S3 API calls and seconds.

A moto S3 server on loopback (`python -m moto.server`), one bucket with Object Lock, and a
repository of N objects (config, keys/, snapshots/, index/ and data/ in restic's proportions;
their content does not matter to the lock, only their number). drtool's side is
`S3Store.extend_locks`, in-process, as `drtool repo lock-extend` runs it:

  first       nothing known yet (a new repository, or a fresh machine): every object is locked
  nightly     after a backup that added 1 % new objects, with drtool's cache: only those are locked
  verify      the daemon's scheduled run: every object's retention read back (HeadObject)
  renewal     renew_days later: every lock is extended again (what the cache spreads out)

The bare side, run alternately, is what a cron script with the same credentials would do every
night: list the objects and PutObjectRetention each one (same thread pool). moto handles one
request at a time, so seconds here are moto's (~5 ms a call); on AWS each call is a network round
trip, spread over the pool. The API call counts are the portable figure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ACCESS, SECRET = "bench-moto-access", "bench-moto-secret-0123456789"
DAYS = 30
FOLDERS = (("data", 0.80), ("index", 0.12), ("snapshots", 0.078))


def _log(msg: str) -> None:
    from bench.runner import log
    log(msg)


def _moto(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_EC2_METADATA_DISABLED": "true"}
    log = open(root / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto did not start")


def _store(endpoint: str, bucket: str, workers: int) -> Any:
    from drtool.secrets import Secret
    from drtool.storage.lock_rules import LockSettings
    from drtool.storage.s3 import S3Store, parse_s3_url

    store = S3Store(parse_s3_url(f"s3:{endpoint}/{bucket}/repo"), Secret(ACCESS), Secret(SECRET), "us-east-1",
                    pool_size=workers)
    store.lock = LockSettings("COMPLIANCE", DAYS)
    return store


def _keys(n: int, start: int = 0) -> list[str]:
    keys = ["repo/config"] + [f"repo/keys/{start:064x}"] if start == 0 else []
    for i in range(start, start + n - len(keys)):
        share = (i * 997) % 1000 / 1000
        folder = next((f for f, cut in _cumulative() if share < cut), "data")
        name = f"{i:064x}"
        keys.append(f"repo/{folder}/{name[:2]}/{name}" if folder == "data" else f"repo/{folder}/{name}")
    return keys


def _cumulative() -> list[tuple[str, float]]:
    out, total = [], 0.0
    for folder, part in FOLDERS:
        total += part
        out.append((folder, total))
    return out


def _fill(store: Any, keys: list[str], workers: int) -> None:
    client = store.client()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=store.location.bucket, Key=k, Body=b"x" * 64), keys))


def _bare(store: Any, now: datetime, workers: int) -> dict[str, Any]:
    """A nightly script: list, then PutObjectRetention on every object."""
    client, before, started = store.client(), dict(store.calls), time.monotonic()
    keys = [o.key for o in store.current_objects([store.location.repo_prefix])]
    until = now + timedelta(days=DAYS)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda k: client.put_object_retention(
            Bucket=store.location.bucket, Key=k, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}), keys))
    calls = {k: v - before.get(k, 0) for k, v in store.calls.items() if v - before.get(k, 0)}
    return {"seconds": round(time.monotonic() - started, 2), "calls": calls, "total": sum(calls.values())}


def _drtool(store: Any, known: dict, now: datetime, *, verify: bool, workers: int) -> tuple[dict[str, Any], dict]:
    ext = store.extend_locks(known, now, verify=verify, workers=workers)
    return ({"seconds": round(ext.seconds, 2), "calls": ext.calls, "total": sum(ext.calls.values()),
             "objects": ext.objects, "extended": ext.extended}, ext.known)


def bench_size(endpoint: str, n: int, workers: int) -> dict[str, Any]:
    bucket = f"locks-{n}"
    store = _store(endpoint, bucket, workers)
    store.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    _log(f"locks: writing {n} objects into moto")
    _fill(store, _keys(n), workers)
    now = datetime.now(UTC)
    out: dict[str, Any] = {"objects": n, "workers": workers, "renew_days": store.lock.renew_days}
    _log(f"locks: {n} objects, first extension and the bare nightly script")
    out["first"], known = _drtool(store, {}, now, verify=False, workers=workers)
    out["bare"] = _bare(store, now, workers)
    _fill(store, _keys(max(1, n // 100), start=n), workers)          # a night's backup: 1 % new objects
    out["nightly"], known = _drtool(store, known, now, verify=False, workers=workers)
    out["bare_nightly"] = _bare(store, now, workers)
    _log(f"locks: {n} objects, verify and renewal")
    out["verify"], _ = _drtool(store, {}, now, verify=True, workers=workers)
    later = now + timedelta(days=store.lock.renew_days, hours=1)
    out["renewal"], _ = _drtool(store, known, later, verify=False, workers=workers)
    return out


def bench_locks(root: Path, sizes: list[int], workers: int = 8) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="locks-", dir=root))
    proc, endpoint = _moto(work)
    try:
        return {"sizes": [bench_size(endpoint, n, workers) for n in sizes]}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def report_lines(res: dict[str, Any]) -> list[str]:
    if "locks" not in res:
        return []
    lines = ["", "Object Lock extension on moto (S3 API calls / seconds; drtool vs a nightly list + "
                 "PutObjectRetention-every-object script):",
             f"{'objects':>8} {'run':<10} {'drtool calls':>13} {'drtool s':>9} {'bare calls':>11} {'bare s':>8}"]
    for size in res["locks"]["sizes"]:
        n = size["objects"]
        for run, bare in (("first", "bare"), ("nightly", "bare_nightly"), ("verify", None), ("renewal", None)):
            d, b = size[run], size.get(bare) if bare else None
            bare_calls = str(b["total"]) if b else "-"
            bare_s = f"{b['seconds']:.2f}" if b else "-"
            lines.append(f"{n:>8} {run:<10} {d['total']:>13} {d['seconds']:>9.2f} {bare_calls:>11} {bare_s:>8}")
        lines.append(f"{'':>8} {'':<10} (renew_days={size['renew_days']}, {size['workers']} workers; "
                     f"nightly locked {size['nightly']['extended']} of {size['nightly']['objects']})")
    return lines
