"""Use case: the embedded default — the whole story on loopback, in a temp dir.

Starts a local S3 server (rclone serve s3 on 127.0.0.1), creates sample data
(a file tree, an SQLite database and, when PostgreSQL is installed, a
PostgreSQL database in a throwaway cluster standing in for production), backs
it up with a policy, runs a restore drill into scratch instances and prints
the verdict. Everything it starts is stopped and removed at the end.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from drtool.execute import LocalRunner


def run_demo(workdir: Path | None, *, echo: Callable[[str], None] = print,
             show: Callable[[dict[str, Any]], None] = lambda _report: None) -> bool:
    """The whole story; `echo` gets the progress lines, `show` the drill report (the CLI renders it)."""
    with ExitStack() as stack:
        root = workdir or Path(tempfile.mkdtemp(prefix="drtool-demo-"))
        if workdir is None:
            stack.callback(shutil.rmtree, root, True)
        root.mkdir(parents=True, exist_ok=True)
        from drtool.storage.local_s3 import start_local_s3

        s3 = stack.enter_context(start_local_s3(root / "s3"))
        s3.make_bucket("drtool-demo")
        echo(f"1/4 local S3 server on {s3.endpoint} (bucket drtool-demo)")
        sources, steps = _sample_data(root, stack, echo)
        config = _write_config(root, s3, sources, steps)
        from drtool.actions.backup import backup_policy
        from drtool.actions.drill import run_drill
        from drtool.config import load_settings

        settings = load_settings(str(config))
        echo("3/4 backup: encrypted restic snapshots into the bucket ...")
        run = backup_policy(settings, settings.policy("demo"))
        echo(f"    {run.status}: {len(run.snapshots)} snapshots, {run.bytes_added} bytes added, "
             f"{run.duration_s or 0:.1f}s" + (f"\n    error: {run.error}" if run.error else ""))
        if not run.ok:
            return False
        echo("4/4 restore drill into scratch instances, timed against the RTO ...")
        report = run_drill(settings, settings.playbook("demo-drill"))
        show(report.to_dict())
        echo(f"VERDICT: {'PASSED' if report.passed else 'FAILED'} — RTO achieved "
             f"{report.rto_achieved_s or 0:.1f}s (target {report.to_dict()['rto']['target_s']}s), "
             f"RPO achieved {report.rpo_achieved_s or 0:.1f}s")
        if workdir is not None:
            echo(f"files kept in {root} (config: {config})")
        return bool(report.passed)


def _sample_data(root: Path, stack: ExitStack, echo: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    scans = root / "data" / "scans"
    (scans / "2026").mkdir(parents=True)
    for i in range(20):
        (scans / "2026" / f"ktp-{i:04d}.txt").write_text(f"scan {i} " * 200)
    (scans / "latest").symlink_to("2026")
    db = root / "data" / "kiosk.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("create table antrian (id integer primary key, nama text)")
        con.executemany("insert into antrian (nama) values (?)", [(f"warga {i}",) for i in range(500)])
    sources: list[dict] = [
        {"name": "scans", "files": {"paths": [str(scans)]}},
        {"name": "kiosk-db", "sqlite": {"path": str(db)}},
    ]
    steps: list[dict] = [
        {"name": "restore scans", "restore": {"source": "scans", "into": "scratch"}},
        {"name": "scans match backup", "verify": {"source": "scans"}},
        {"name": "restore kiosk queue", "restore": {"source": "kiosk-db", "into": "scratch"}},
        {"name": "queue matches backup", "verify": {"source": "kiosk-db"}},
    ]
    pg = _start_postgres(stack)
    if pg is not None:
        _psql(pg, "create database siak")
        _psql(pg, "create table penduduk (nik text primary key, nama text);"
                  "insert into penduduk select 'NIK' || g, 'Warga ' || g from generate_series(1, 5000) g;", db="siak")
        sources.insert(0, {"name": "siak-db", "postgres": {"database": "siak", "port": pg.port,
                                                           "bin_dir": pg.bin_dir}})
        steps[:0] = [
            {"name": "restore database", "restore": {"source": "siak-db", "into": "scratch"}},
            {"name": "database matches backup", "verify": {"source": "siak-db"}},
            {"name": "residents present", "sql": {"source": "siak-db", "query": "select count(*) from penduduk",
                                                  "expect": {"min": 1}}},
        ]
        echo(f"2/4 sample data: PostgreSQL 'siak' (5000 residents, port {pg.port}), 20 scans, SQLite queue")
    else:
        echo("2/4 sample data: 20 scans, SQLite queue (PostgreSQL not installed: skipped)")
    return sources, steps


def _start_postgres(stack: ExitStack):  # noqa: ANN202 - ScratchPostgres or None
    from drtool.scratch.postgres import ScratchPostgres, installed_majors

    if not installed_majors():
        return None
    return stack.enter_context(ScratchPostgres())


def _psql(pg, sql: str, db: str = "postgres") -> None:  # noqa: ANN001
    LocalRunner().run([f"{pg.bin_dir}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                       "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql], timeout=120)


def _write_config(root: Path, s3, sources: list[dict], steps: list[dict]) -> Path:  # noqa: ANN001
    cfg = root / "config"
    (cfg / "policies").mkdir(parents=True, exist_ok=True)
    (cfg / "playbooks").mkdir(exist_ok=True)
    for name, value in (("repo.pass", secrets.token_urlsafe(24)), ("s3.key", s3.access_key),
                        ("s3.secret", s3.secret_key)):
        (cfg / name).write_text(value)
        (cfg / name).chmod(0o600)
    (cfg / "drtool.yaml").write_text(yaml.safe_dump({
        "state_dir": str(root / "state"),
        "repositories": {"offsite": {
            "url": s3.repo_url("drtool-demo", "demo"),
            "password": {"file": str(cfg / "repo.pass")},
            "s3": {"access_key_id": {"file": str(cfg / "s3.key")},
                   "secret_access_key": {"file": str(cfg / "s3.secret")}},
        }},
    }, sort_keys=False))
    (cfg / "policies" / "demo.yaml").write_text(yaml.safe_dump({
        "name": "demo", "repository": "offsite", "targets": {"rpo": "24h", "rto": "15m"},
        "retention": {"daily": 7}, "sources": sources}, sort_keys=False))
    (cfg / "playbooks" / "demo-drill.yaml").write_text(yaml.safe_dump({
        "name": "demo-drill", "policy": "demo", "snapshot": "latest", "steps": steps}, sort_keys=False))
    return cfg / "drtool.yaml"
