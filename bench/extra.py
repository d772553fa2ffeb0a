"""Issue 7 items 4 and 7: PostgreSQL restore for drills, and scheduler scale (1,000 policies)."""

from __future__ import annotations

import os
import socket
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from bench.procs import Run, check, timed, timed_pipe


def _log(msg: str) -> None:
    from bench.runner import log
    log(msg)


# ------------------------------------------------------------------ PostgreSQL restore for drills

def fill_restore_db(pg, mb: int, psql) -> dict:
    """Database `drill`: pgbench tables (~55 %) and a wide table with a primary key and 3 indexes (~45 %)."""
    psql(pg, "create database drill")
    scale = max(1, round(mb * 0.55 / 15))
    check(timed([os.path.join(pg.bin_dir, "pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                 "-p", str(pg.port), "-U", "postgres", "drill"]), "pgbench -i")
    rows = max(1000, int(mb * 0.45 * 2**20 / 600))
    psql(pg, "create table documents (id bigint primary key, kind text, title text, owner text, body text, "
             "created timestamptz);"
             "insert into documents select g, (array['surat','ktp','akta','kk'])[1 + g % 4], "
             "'Dokumen ' || md5((g * 7)::text), 'user' || (g % 5000), repeat(md5(g::text), 10), "
             "now() - g * interval '1 minute' "
             f"from generate_series(1, {rows}) g;"
             "create index on documents (kind, created);"
             "create index on documents (title);"
             "create index on documents (owner, id);"
             "create index on pgbench_accounts (bid, abalance);", db="drill")
    psql(pg, "vacuum analyze", db="drill")
    size = int(psql(pg, "select pg_database_size('drill')"))
    return {"pgbench_scale": scale, "documents_rows": rows, "db_bytes": size,
            "indexes": int(psql(pg, "select count(*) from pg_indexes where schemaname = 'public'", db="drill"))}


def bench_pgrestore(b, pg, reps: int, psql, jobs_scaling: bool = True) -> dict:
    """drtool's drill restore path (PostgresDatabase.restore via ResticStreamReader) vs
    `restic dump | pg_restore -d` into a fresh database of the same ScratchPostgres, alternating."""
    from drtool.actions.common import open_repo
    from drtool.actions.restore import find_set
    from drtool.config import load_settings
    from drtool.engine.reader import ResticStreamReader
    from drtool.execute import LocalRunner
    from drtool.sources import database_source

    ws = b.workspace("pgr", "pgr-drtool", [{"name": "db", "postgres": {
        "database": "drill", "host": "127.0.0.1", "port": pg.port, "user": "postgres", "bin_dir": pg.bin_dir}}])
    _log("pgrestore: drtool backup of database drill")
    ws.run("backup", "p", "--json")
    os.environ.update({k: v for k, v in ws.env.items() if k.startswith("DRT_S3_")})
    settings = load_settings(str(ws.config))
    policy = settings.policies["p"]
    source = policy.source("db")
    handle = open_repo(settings, policy.repository)
    chosen = find_set(handle, policy, source, "latest", host=settings.config.hostname or socket.gethostname())
    streams = [n for n in chosen.streams if n.endswith(".pgdump")]
    assert len(streams) == 1, chosen.streams
    stream = streams[0]
    snap = chosen.streams[stream].id
    db = database_source(source, LocalRunner())

    bare_env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
    bare_env.update({"RESTIC_REPOSITORY": b.repo_url("pgr-drtool"), "RESTIC_PASSWORD_FILE": str(b.pwfile),
                     "AWS_ACCESS_KEY_ID": b.s3.access_key, "AWS_SECRET_ACCESS_KEY": b.s3.secret_key})
    cache = str(b.root / "bare-cache" / "pgr")
    pg_env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "postgres"}
    counter = [0]

    def fresh() -> str:
        counter[0] += 1
        name = f"r{counter[0]}"
        psql(pg, f"drop database if exists {name}")
        return name

    def drop(name: str) -> None:
        psql(pg, f"drop database if exists {name}")
        psql(pg, "checkpoint")

    def drtool_side(strategy: str, jobs: int | None):
        def run(i: int) -> Run:
            name = fresh()
            _log(f"pgrestore drtool strategy={strategy} jobs={jobs} #{i}")
            target = pg.target()
            target.database = name
            # a fresh reader each time, as a drill makes one; the drill knows the stream sizes from
            # fingerprint.json, which it reads in its own earlier phase
            reader = ResticStreamReader(handle.restic, chosen.streams, sizes=sizes)
            start = time.perf_counter()
            result = db.restore(reader, target, strategy=strategy, jobs=jobs)
            elapsed = time.perf_counter() - start
            run_ = Run(elapsed, 0)
            run_.phases = [(p.name, p.duration_s) for p in result.phases]  # type: ignore[attr-defined]
            run_.bytes = result.bytes  # type: ignore[attr-defined]
            drop(name)
            return run_
        return run

    def bare_side(i: int) -> Run:
        name = fresh()
        psql(pg, f"create database {name} template template0")
        _log(f"pgrestore bare restic dump | pg_restore #{i}")
        r = check(timed_pipe(["restic", "--cache-dir", cache, "dump", snap, f"/{stream}"],
                             [os.path.join(pg.bin_dir, "pg_restore"), "-h", "127.0.0.1", "-p", str(pg.port),
                              "-U", "postgres", "-d", name, "--no-owner"],
                             env_producer=bare_env, env_consumer=pg_env), "restic dump | pg_restore")
        drop(name)
        return r

    from drtool.actions.restore import read_fingerprint
    sizes = read_fingerprint(handle, chosen).get("stream_bytes")

    from bench.runner import alternate
    # one unmeasured warm-up each (restic caches, page cache of the dump's packs)
    bare_side(-1)
    drtool_side("auto", None)(-1)
    ra, rb = alternate(reps, drtool_side("auto", None), bare_side)
    out = {"drtool": ra, "bare": rb, "stream": stream, "bytes": getattr(ra[0], "bytes", 0),
           "default_jobs": min(os.cpu_count() or 1, 8)}
    if jobs_scaling:
        j1, j2 = alternate(max(2, reps - 1), drtool_side("overlap", 1), drtool_side("overlap", 2))
        out["jobs1"], out["jobs2"] = j1, j2
        st, _ = alternate(max(2, reps - 1), drtool_side("stream", None), lambda i: Run(0.0, 0))
        out["strategy_stream"] = st
    return out


# ------------------------------------------------------------------ scheduler scale

def _schedules(n: int, now: datetime) -> list[dict]:
    """`n` policy specs with schedules none of which has a slot in the next 2 hours from `now` (UTC)."""
    specs = []
    hours = [(now.hour + 3 + k) % 24 for k in range(18)]        # 3..20 hours away
    intervals = []
    for minutes in (360, 480, 720, 1440, 2880):
        period = minutes * 60
        nxt = (int(now.timestamp()) // period + 1) * period
        if nxt - now.timestamp() > 2 * 3600:
            intervals.append(minutes)
    intervals = intervals or [10080 * 4]
    for i in range(n):
        h = hours[i % len(hours)]
        m = (i * 7) % 60
        kind = i % 4
        if kind == 0:
            sched = f"daily {h:02d}:{m:02d}"
        elif kind == 1:
            sched = f"every {intervals[i % len(intervals)]}m"
        elif kind == 2:
            sched = f"{m} {h} * * *"
        else:
            sched = f"{m} {h} * * {1 + i % 5}"
        spec: dict = {"schedule": sched}
        if i % 3 == 0:
            spec["forget_schedule"] = f"{(m + 30) % 60} {hours[(i + 5) % len(hours)]} * * 0"
        if i % 10 == 0:
            spec["check"] = {"schedule": f"{m} {hours[(i + 9) % len(hours)]} 1 * *"}
        specs.append(spec)
    return specs


def make_policies(root: Path, n: int, now: datetime, pwfile: Path) -> Path:
    ws = root / "sched"
    (ws / "policies").mkdir(parents=True, exist_ok=True)
    (ws / "data").mkdir(exist_ok=True)
    (ws / "data" / "a.txt").write_text("x\n")
    repo = ws / "repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update({"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(pwfile)})
    check(timed(["restic", "--cache-dir", str(root / "bare-cache" / "sched"), "init"], env=env), "restic init sched")
    cfg = {"state_dir": str(ws / "state"), "hostname": "drtool-bench",
           "repositories": {"local": {"url": str(repo), "password": {"file": str(pwfile)}}}}
    (ws / "drtool.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for i, spec in enumerate(_schedules(n, now)):
        pol = {"name": f"p{i:04d}", "repository": "local", **spec,
               "sources": [{"name": "files", "files": {"paths": [str(ws / "data")]}}]}
        (ws / "policies" / f"p{i:04d}.yaml").write_text(yaml.safe_dump(pol, sort_keys=False))
    return ws / "drtool.yaml"


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime


def bench_scheduler(root: Path, pwfile: Path, n: int = 1000, ticks: int = 200, idle_s: float = 20.0,
                    warmup_s: float = 5.0) -> dict:
    from drtool.actions.daemon import Daemon
    from drtool.config import load_settings
    from drtool.schedule_math import due_jobs

    now = datetime.now(UTC).replace(microsecond=0)
    config = make_policies(root, n, now, pwfile)
    t0 = time.perf_counter()
    settings = load_settings(str(config))
    load_s = time.perf_counter() - t0
    calls: list[str] = []
    noop = {k: (lambda req, k=k: calls.append(k)) for k in ("backup", "forget", "check", "drill")}
    fixed = now
    t0 = time.perf_counter()
    daemon = Daemon(settings, dispatch=noop, clock=lambda: fixed, tick_seconds=1.0)
    build_s = time.perf_counter() - t0
    _log(f"scheduler: {len(settings.policies)} policies, {len(daemon.jobs)} jobs")
    t0 = time.perf_counter()
    first = daemon.tick(now)
    first_tick_s = time.perf_counter() - t0
    tick_s = []
    for k in range(ticks):
        t = now + timedelta(seconds=k)
        s = time.perf_counter()
        daemon.tick(t)
        tick_s.append(time.perf_counter() - s)
    refs = daemon.last_runs(now)
    jobs = [i.job for i in daemon.jobs]
    due_s = []
    for k in range(ticks):
        s = time.perf_counter()
        due_jobs(jobs, refs, now + timedelta(seconds=k), daemon.tz)
        due_s.append(time.perf_counter() - s)
    last_runs_s = []
    for _ in range(max(20, ticks // 10)):
        s = time.perf_counter()
        daemon.last_runs(now)
        last_runs_s.append(time.perf_counter() - s)
    daemon.shutdown() if hasattr(daemon, "shutdown") else None
    out = {"policies": len(settings.policies), "jobs": len(jobs), "started_first_tick": len(first),
           "load_settings_s": load_s, "daemon_init_s": build_s, "first_tick_s": first_tick_s,
           "tick_s": tick_s, "due_jobs_s": due_s, "last_runs_s": last_runs_s, "dispatched": len(calls)}

    # (b) a real `drtool daemon` process, idle
    from bench.runner import drtool_argv
    env = {k: v for k, v in os.environ.items() if k != "DRTOOL_CONFIG"}
    logf = open(root / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*drtool_argv(), "-v", "-c", str(config), "daemon"], env=env, stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    t_spawn = time.monotonic()
    try:
        _log(f"scheduler: real daemon pid {proc.pid}, warm-up {warmup_s:.0f} s then idle {idle_s:.0f} s")
        # wait until the daemon has loaded its policies and run its first tick (log line), then warm up
        deadline = time.monotonic() + 600
        while b"job(s), timezone" not in (root / "daemon.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["daemon_ready_s"] = time.monotonic() - t_spawn
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise RuntimeError(f"drtool daemon exited {proc.returncode}: "
                               f"{(root / 'daemon.log').read_text()[-2000:]}")
        hz = os.sysconf("SC_CLK_TCK")
        c0, w0 = _cpu_ticks(proc.pid), time.monotonic()
        time.sleep(idle_s)
        c1, w1 = _cpu_ticks(proc.pid), time.monotonic()
        out["idle_cpu_pct"] = 100.0 * (c1 - c0) / hz / (w1 - w0)
        out["idle_window_s"] = w1 - w0
        out["startup_cpu_s"] = c0 / hz
        with open(f"/proc/{proc.pid}/status") as fh:
            out["daemon_rss_kib"] = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        logf.close()
    started = [line for line in (root / "daemon.log").read_text(errors="replace").splitlines() if "starting " in line]
    out["daemon_jobs_started"] = len(started)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report_lines(res: dict) -> list[str]:
    lines = []
    if "pgrestore" in res:
        p = res["pgrestore"]
        a, b = [r.seconds for r in p["drtool"]], [r.seconds for r in p["bare"]]
        ratio = med(a) / med(b)
        mb = (p["bytes"] or 0) / 2**20
        lines.append(f"{'restore postgres (drill)':<26}{med(a):>9.2f}{med(b):>9.2f}{ratio:>7.3f}  "
                     f"{min(a):.2f}-{max(a):.2f}{'':<6}{min(b):.2f}-{max(b):.2f}{'':<6}"
                     f"{mb / med(a):>9.1f}{mb / med(b):>10.1f}  <= 0.85   {'yes' if ratio <= 0.85 else 'NO'}")
        phases: dict[str, list[float]] = {}
        for r in p["drtool"]:
            for name, d in r.phases:
                phases.setdefault(name, []).append(d)
        other = [r.seconds - sum(d for _, d in r.phases) for r in p["drtool"]]
        phases["outside phases (checks, restic stats, create db)"] = other
        lines.append("  drtool phases (median s): " + "; ".join(f"{k} {med(v):.2f}" for k, v in phases.items())
                     + f"  [dump {mb:.0f} MB, default -j {p['default_jobs']}]")
        if "jobs1" in p:
            j1, j2 = [r.seconds for r in p["jobs1"]], [r.seconds for r in p["jobs2"]]
            lines.append(f"  overlap -j 1 {med(j1):.2f} s ({min(j1):.2f}-{max(j1):.2f}), -j 2 {med(j2):.2f} s "
                         f"({min(j2):.2f}-{max(j2):.2f}): -j2/-j1 {med(j2) / med(j1):.3f}")
        if "strategy_stream" in p:
            st = [r.seconds for r in p["strategy_stream"]]
            lines.append(f"  drtool strategy=stream {med(st):.2f} s ({min(st):.2f}-{max(st):.2f}): "
                         f"vs bare {med(st) / med(b):.3f}")
    if "scheduler" in res:
        s = res["scheduler"]
        tick = med(s["tick_s"]) * 1000
        lines.append(f"scheduler {s['policies']} policies / {s['jobs']} jobs: Daemon.tick median {tick:.2f} ms "
                     f"(min-max {min(s['tick_s']) * 1000:.2f}-{max(s['tick_s']) * 1000:.2f}; of which last_runs "
                     f"{med(s['last_runs_s']) * 1000:.2f}, due_jobs {med(s['due_jobs_s']) * 1000:.2f})   "
                     f"< 10 ms {'yes' if tick < 10 else 'NO'}")
        lines.append(f"  first tick {s['first_tick_s'] * 1000:.0f} ms; load_settings {s['load_settings_s']:.2f} s; "
                     f"Daemon() {s['daemon_init_s'] * 1000:.0f} ms")
        if "idle_cpu_pct" in s:
            lines.append(f"scheduler idle CPU, real `drtool daemon` ({s['idle_window_s']:.0f} s): "
                         f"{s['idle_cpu_pct']:.2f} %  (RSS {s['daemon_rss_kib'] / 1024:.0f} MiB, start-up CPU "
                         f"{s['startup_cpu_s']:.1f} s, ready after {s['daemon_ready_s']:.0f} s, jobs started {s['daemon_jobs_started']})   "
                         f"< 1 % {'yes' if s['idle_cpu_pct'] < 1 else 'NO'}")
    return lines


__all__ = ["bench_pgrestore", "bench_scheduler", "fill_restore_db", "report_lines"]
_ = (sys, tempfile)
