"""Issues 12 and 16: `drtool recover` from the kit vs the raw time of the same recovery by hand.

The policy holds a PostgreSQL database and (issue 16, unless --recover-files 0) a files source: a
tree of random, incompressible files (bench.runner.make_tree, 100 per directory), both backed up
into one repository before timing.

drtool side: `drtool recover --kit K --data-dir D --target-root T --json` in a clean environment
(empty HOME, only the kit and its passphrase on a pipe), end to end: open the kit, the repository
and the configuration bundle, start a new PostgreSQL, restore (globals + dump), make it durable
(initdb --sync-only, restart, CHECKPOINT) and verify the row counts against the fingerprint; then
restore the files under T (`restic restore --verify`) and compare them with the snapshot listing.
drtool restores the database and the files at the same time; the raw side one after another, and
the report adds a raw floor that overlaps them too.

raw side (a floor, not a procedure anyone can follow): copy the repository's objects out of the
bucket (`rclone copy`, 4 transfers; the files' packs are in it), start a fresh PostgreSQL (initdb
+ pg_ctl start, drill tuning), then `pg_restore -j 2` of a local pg_dump -Fc file of the same
database (made before the timing starts), then `cp -a` of the original tree from local disk into
an empty directory. Alternating A/B, median of --reps.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import HwmPoller, Run, check, timed

PASSPHRASE = "bench kit passphrase " + os.urandom(4).hex()
RAW_JOBS = 2


def _log(msg: str) -> None:
    from bench.runner import log
    log(msg)


def fill(pg, mb: int, psql) -> dict:
    """Database `siak`: pgbench tables (~60 %) and a wide text table with an index (~40 %)."""
    psql(pg, "create database siak")
    scale = max(1, round(mb * 0.6 / 15))
    check(timed([os.path.join(pg.bin_dir, "pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                 "-p", str(pg.port), "-U", "postgres", "siak"]), "pgbench -i")
    rows = max(1000, int(mb * 0.4 * 2**20 / 400))
    psql(pg, "create table dokumen (id bigint primary key, body text);"
             f"insert into dokumen select g, repeat(md5(g::text), 10) from generate_series(1, {rows}) g;"
             "create index on dokumen (md5(body));", db="siak")
    return {"db_bytes": int(psql(pg, "select pg_database_size('siak')")), "pgbench_scale": scale,
            "dokumen_rows": rows}


def _make_kit(ws, root: Path) -> Path:
    kit = root / "siak.age"
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSPHRASE.encode() + b"\n")
    os.close(write_fd)
    try:
        proc = subprocess.run([*ws.argv("kit", "create", "p", "--out", str(kit), "--with-credentials",
                                        "--passphrase-fd", str(read_fd))],
                              env=ws.env, capture_output=True, timeout=600, pass_fds=(read_fd,), check=False)
    finally:
        os.close(read_fd)
    if proc.returncode != 0:
        raise RuntimeError(f"kit create: {proc.stderr.decode()[-2000:]}")
    return kit


def _scrypt_work_factor(kit: Path) -> int | None:
    """log2(N) of the kit's age scrypt stanza (`-> scrypt SALT N`): opening it needs 2**N KiB of memory."""
    for line in kit.read_bytes()[:1024].split(b"\n"):
        if line.startswith(b"-> scrypt "):
            return int(line.split()[-1])
    return None


def _recover(root: Path, kit: Path, i: int) -> tuple[Run, dict]:
    home, data, files = root / f"recover-home-{i}", root / f"recovered-{i}", root / f"recovered-files-{i}"
    state = root / f"recover-state-{i}"       # a new machine's: nothing kept from an earlier recovery
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
           **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {})}
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSPHRASE.encode() + b"\n")
    os.close(write_fd)
    argv = [sys.executable, "-m", "drtool", "recover", "--kit", str(kit), "--data-dir", str(data),
            "--target-root", str(files), "--state-dir", str(state), "--json", "--passphrase-fd", str(read_fd)]
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)
    poller = HwmPoller(proc.pid)             # drtool's own peak RSS (this interpreter is drtool)
    out, err = proc.communicate(timeout=7200)
    run = check(Run(time.perf_counter() - started, proc.returncode, poller.stop(), out, err), "drtool recover")
    report = json.loads(out.decode().strip().splitlines()[-1])
    for source in report["sources"]:
        stop = ((source.get("server") or {}).get("service") or {}).get("stop")
        if stop:
            subprocess.run(stop, capture_output=True, timeout=300, check=False)
    for path in (data, home, files, state):
        shutil.rmtree(path, ignore_errors=True)
    return run, report


def _raw(b, prefix: str, dump: Path, tree: Path | None, i: int) -> tuple[Run, dict]:
    from drtool.scratch.postgres import ScratchPostgres

    dest = b.root / f"raw-objects-{i}"
    env = {**os.environ, "RCLONE_CONFIG_SRC_TYPE": "s3", "RCLONE_CONFIG_SRC_PROVIDER": "Other",
           "RCLONE_CONFIG_SRC_ENDPOINT": b.s3.endpoint, "RCLONE_CONFIG_SRC_ACCESS_KEY_ID": b.s3.access_key,
           "RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY": b.s3.secret_key}
    parts = {}
    started = time.perf_counter()
    copy = check(timed(["rclone", "copy", f"src:bench/{prefix}", str(dest), "--transfers", "4"], env=env),
                 "rclone copy")
    parts["copy objects"] = copy.seconds
    t = time.perf_counter()
    with ScratchPostgres() as fresh:
        parts["initdb + start"] = time.perf_counter() - t
        t = time.perf_counter()
        argv = [os.path.join(fresh.bin_dir, "pg_restore"), "-h", "127.0.0.1", "-p", str(fresh.port), "-U",
                "postgres", "-j", str(RAW_JOBS), "--create", "-d", "postgres", str(dump)]
        check(timed(argv), "pg_restore")
        parts[f"pg_restore -j {RAW_JOBS}"] = time.perf_counter() - t
        if tree is not None:
            copy_dir = b.root / f"raw-files-{i}"
            copy_dir.mkdir()
            parts["cp -a tree"] = check(timed(["cp", "-a", str(tree), str(copy_dir)]), "cp -a").seconds
        total = time.perf_counter() - started
    for path in (dest, b.root / f"raw-files-{i}"):
        shutil.rmtree(path, ignore_errors=True)
    return Run(total, 0), parts


def bench_recover(b, pg, mb: int, reps: int, psql, *, files: int = 0, files_mb: int = 0) -> dict:
    """`files` > 0: the policy also holds a tree of `files` files, `files_mb` MB in all."""
    from bench.runner import make_tree

    meta = fill(pg, mb, psql)
    _log(f"recover: database {meta}")
    sources = [{"name": "siak-db", "postgres": {
        "database": "siak", "host": "127.0.0.1", "port": pg.port, "user": "postgres", "bin_dir": pg.bin_dir}}]
    tree = None
    if files:
        tree = b.root / "recover-tree"
        _log(f"recover: making the file tree ({files} files, {files_mb} MB)")
        meta["tree"] = make_tree(tree, files, files_mb)
        sources.append({"name": "siak-files", "files": {"paths": [str(tree)]}})
    prefix = "recover-drtool"
    ws = b.workspace("recover", prefix, sources)
    ws.run("backup", "p", "--json")
    kit = _make_kit(ws, b.root)
    meta["kit_scrypt_log2_n"] = _scrypt_work_factor(kit)
    dump = b.root / "siak.pgdump"
    check(timed([os.path.join(pg.bin_dir, "pg_dump"), "-Fc", "-h", "127.0.0.1", "-p", str(pg.port),
                 "-U", "postgres", "-f", str(dump), "siak"]), "pg_dump (raw side's local file)")
    drtool_runs: list[Run] = []
    raw_runs: list[Run] = []
    steps: dict[str, list[float]] = {}
    raw_parts: dict[str, list[float]] = {}
    files_checked: list[int] = []
    for i in range(reps):
        order = ("drtool", "raw") if i % 2 == 0 else ("raw", "drtool")
        for side in order:
            _log(f"recover rep {i + 1}/{reps}: {side}")
            if side == "drtool":
                run, report = _recover(b.root, kit, i)
                drtool_runs.append(run)
                for s in report["steps"]:
                    steps.setdefault(s["step"], []).append(s["duration_s"])
                for source in report["sources"]:
                    for p in source.get("phases", []):
                        steps.setdefault(f"  {p['name']}", []).append(p["duration_s"])
                    for key in ("start_s", "make_durable_s"):
                        if (source.get("server") or {}).get(key) is not None:
                            steps.setdefault(f"  {key.removesuffix('_s').replace('_', ' ')}", []).append(
                                source["server"][key])
                    if source["kind"] == "files":
                        files_checked.append(source.get("files_checked", 0))
            else:
                run, parts = _raw(b, prefix, dump, tree, i)
                raw_runs.append(run)
                for k, v in parts.items():
                    raw_parts.setdefault(k, []).append(v)
    return {"meta": meta, "dump_bytes": dump.stat().st_size, "drtool": drtool_runs, "raw": raw_runs,
            "steps": steps, "raw_parts": raw_parts, "files_checked": files_checked}


def report_lines(res: dict) -> list[str]:
    if "recover" not in res:
        return []
    r = res["recover"]
    a, b = [x.seconds for x in r["drtool"]], [x.seconds for x in r["raw"]]
    ratio = statistics.median(a) / statistics.median(b)
    mb = r["meta"]["db_bytes"] / 2**20
    med = statistics.median
    what = f"postgres ({mb:.0f} MB db, {r['dump_bytes'] / 2**20:.0f} MB dump)"
    tree = r["meta"].get("tree")
    if tree:
        what += f" + files ({tree['files']:,} files, {tree['bytes'] / 2**20:.0f} MB)"
    rss = [x.peak_rss_kib / 1024 for x in r["drtool"] if x.peak_rss_kib]
    lines = [
        f"recover {what}: drtool {med(a):.2f} s "
        f"({min(a):.2f}-{max(a):.2f}), raw {med(b):.2f} s ({min(b):.2f}-{max(b):.2f}), ratio {ratio:.3f} "
        f"(target <= 1.2: {'yes' if ratio <= 1.2 else 'NO'})",
        "  drtool steps (median s): " + "; ".join(f"{k.strip()} {med(v):.2f}" for k, v in r["steps"].items()),
        "  raw parts (median s): " + "; ".join(f"{k} {med(v):.2f}" for k, v in r["raw_parts"].items()),
    ]
    parts = r["raw_parts"]
    if "cp -a tree" in parts:
        # The raw side runs its parts one after another; drtool restores the database and the
        # files at once. A floor that overlaps them too: copy + max(database, files), per run.
        db = [x + y for x, y in zip(parts["initdb + start"], parts[f"pg_restore -j {RAW_JOBS}"], strict=True)]
        floor = [c + max(d, f) for c, d, f in zip(parts["copy objects"], db, parts["cp -a tree"], strict=True)]
        lines.append(f"  against a raw floor that also overlaps database and files (copy + max of the two): "
                     f"{med(floor):.2f} s ({min(floor):.2f}-{max(floor):.2f}), ratio {med(a) / med(floor):.3f}")
    if tree:
        lines.append(f"  entries (files and directories) drtool checked against the listing: "
                     f"{', '.join(map(str, r['files_checked']))} (tree {tree['files']} files)")
    if rss:
        n = r["meta"].get("kit_scrypt_log2_n")
        kdf = f"; opening the kit is age scrypt N=2^{n}, r=8: {2**n // 1024} MiB by itself" if n else ""
        lines.append(f"  peak RSS drtool recover {max(rss):.1f} MiB (target <= 100 MiB: "
                     f"{'yes' if max(rss) <= 100 else 'NO'}{kdf})")
    return lines
