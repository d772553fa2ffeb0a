"""Issue 16: drtool's own peak RSS at large sizes, behind a flag (`python -m bench --only rss`).

Target: peak RSS of the drtool process itself <= 100 MiB, and flat (max/min <= 1.25) from 1 to
8 GB streams and from 20,000 to 200,000 files. Peak RSS is VmHWM of drtool's pid, polled every
20 ms (bench.procs.HwmPoller): restic, pg_dump and psql, its children, are not counted.

streams: one database `big` on the bench's ScratchPostgres (fsync off, wal_level minimal), grown
to each size in turn (pg_database_size, GB = 2**30 bytes) by `create table blob_K as select g,
repeat(md5(g::text), 30) from generate_series(...)` (a table made in its own transaction writes
no WAL at wal_level minimal, so the disk holds the data once), then a first `drtool backup` of it
into a fresh repository. The dump streams through drtool (the stream completeness check reads
it); restic compresses the repeated text, so the repository stays small.

files: one tree of small random files (1-4 KiB each, 100 per directory) grown to each count in
turn, a first `drtool backup` of it into a fresh repository, and after the largest one a `drtool
restore --source files` of it into an empty directory (restic restore --verify + the comparison
with the snapshot listing).

Each repository is deleted from the bucket once measured (the largest files one after its
restore). Sizes that the free disk space cannot hold are refused before anything is made.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from bench.procs import Run

GIB = 2**30
MIB = 2**20
FLAT = 1.25                  # max/min of the peaks across sizes
TARGET_MIB = 100
ROW_BYTES = 1024             # first guess for one `repeat(md5, 30)` row on disk; measured as the table grows
FILE_BLOCK = 4096            # a 1-4 KiB file takes one block


def _log(msg: str) -> None:
    from bench.runner import log
    log(msg)


def parse_gb(text: str) -> list[float]:
    return sorted({float(x) for x in text.split(",") if x.strip()})


def parse_counts(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


# ------------------------------------------------------------------ disk

def _needs(stream_gb: list[float], file_counts: list[int], workdir: str) -> dict[Path, list[tuple[str, int, int]]]:
    """Per directory whose filesystem must hold it: (what, bytes, inodes) at the largest size.

    streams: the database itself (in the scratch cluster, under the temp dir) plus one repository
    at a time (compressed; counted at half the database to stay safe) and 1 GiB of WAL and slack.
    files: the tree and its restored copy (one block and one inode per file, a directory per 100)
    plus the largest repository (~3 KiB a file, its restic cache included) and 256 MiB of slack."""
    out: dict[Path, list[tuple[str, int, int]]] = {}
    if stream_gb:
        top = max(stream_gb)
        out.setdefault(Path(tempfile.gettempdir()), []).append(
            (f"a {top:g} GB database", int(top * GIB) + GIB, 10_000))
        out.setdefault(Path(workdir), []).append((f"its repository (<= {top / 2:g} GB)", int(top * GIB / 2), 10_000))
    if file_counts:
        top_files = max(file_counts)
        tree = top_files * FILE_BLOCK + top_files // 100 * FILE_BLOCK
        out.setdefault(Path(workdir), []).append(
            (f"{top_files:,} files twice (tree + restore) and their repository",
             2 * tree + top_files * 3 * 1024 + 256 * MIB, 2 * top_files + top_files // 50 + 20_000))
    return out


def disk_refusal(stream_gb: list[float], file_counts: list[int], workdir: str) -> str | None:
    """A message naming what does not fit in which filesystem, or None when everything does."""
    per_fs: dict[int, tuple[list[Path], int, int, list[str]]] = {}
    for path, items in _needs(stream_gb, file_counts, workdir).items():
        dev = os.stat(path).st_dev
        paths, nbytes, inodes, what = per_fs.get(dev, ([], 0, 0, []))
        per_fs[dev] = (paths + [path], nbytes + sum(i[1] for i in items), inodes + sum(i[2] for i in items),
                       what + [i[0] for i in items])
    problems = []
    for paths, nbytes, inodes, what in per_fs.values():
        st = os.statvfs(paths[0])
        free, free_inodes = st.f_bavail * st.f_frsize, st.f_favail
        if nbytes > free or (st.f_files and inodes > free_inodes):
            problems.append(f"the filesystem of {' and '.join(map(str, paths))}: {', '.join(what)} need about "
                            f"{nbytes / GIB:.1f} GiB and {inodes:,} inodes; {free / GIB:.1f} GiB and "
                            f"{free_inodes:,} inodes are free")
    if not problems:
        return None
    return ("rss: the largest sizes asked for do not fit, nothing was made:\n  " + "\n  ".join(problems) +
            "\n  drop the largest of --rss-stream-gb / --rss-files, or free space (--workdir for the bench's own files)")


def _du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(path) for f in files)


# ------------------------------------------------------------------ data

def grow_database(pg, psql, target: int, state: dict) -> dict:
    """Add tables to database `big` until pg_database_size reaches `target` bytes (within 1 %)."""
    def size() -> int:
        return int(psql(pg, "select pg_database_size('big')"))

    started = time.perf_counter()
    while (current := size()) < target * 0.99:
        rows = max(1000, int((target - current) / state["row_bytes"]))
        first = state["next_id"]
        state["tables"] += 1
        psql(pg, f"create table blob_{state['tables']} as select g::bigint as id, repeat(md5(g::text), 30) as body "
                 f"from generate_series({first}, {first + rows - 1}) g", db="big")
        state["next_id"] += rows
        state["row_bytes"] = max(100.0, (size() - current) / rows)
    return {"db_bytes": size(), "rows": state["next_id"] - 1, "tables": state["tables"],
            "fill_s": time.perf_counter() - started}


def grow_tree(root: Path, start: int, stop: int) -> int:
    """Files start..stop-1 of the tree (1-4 KiB of random bytes each, 100 per directory); their bytes."""
    rnd = random.Random(start)
    total = 0
    for i in range(start, stop):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0 or i == start:
            d.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(1024, 4096)
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(size))
        total += size
    return total


# ------------------------------------------------------------------ the runs

def _case(kind: str, label: str, run: Run, **extra) -> dict:
    return {"kind": kind, "label": label, "seconds": run.seconds, "peak_rss_kib": run.peak_rss_kib, **extra}


def _forget_repository(b, prefix: str, ws_name: str) -> int:
    """Delete a measured repository from the bucket (and its workspace); its size in bytes."""
    repo = b.s3.root / "bench" / prefix
    nbytes = _du(repo)
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(b.root / "ws" / ws_name, ignore_errors=True)
    return nbytes


def bench_streams(b, pg, psql, sizes_gb: list[float]) -> list[dict]:
    psql(pg, "create database big")
    state = {"row_bytes": float(ROW_BYTES), "next_id": 1, "tables": 0}
    out = []
    try:
        for i, gb in enumerate(sizes_gb):
            _log(f"rss: growing database big to {gb:g} GB")
            filled = grow_database(pg, psql, int(gb * GIB), state)
            _log(f"rss: {filled}")
            name = f"rss-pg-{i}"
            ws = b.workspace(name, name, [{"name": "big", "postgres": {
                "database": "big", "host": "127.0.0.1", "port": pg.port, "user": "postgres", "bin_dir": pg.bin_dir}}])
            _log(f"rss: drtool backup of the {gb:g} GB database")
            run = ws.run("backup", "p", "--json")
            out.append(_case("backup postgres", f"{gb:g} GB", run, **filled,
                             repo_bytes=_forget_repository(b, name, name)))
    finally:
        psql(pg, "drop database big")
    return out


def bench_files(b, counts: list[int]) -> list[dict]:
    tree = b.root / "rss-tree"
    out = []
    made, nbytes = 0, 0
    try:
        for i, n in enumerate(counts):
            _log(f"rss: growing the tree to {n:,} files")
            t = time.perf_counter()
            nbytes += grow_tree(tree, made, n)
            made = n
            grow_s = time.perf_counter() - t
            name = f"rss-files-{i}"
            ws = b.workspace(name, name, [{"name": "files", "files": {"paths": [str(tree)]}}])
            _log(f"rss: drtool backup of {n:,} files")
            run = ws.run("backup", "p", "--json")
            case = _case("backup files", f"{n:,} files", run, files=n, bytes=nbytes, grow_s=grow_s)
            out.append(case)
            if n == counts[-1]:
                target = b.root / "rss-restore"
                _log(f"rss: drtool restore of {n:,} files")
                run = ws.run("restore", "p", "--source", "files", "--target", str(target), "--json")
                shutil.rmtree(target, ignore_errors=True)
                out.append(_case("restore files", f"{n:,} files", run, files=n, bytes=nbytes))
            case["repo_bytes"] = _forget_repository(b, name, name)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return out


# ------------------------------------------------------------------ report

def report_lines(res: dict) -> list[str]:
    if "rss_large" not in res:
        return []
    cases = res["rss_large"]["cases"]
    lines = [f"peak RSS of drtool itself at large sizes (issue 16: <= {TARGET_MIB} MiB, and flat: max/min <= {FLAT})",
             f"  {'run':<17}{'size':>15}{'data':>11}{'seconds':>9}{'MB/s':>8}{'peak RSS':>12}   <= {TARGET_MIB} MiB"]
    for c in cases:
        mib = (c["peak_rss_kib"] or 0) / 1024
        nbytes = c.get("db_bytes") or c.get("bytes") or 0
        lines.append(f"  {c['kind']:<17}{c['label']:>15}{nbytes / MIB:>8.0f} MB{c['seconds']:>9.1f}"
                     f"{nbytes / MIB / c['seconds']:>8.1f}{mib:>8.1f} MiB   {'yes' if mib <= TARGET_MIB else 'NO'}")
    for kind in ("backup postgres", "backup files"):
        peaks = [(c["peak_rss_kib"] or 0) / 1024 for c in cases if c["kind"] == kind]
        if len(peaks) < 2 or not min(peaks):
            continue
        ratio = max(peaks) / min(peaks)
        lines.append(f"  {kind}: {min(peaks):.1f}-{max(peaks):.1f} MiB over {len(peaks)} sizes, max/min {ratio:.2f} "
                     f"(flat: {'yes' if ratio <= FLAT else 'NO'})")
    repos = [f"{c['label']} {c['repo_bytes'] / MIB:.0f} MB" for c in cases if c.get("repo_bytes") is not None]
    if repos:
        lines.append("  repositories (deleted once measured): " + ", ".join(repos))
    return lines
