"""The benchmark runner: prepares services and data, measures drtool vs bare restic A/B, prints and saves.

Every figure is measured side by side in the same run, alternating which side goes first per
repetition, and reported as the median with min-max spread. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bench.procs import Run, check, restic_summary, timed, timed_pipe

HOST = "drtool-bench"
PASSWORD = "bench-Repo-Pw-" + os.urandom(6).hex()


def log(msg: str) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"[{time.strftime('%H:%M:%S')} load {load}] {msg}", file=sys.stderr, flush=True)


def drtool_argv() -> list[str]:
    """The installed console script itself (not a pyenv shim, which adds a bash start-up)."""
    script = Path(sysconfig.get_path("scripts")) / "drtool"
    return [str(script)] if script.exists() else [sys.executable, "-m", "drtool"]


# ------------------------------------------------------------------ workspaces

@dataclass
class Bench:
    root: Path
    s3: object
    pwfile: Path
    raw: dict = field(default_factory=dict)

    def repo_url(self, prefix: str) -> str:
        return self.s3.repo_url("bench", prefix)  # type: ignore[attr-defined]

    # -- drtool side
    def workspace(self, name: str, prefix: str, sources: list[dict]) -> Workspace:
        ws = self.root / "ws" / name
        (ws / "policies").mkdir(parents=True, exist_ok=True)
        (ws / "playbooks").mkdir(exist_ok=True)
        cfg = {
            "state_dir": str(ws / "state"),
            "hostname": HOST,
            "repositories": {"offsite": {
                "url": self.repo_url(prefix),
                "password": {"file": str(self.pwfile)},
                "s3": {"access_key_id": {"env": "DRT_S3_KEY"}, "secret_access_key": {"env": "DRT_S3_SECRET"}},
            }},
        }
        (ws / "drtool.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (ws / "policies" / "p.yaml").write_text(yaml.safe_dump(
            {"name": "p", "repository": "offsite", "sources": sources}, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_") and k != "DRTOOL_CONFIG"}
        env.update({"DRT_S3_KEY": self.s3.access_key, "DRT_S3_SECRET": self.s3.secret_key})  # type: ignore[attr-defined]
        w = Workspace(ws / "drtool.yaml", env)
        check(timed(w.argv("init-repo", "offsite"), env=env), f"drtool init-repo ({name})")
        return w

    # -- bare side
    def bare(self, name: str, prefix: str) -> Bare:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
        env.update({"RESTIC_REPOSITORY": self.repo_url(prefix), "RESTIC_PASSWORD_FILE": str(self.pwfile),
                    "AWS_ACCESS_KEY_ID": self.s3.access_key,  # type: ignore[attr-defined]
                    "AWS_SECRET_ACCESS_KEY": self.s3.secret_key})  # type: ignore[attr-defined]
        b = Bare(self.root / "bare-cache" / name, env)
        check(timed(b.argv("init"), env=env), f"restic init ({name})")
        return b


@dataclass
class Workspace:
    config: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [*drtool_argv(), "-c", str(self.config), *args]

    def run(self, *args: str, rss: bool = True) -> Run:
        return check(timed(self.argv(*args), env=self.env, rss=rss), "drtool " + " ".join(args))


@dataclass
class Bare:
    cache: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return ["restic", "--cache-dir", str(self.cache), *args]

    def run(self, *args: str) -> Run:
        return check(timed(self.argv(*args), env=self.env), "restic " + " ".join(args))


def alternate(reps: int, a, b) -> tuple[list[Run], list[Run]]:
    """Run a() and b() `reps` times, A first on even repetitions, B first on odd ones."""
    ra: list[Run] = []
    rb: list[Run] = []
    for i in range(reps):
        if i % 2 == 0:
            ra.append(a(i))
            rb.append(b(i))
        else:
            rb.append(b(i))
            ra.append(a(i))
    return ra, rb


# ------------------------------------------------------------------ data

def psql(pg, sql: str, db: str = "postgres") -> str:
    argv = [os.path.join(pg.bin_dir, "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
            "-d", db, "-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql]
    return check(timed(argv), "psql").stdout.decode().strip()


def fill_postgres(pg, mb: int) -> dict:
    """pgbench tables (~60 %) plus a wide text table with an index (~40 %)."""
    psql(pg, "create database bench")
    scale = max(1, round(mb * 0.6 / 15))
    check(timed([os.path.join(pg.bin_dir, "pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                 "-p", str(pg.port), "-U", "postgres", "bench"]), "pgbench -i")
    rows = max(1000, int(mb * 0.4 * 2**20 / 520))
    psql(pg, "create table documents (id bigint primary key, kind text, title text, body text, created timestamptz);"
             "insert into documents select g, (array['surat','ktp','akta','kk'])[1 + g % 4], "
             "'Dokumen ' || g, repeat(md5(g::text), 12), now() - g * interval '1 minute' "
             f"from generate_series(1, {rows}) g;"
             "create index on documents (kind, created);", db="bench")
    psql(pg, "vacuum analyze", db="bench")
    size = int(psql(pg, "select pg_database_size('bench')"))
    return {"pgbench_scale": scale, "documents_rows": rows, "db_bytes": size}


def make_tree(root: Path, files: int, total_mb: int) -> dict:
    """`files` files of random (incompressible) bytes, 100 per directory, sizes skewed, `total_mb` in all."""
    import random
    rnd = random.Random(7)
    weights = [rnd.paretovariate(1.5) for _ in range(files)]
    scale = total_mb * 2**20 / sum(weights)
    total = 0
    for i, w in enumerate(weights):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = max(1, int(w * scale))
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(size))
        total += size
    return {"files": files, "bytes": total}


# ------------------------------------------------------------------ scenarios

def bench_postgres(b: Bench, pg, reps: int) -> dict:
    ws = b.workspace("pg", "pg-drtool", [{"name": "db", "postgres": {
        "database": "bench", "host": "127.0.0.1", "port": pg.port, "user": "postgres", "bin_dir": pg.bin_dir}}])
    bare = b.bare("pg", "pg-bare")
    pg_env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "postgres"}
    dump = [os.path.join(pg.bin_dir, "pg_dump"), "-Fc", "-Z0", "-h", "127.0.0.1", "-p", str(pg.port),
            "-U", "postgres", "--dbname=bench"]
    consumer = bare.argv("backup", "--json", "--host", HOST, "--stdin", "--stdin-filename", "bench.pgdump")

    def a(i: int) -> Run:
        log(f"pg backup drtool #{i}")
        return ws.run("backup", "p", "--json")

    def bb(i: int) -> Run:
        log(f"pg backup bare #{i}")
        return check(timed_pipe(dump, consumer, env_producer=pg_env, env_consumer=bare.env), "pg_dump | restic")

    # One first run of each side, reported apart: drtool's first backup on a machine also learns
    # the key hint, makes the machine key and stores the configuration bundle, once; a nightly
    # run is what the ratio is about.
    first = (a(-1), bb(-1))
    ra, rb = alternate(reps, a, bb)
    dump_bytes = restic_summary(rb[0].stdout).get("total_bytes_processed", 0)
    return {"drtool": ra, "bare": rb, "bytes": dump_bytes, "first": first}


def bench_files(b: Bench, tree: Path, tree_bytes: int, reps: int) -> dict:
    src = [{"name": "files", "files": {"paths": [str(tree)]}}]
    wss = [b.workspace(f"files{i}", f"files-drtool-{i}", src) for i in range(reps)]
    bares = [b.bare(f"files{i}", f"files-bare-{i}") for i in range(reps)]
    back = ["backup", "--json", "--host", HOST, "--", str(tree)]

    def run_pair(label: str) -> tuple[list[Run], list[Run]]:
        def a(i: int) -> Run:
            log(f"files {label} drtool #{i}")
            return wss[i].run("backup", "p", "--json")

        def bb(i: int) -> Run:
            log(f"files {label} bare #{i}")
            return bares[i].run(*back)
        return alternate(reps, a, bb)

    first = run_pair("first")
    second = run_pair("second")

    def ra(i: int) -> Run:
        target = b.root / f"restore-drtool-{i}"
        log(f"files restore drtool #{i}")
        r = wss[i].run("restore", "p", "--source", "files", "--target", str(target), "--json")
        shutil.rmtree(target, ignore_errors=True)
        return r

    def rb(i: int) -> Run:
        target = b.root / f"restore-bare-{i}"
        log(f"files restore bare #{i}")
        r = bares[i].run("restore", "latest", "--target", str(target), "--verify")   # drtool verifies too
        shutil.rmtree(target, ignore_errors=True)
        return r

    restore = alternate(reps, ra, rb)
    return {"first": first, "second": second, "restore": restore, "bytes": tree_bytes}


def bench_raw_limits(b: Bench, tree: Path, tree_bytes: int) -> dict:
    """The machine's limits in this run: restic to a local-disk repository; sequential read of the tree."""
    repo = b.root / "local-repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update({"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(b.pwfile)})
    cache = str(b.root / "bare-cache" / "local")
    check(timed(["restic", "--cache-dir", cache, "init"], env=env), "restic init local")
    log("raw: restic backup to a local repository")
    local = check(timed(["restic", "--cache-dir", cache, "backup", "--json", "--host", HOST, "--", str(tree)],
                        env=env), "restic backup local")
    log("raw: sequential read of the tree")
    start = time.perf_counter()
    buf = bytearray(1 << 20)
    for dirpath, _dirs, names in os.walk(tree):
        for n in names:
            with open(os.path.join(dirpath, n), "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    read_s = time.perf_counter() - start
    return {"restic_local_backup_s": local.seconds, "read_s": read_s, "bytes": tree_bytes}


def bench_startup(b: Bench, ws_config: Path, env: dict[str, str], reps: int) -> dict:
    n = max(5, reps * 2)
    out: dict[str, list[float]] = {"help": [], "validate": [], "python_floor": []}
    for i in range(n):
        out["help"].append(check(timed([*drtool_argv(), "--help"], env=env), "drtool --help").seconds)
        out["validate"].append(check(timed([*drtool_argv(), "-c", str(ws_config), "validate"], env=env),
                                     "drtool validate").seconds)
        out["python_floor"].append(check(timed([sys.executable, "-c", "pass"], env=env), "python").seconds)
    return out


# ------------------------------------------------------------------ report

def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "-"


def secs(runs: list[Run]) -> list[float]:
    return [r.seconds for r in runs]


def build_rows(res: dict) -> list[dict]:
    rows: list[dict] = []

    def ratio_row(name: str, a: list[float], bare: list[float], nbytes: int, target: float) -> None:
        ma, mb = med(a), med(bare)
        ratio = ma / mb if mb else float("nan")
        rows.append({"metric": name, "drtool_s": ma, "bare_s": mb, "ratio": ratio,
                     "drtool_spread": spread(a), "bare_spread": spread(bare),
                     "drtool_MBps": nbytes / 2**20 / ma if nbytes and ma else None,
                     "bare_MBps": nbytes / 2**20 / mb if nbytes and mb else None,
                     "target": f"<= {target:.2f}", "met": ratio <= target})

    # Issue 16's targets: a fixed overhead of at most 1.0 s, so 300 MB <= 1.25x and 1 GB <= 1.08x for
    # PostgreSQL; files first/unchanged <= 1.15x; a verified files restore <= 1.05x.
    if "postgres" in res:
        p = res["postgres"]
        target = 1.25 if p["bytes"] < 600 * 2**20 else 1.08
        ratio_row("backup postgres", secs(p["drtool"]), secs(p["bare"]), p["bytes"], target)
    if "files" in res:
        f = res["files"]
        ratio_row("backup files, first", secs(f["first"][0]), secs(f["first"][1]), f["bytes"], 1.15)
        ratio_row("backup files, unchanged", secs(f["second"][0]), secs(f["second"][1]), f["bytes"], 1.15)
        ratio_row("restore files (verified)", secs(f["restore"][0]), secs(f["restore"][1]), f["bytes"], 1.05)
    return rows


def print_report(res: dict, rows: list[dict]) -> str:
    lines = []
    lines.append(f"{'metric':<26}{'drtool s':>9}{'bare s':>9}{'ratio':>7}  {'drtool min-max':<15}"
                 f"{'bare min-max':<15}{'drt MB/s':>9}{'bare MB/s':>10}  target   ok")
    for r in rows:
        mbps = (f"{r['drtool_MBps']:>9.1f}{r['bare_MBps']:>10.1f}" if r["drtool_MBps"] else f"{'-':>9}{'-':>10}")
        lines.append(f"{r['metric']:<26}{r['drtool_s']:>9.2f}{r['bare_s']:>9.2f}{r['ratio']:>7.3f}  "
                     f"{r['drtool_spread']:<15}{r['bare_spread']:<15}{mbps}  {r['target']:<8} "
                     f"{'yes' if r['met'] else 'NO'}")
    for r in rows:
        over = r["drtool_s"] - r["bare_s"]
        lines.append(f"  {r['metric']}: drtool's overhead {over:+.2f} s (target <= 1.00 s: {'yes' if over <= 1.0 else 'NO'})")
    if "postgres" in res and res["postgres"].get("first"):
        da, db = res["postgres"]["first"]
        lines.append(f"  backup postgres, first run on this machine (not in the ratio): drtool {da.seconds:.2f} s, "
                     f"bare {db.seconds:.2f} s")
    if "rss" in res:
        for k, v in res["rss"].items():
            mib = v / 1024 if v else float("nan")
            lines.append(f"peak RSS drtool, {k:<19} {mib:>7.1f} MiB{'':<41}<= 100 MiB {'yes' if mib <= 100 else 'NO'}")
    if "startup" in res:
        s = res["startup"]
        for k, target in (("help", 0.15), ("validate", 0.30)):     # issue 16's targets
            m = med(s[k])
            lines.append(f"cold start drtool {k:<9}{m:>9.3f} s  (min-max {spread(s[k])}; python -c pass "
                         f"{med(s['python_floor']):.3f} s)   <= {target:.2f} s {'yes' if m <= target else 'NO'}")
    if "raw" in res:
        r = res["raw"]
        mb = r["bytes"] / 2**20
        lines.append(f"raw limits: restic -> local-disk repo {mb / r['restic_local_backup_s']:.1f} MB/s; "
                     f"sequential read of the tree {mb / r['read_s']:.1f} MB/s (page cache warm)")
    text = "\n".join(lines)
    print(text)
    return text


def to_json(obj):
    if isinstance(obj, Run):
        d = {"seconds": obj.seconds, "peak_rss_kib": obj.peak_rss_kib}
        if hasattr(obj, "phases"):
            d["phases"] = obj.phases
        return d
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


# ------------------------------------------------------------------ main

SECTIONS = ("pgbackup", "files", "startup", "pgrestore", "scheduler", "recover", "fingerprint", "locks", "fleet",
            "streamcheck", "rss")
LARGE = ("rss",)             # run only when named in --only (issue 16's large cases: GBs of data, many minutes)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small data, 3 repetitions (about 2 minutes)")
    ap.add_argument("--pg-mb", type=int, help="approximate database size in MB (default 300; quick 40)")
    ap.add_argument("--files", type=int, help="files in the tree (default 20000; quick 2000)")
    ap.add_argument("--file-mb", type=int, help="total MB of the tree (default 400; quick 40)")
    ap.add_argument("--reps", type=int, help="A/B repetitions (default 3)")
    ap.add_argument("--only", default="",
                    help="comma list of: " + ",".join(SECTIONS) + " (default: all but " + ",".join(LARGE) + ")")
    ap.add_argument("--restore-mb", type=int, help="database size for pgrestore in MB (default 300; quick 40)")
    ap.add_argument("--recover-mb", type=int, help="database size for recover in MB (default 300; quick 40)")
    ap.add_argument("--recover-files", type=int, help="files in recover's files source (default 20000; quick 2000; "
                    "0: a PostgreSQL-only policy)")
    ap.add_argument("--recover-files-mb", type=int, help="total MB of recover's files source (default 400; quick 40)")
    ap.add_argument("--rss-stream-gb", help="rss: database sizes in GB, a comma list (default 1,2,4,8; "
                    "quick 0.1,0.2; empty: none)")
    ap.add_argument("--rss-files", help="rss: file counts, a comma list (default 20000,50000,100000,200000; "
                    "quick 2000,4000; empty: none)")
    ap.add_argument("--policies", type=int, default=1000, help="policies for the scheduler scale run")
    ap.add_argument("--fleet-sites", default="100,500",
                    help="simulated sites for the fleet section, a comma list (default 100,500; quick 20)")
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU window of the real daemon")
    ap.add_argument("--no-jobs-scaling", action="store_true", help="skip the pgrestore -j 1 vs -j 2 runs")
    ap.add_argument("--lock-objects", default="", help="repository sizes for the locks section, e.g. 1000,10000 "
                    "(default 1000,10000; quick 200)")
    ap.add_argument("--out", default="bench/results/latest.json")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--workdir", default="/var/tmp", help="where the temporary working directory goes")
    ns = ap.parse_args(argv)
    q = ns.quick
    ns.pg_mb = ns.pg_mb or (40 if q else 300)
    ns.files = ns.files or (2000 if q else 20000)
    ns.file_mb = ns.file_mb or (40 if q else 400)
    ns.reps = ns.reps or 3
    ns.restore_mb = ns.restore_mb or (40 if q else 300)
    ns.recover_mb = ns.recover_mb or (40 if q else 300)
    ns.recover_files = (2000 if q else 20000) if ns.recover_files is None else ns.recover_files
    ns.recover_files_mb = ns.recover_files_mb or (40 if q else 400)
    ns.lock_objects = [int(x) for x in ns.lock_objects.split(",") if x.strip()] or ([200] if q else [1000, 10000])
    from bench.rss import parse_counts, parse_gb
    ns.rss_stream_gb = parse_gb(("0.1,0.2" if q else "1,2,4,8") if ns.rss_stream_gb is None else ns.rss_stream_gb)
    ns.rss_files = parse_counts(("2000,4000" if q else "20000,50000,100000,200000") if ns.rss_files is None
                                else ns.rss_files)
    ns.only = [x.strip() for x in ns.only.split(",") if x.strip()] or [s for s in SECTIONS if s not in LARGE]
    unknown = set(ns.only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown --only section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    if "rss" in ns.only:
        from bench.rss import disk_refusal
        refusal = disk_refusal(ns.rss_stream_gb, ns.rss_files, ns.workdir)
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
    from drtool.scratch.postgres import ScratchPostgres
    from drtool.storage.local_s3 import start_local_s3

    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="drtool-bench-", dir=ns.workdir))
    os.chmod(root, 0o755)   # ScratchPostgres (OS user postgres) is created elsewhere; tree read by root only
    pwfile = root / "repo.pass"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, PASSWORD.encode() + b"\n")
    os.close(fd)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(ns),
            "cpus": os.cpu_count(), "platform": platform.platform(), "load_start": os.getloadavg(),
            "restic": subprocess.run(["restic", "version"], check=False, capture_output=True,
                                     text=True).stdout.strip()}
    res: dict = {"meta": meta}
    s3 = start_local_s3(root / "s3", log_path=root / "rclone.log")
    try:
        s3.make_bucket("bench")
        b = Bench(root, s3, pwfile)
        from bench import extra
        if {"pgbackup", "pgrestore", "recover", "fingerprint", "streamcheck"} & set(ns.only) or (
                "rss" in ns.only and ns.rss_stream_gb):
            with ScratchPostgres() as pg:
                if {"pgbackup", "fingerprint", "streamcheck"} & set(ns.only):
                    log(f"filling PostgreSQL (~{ns.pg_mb} MB)")
                    meta["postgres"] = fill_postgres(pg, ns.pg_mb)
                    log(f"database: {meta['postgres']}")
                if "pgbackup" in ns.only:
                    res["postgres"] = bench_postgres(b, pg, ns.reps)
                if "fingerprint" in ns.only:
                    from bench.fingerprint import bench_fingerprint
                    res["fingerprint"] = bench_fingerprint(b, pg, ns.reps)
                if "streamcheck" in ns.only:
                    from bench.streamcheck import bench_streamcheck
                    log("stream check: pg_dump -> restic with the archive check and without (os.splice)")
                    res["streamcheck"] = bench_streamcheck(b, pg, ns.reps)
                if "pgrestore" in ns.only:
                    log(f"filling PostgreSQL database drill (~{ns.restore_mb} MB, several indexes)")
                    meta["pgrestore_db"] = extra.fill_restore_db(pg, ns.restore_mb, psql)
                    log(f"database: {meta['pgrestore_db']}")
                    res["pgrestore"] = extra.bench_pgrestore(b, pg, ns.reps, psql,
                                                             jobs_scaling=not ns.no_jobs_scaling)
                if "recover" in ns.only:
                    from bench.recover import bench_recover
                    log(f"recover: filling PostgreSQL database siak (~{ns.recover_mb} MB)")
                    res["recover"] = bench_recover(b, pg, ns.recover_mb, ns.reps, psql,
                                                   files=ns.recover_files, files_mb=ns.recover_files_mb)
                if "rss" in ns.only and ns.rss_stream_gb:
                    from bench.rss import bench_streams
                    res.setdefault("rss_large", {"cases": []})["cases"] += bench_streams(b, pg, psql, ns.rss_stream_gb)
        if "files" in ns.only:
            log(f"making the file tree ({ns.files} files, {ns.file_mb} MB)")
            tree = root / "tree"
            meta["tree"] = make_tree(tree, ns.files, ns.file_mb)
            res["files"] = bench_files(b, tree, meta["tree"]["bytes"], ns.reps)
            res["raw"] = bench_raw_limits(b, tree, meta["tree"]["bytes"])
        if "rss" in ns.only and ns.rss_files:
            from bench.rss import bench_files as rss_files
            res.setdefault("rss_large", {"cases": []})["cases"] += rss_files(b, ns.rss_files)
        if "startup" in ns.only:
            ws0 = b.root / "ws" / "files0" / "drtool.yaml"
            if not ws0.exists():
                b.workspace("files0", "files-drtool-0", [{"name": "files", "files": {"paths": [str(root)]}}])
            env = {**os.environ, "DRT_S3_KEY": s3.access_key, "DRT_S3_SECRET": s3.secret_key}
            log("start-up")
            res["startup"] = bench_startup(b, ws0, env, ns.reps)
        rss = {}
        if "postgres" in res:
            rss["streaming pg dump"] = max(r.peak_rss_kib or 0 for r in res["postgres"]["drtool"])
        if "files" in res:
            rss[f"{ns.files} files first"] = max(r.peak_rss_kib or 0 for r in res["files"]["first"][0])
            rss[f"{ns.files} files unchanged"] = max(r.peak_rss_kib or 0 for r in res["files"]["second"][0])
            rss["files restore"] = max(r.peak_rss_kib or 0 for r in res["files"]["restore"][0])
        if rss:
            res["rss"] = rss
        if "scheduler" in ns.only:
            log(f"scheduler scale: {ns.policies} policies")
            res["scheduler"] = extra.bench_scheduler(root, pwfile, ns.policies, idle_s=ns.idle_seconds)
        if "locks" in ns.only:
            from bench.locks import bench_locks
            res["locks"] = bench_locks(root, ns.lock_objects)
        if "fleet" in ns.only:
            from bench.fleet import bench_fleet
            sizes = [20] if ns.quick and ns.fleet_sites == "100,500" else [int(x) for x in ns.fleet_sites.split(",")]
            log(f"fleet status: {', '.join(map(str, sizes))} simulated sites")
            res["fleet"] = bench_fleet(root, sizes)
    finally:
        s3.stop()
        if not ns.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta["load_end"] = os.getloadavg()
    meta["elapsed_s"] = time.time() - started
    rows = build_rows(res)
    print(f"\ndrtool bench {meta['date']}  cpus={meta['cpus']}  load avg start "
          f"{' '.join(f'{x:.2f}' for x in meta['load_start'])} end "
          f"{' '.join(f'{x:.2f}' for x in meta['load_end'])}  elapsed {meta['elapsed_s']:.0f} s")
    print(f"sections {','.join(ns.only)}; postgres {meta.get('postgres')}; tree {meta.get('tree')}; "
          f"pgrestore db {meta.get('pgrestore_db')}; reps {ns.reps}")
    table = print_report(res, rows)
    from bench import fingerprint
    from bench.extra import report_lines
    from bench.locks import report_lines as lock_lines
    from bench.recover import report_lines as recover_lines
    from bench.rss import report_lines as rss_lines
    from bench.fleet import report_lines as fleet_lines
    from bench.streamcheck import report_lines as streamcheck_lines
    more = report_lines(res) + recover_lines(res) + fingerprint.report_lines(res) + lock_lines(res) + (
        fleet_lines(res["fleet"]) if "fleet" in res else []) + streamcheck_lines(res) + rss_lines(res)
    if more:
        print("\n".join(more))
        table += "\n" + "\n".join(more)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "table": table,
                               "raw": to_json({k: v for k, v in res.items() if k != "meta"})}, indent=2))
    print(f"raw figures: {out}")
    return 0
