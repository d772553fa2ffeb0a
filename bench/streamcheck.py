"""What the completeness check of a pg_dump stream costs (`--only streamcheck`).

drtool/sources/pg_archive.py reads every byte of a `pg_dump -Fc -Z0` archive on its way into
restic, to refuse an archive that exited 0 but is short. Seeing the bytes means the relay
copies through Python (1 MiB reads and writes) instead of os.splice (pipe to pipe in the
kernel). Measured on the same database (the pgbackup one, `--pg-mb`):

1. the parser alone, fed the archive from memory in 1 MiB chunks: CPU seconds and MB/s;
2. `drtool.engine.pipeline.stream_to_restic` in this process, real pg_dump into real restic
   (the bench S3), with the check and without it (os.splice), alternating, median of
   `--reps`: wall seconds, this process's CPU (the relay and the parser: what the check
   adds) and the children's CPU (pg_dump and restic, the same either way).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time

from bench.procs import check, timed

HOST = "drtool-bench"


def _cpu() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _restic(b, prefix: str):  # noqa: ANN001, ANN202 - Bench, Restic
    from drtool.engine.restic import RepoAccess, Restic
    from drtool.secrets import Secret

    bare = b.bare("streamcheck", prefix)                  # restic init of a fresh repository
    access = RepoAccess(b.repo_url(prefix), Secret(b.pwfile.read_text().strip()),
                        {"AWS_ACCESS_KEY_ID": b.s3.access_key, "AWS_SECRET_ACCESS_KEY": b.s3.secret_key})
    return Restic(access, cache_dir=bare.cache)


def _one(restic, dump_argv: list[str], env: dict[str, str], checked: bool, i: int) -> dict:  # noqa: ANN001
    from drtool.engine.pipeline import stream_to_restic
    from drtool.execute import LocalRunner
    from drtool.sources.pg_archive import CustomArchiveCheck

    runner = LocalRunner()
    cpu0, kids0 = _cpu()
    start = time.perf_counter()
    result = stream_to_restic(restic, lambda: runner.start(dump_argv, env=env), filename="bench.pgdump",
                              tags=["bench", f"run={i}-{checked}"], host=HOST, what="pg_dump of bench",
                              check=CustomArchiveCheck("pg_dump of bench") if checked else None)
    wall = time.perf_counter() - start
    cpu1, kids1 = _cpu()
    return {"seconds": wall, "cpu_self_s": cpu1 - cpu0, "cpu_children_s": kids1 - kids0, "bytes": result.bytes_in}


def bench_streamcheck(b, pg, reps: int) -> dict:  # noqa: ANN001
    from drtool.sources.pg_archive import CustomArchiveCheck

    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "postgres"}
    dump_argv = [os.path.join(pg.bin_dir, "pg_dump"), "-Fc", "-Z0", "-h", "127.0.0.1", "-p", str(pg.port),
                 "-U", "postgres", "--dbname=bench"]
    archive = check(timed(dump_argv, env=env), "pg_dump").stdout
    cpu0 = time.process_time()
    parser = CustomArchiveCheck("bench")
    for pos in range(0, len(archive), 1 << 20):
        parser.feed(archive[pos:pos + (1 << 20)])
    parser.finish()
    parse_cpu = time.process_time() - cpu0
    del archive
    restic = _restic(b, "streamcheck")
    on: list[dict] = []
    off: list[dict] = []
    for i in range(reps):                                  # alternate which side goes first
        order = [(True, on), (False, off)] if i % 2 == 0 else [(False, off), (True, on)]
        for checked, into in order:
            into.append(_one(restic, dump_argv, env, checked, i))
    return {"archive_bytes": on[0]["bytes"], "blocks": parser.blocks, "parse_cpu_s": parse_cpu,
            "check_on": on, "check_off": off, "load": os.getloadavg()}


def report_lines(res: dict) -> list[str]:
    sc = res.get("streamcheck")
    if not sc:
        return []
    mb = sc["archive_bytes"] / 1e6

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    on_s, off_s = med(sc["check_on"], "seconds"), med(sc["check_off"], "seconds")
    lines = [
        "",
        f"stream check of a pg_dump -Fc -Z0 archive ({mb:.0f} MB, {sc['blocks']} data blocks):",
        f"  parser alone: {sc['parse_cpu_s']:.2f} s CPU ({mb / max(sc['parse_cpu_s'], 1e-9):.0f} MB/s)",
        f"  pg_dump -> restic, check on : {on_s:.2f} s wall, drtool CPU {med(sc['check_on'], 'cpu_self_s'):.2f} s, "
        f"children CPU {med(sc['check_on'], 'cpu_children_s'):.2f} s (Python copy)",
        f"  pg_dump -> restic, check off: {off_s:.2f} s wall, drtool CPU {med(sc['check_off'], 'cpu_self_s'):.2f} s, "
        f"children CPU {med(sc['check_off'], 'cpu_children_s'):.2f} s (os.splice)",
        f"  ratio on/off wall {on_s / off_s:.2f}",
    ]
    return lines


if __name__ == "__main__":   # pragma: no cover - run through python -m bench --only streamcheck
    raise SystemExit(subprocess.call(["python3", "-m", "bench", "--only", "streamcheck"]))
