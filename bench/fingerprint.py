"""Issue 14: what content hashes in fingerprints cost (`--only fingerprint`).

On the pgbackup database (`fill_postgres`, 300 MB by default):

1. The fingerprint SQL alone, in one REPEATABLE READ session as a backup runs it: exact counts
   (`count_rows`) vs counts and content hashes in one scan (`count_and_hash`), alternating;
   wall seconds and the server CPU seconds: that session's backend (/proc/PID/stat) plus the
   parallel workers that helped it (the postmaster's reaped-children times).
2. `drtool backup` of the database with `content_hash: true` vs `false`, alternating: wall
   seconds, CPU of drtool and its children (restic, pg_dump, psql: RUSAGE_CHILDREN) and CPU of the
   server's backends (the postmaster's reaped-children times).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

from bench.procs import Run

CLK = os.sysconf("SC_CLK_TCK")


def _log(msg: str) -> None:
    from bench.runner import log
    log(msg)


def _proc_cpu(pid: int, *, children: bool = False) -> float:
    """utime+stime (or the reaped children's cutime+cstime) of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the ")": state is fields[0]; utime, stime, cutime, cstime are stat fields 14-17
    ut, st, cut, cst = (int(x) for x in fields[11:15])
    return ((cut + cst) if children else (ut + st)) / CLK


def _postmaster_pid(pg) -> int:  # noqa: ANN001 - a ScratchPostgres
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def _sql_once(pg, content: bool) -> tuple[float, float, dict]:  # noqa: ANN001
    from drtool.execute import LocalRunner
    from drtool.sources.postgres.client import open_session
    from drtool.sources.postgres.commands import Endpoint
    from drtool.sources.postgres.fingerprint import backup_method, count_and_hash, count_rows

    ep = Endpoint("127.0.0.1", pg.port, "postgres", None, pg.bin_dir)
    post = _postmaster_pid(pg)
    session = open_session(LocalRunner(), ep, "bench")
    try:
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        backend = int(session.value("SELECT pg_backend_pid()"))
        version = int(session.value("SELECT current_setting('server_version_num')"))
        cpu0, workers0, t0 = _proc_cpu(backend), _proc_cpu(post, children=True), time.perf_counter()
        if content:
            counts, hashes = count_and_hash(session, backup_method(session, version))
        else:
            counts, hashes = count_rows(session), {}
        took = time.perf_counter() - t0
        time.sleep(0.3)   # parallel workers exit with the query; let the postmaster reap them
        # the session's backend plus the parallel workers that helped it (reaped children)
        cpu = _proc_cpu(backend) - cpu0 + _proc_cpu(post, children=True) - workers0
    finally:
        session.close()
    return took, cpu, {"tables": len(counts) - 1, "rows": sum(counts.values()), "hashed": len(hashes)}


def _backup_once(ws, pg) -> tuple[Run, float, float]:  # noqa: ANN001
    post = _postmaster_pid(pg)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server0 = _proc_cpu(post, children=True)
    run = ws.run("backup", "p", "--json")
    time.sleep(0.5)     # let the postmaster reap the run's backends before reading their times
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before_children.ru_utime) + (after.ru_stime - before_children.ru_stime)
    return run, client_cpu, _proc_cpu(post, children=True) - server0


def bench_fingerprint(b, pg, reps: int) -> dict:  # noqa: ANN001 - bench.runner.Bench, ScratchPostgres
    from bench.runner import alternate

    res: dict = {"sql": {"counts": [], "content": []}, "backup": {"counts": [], "content": []}}

    def sql_side(content: bool):  # noqa: ANN202
        def one(i: int) -> Run:
            _log(f"fingerprint SQL {'counts+hashes' if content else 'counts'} #{i}")
            took, cpu, info = _sql_once(pg, content)
            res["sql"]["content" if content else "counts"].append({"s": took, "cpu_s": cpu, **info})
            return Run(took, 0)
        return one

    alternate(reps, sql_side(True), sql_side(False))
    spec = {"database": "bench", "host": "127.0.0.1", "port": pg.port, "user": "postgres", "bin_dir": pg.bin_dir}
    spaces = {flag: b.workspace(f"fp-{flag}", f"fp-{flag}", [{"name": "db", "postgres": {**spec, "content_hash": flag}}])
              for flag in (True, False)}

    def backup_side(flag: bool):  # noqa: ANN202
        def one(i: int) -> Run:
            _log(f"fingerprint backup content_hash={flag} #{i}")
            run, client_cpu, server_cpu = _backup_once(spaces[flag], pg)
            res["backup"]["content" if flag else "counts"].append(
                {"s": run.seconds, "client_cpu_s": client_cpu, "server_cpu_s": server_cpu})
            return run
        return one

    alternate(reps, backup_side(True), backup_side(False))
    return res


def _med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def report_lines(res: dict) -> list[str]:
    if "fingerprint" not in res:
        return []
    f = res["fingerprint"]
    sql, back = f["sql"], f["backup"]
    info = sql["content"][0] if sql["content"] else {}
    lines = [f"fingerprint SQL ({info.get('tables')} tables, {info.get('rows')} rows; median s / server CPU s):"
             f" counts {_med(sql['counts'], 's'):.2f} / {_med(sql['counts'], 'cpu_s'):.2f}, "
             f"counts+hashes {_med(sql['content'], 's'):.2f} / {_med(sql['content'], 'cpu_s'):.2f}"]
    c, h = back["counts"], back["content"]
    ratio = _med(h, "s") / _med(c, "s") if c and h else float("nan")
    lines.append(f"backup content_hash off {_med(c, 's'):.2f} s (CPU drtool+children {_med(c, 'client_cpu_s'):.2f} s, "
                 f"server {_med(c, 'server_cpu_s'):.2f} s); on {_med(h, 's'):.2f} s (CPU "
                 f"{_med(h, 'client_cpu_s'):.2f} s, server {_med(h, 'server_cpu_s'):.2f} s): on/off {ratio:.3f}")
    return lines

