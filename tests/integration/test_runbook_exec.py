"""The runbook works without drtool: its `sh` blocks, run by `bash -e` as written with no drtool on
PATH, open the kit with `age -d`, pin one complete backup set and bring exactly its data back.

Also: signed run records and drill reports (read from the bucket, as an auditor
would) pass `drtool verify-report`, and fail it once altered or when checked
against another key; and a drill `kit` step opens the repository with a kit file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from drtool.actions.runbook import extract_script
from drtool.execute import LocalRunner
from drtool.scratch.postgres import ScratchPostgres
from tests.support.postgres import pg_server
from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration

SUM_SQL = "select count(*), md5(string_agg(id || ':' || body, ',' order by id)) from surat"


def psql(port: int, bin_dir: str, sql: str, db: str = "postgres") -> str:
    argv = [f"{bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=120).text.strip()


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prod_pg():
    yield from pg_server()


BARE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory, s3_server, prod_pg):
    """Two backup runs; the newer one loses its fingerprint.json, so it is an incomplete set."""
    root = tmp_path_factory.mktemp("runbook")
    bucket = "runbook-" + uuid.uuid4().hex[:10]
    s3_server.make_bucket(bucket)
    pg = prod_pg
    psql(pg.port, pg.bin_dir, "create role arsip_owner")
    psql(pg.port, pg.bin_dir, "create database arsip owner arsip_owner")
    psql(pg.port, pg.bin_dir, "create table surat (id int primary key, body text);"
                              "insert into surat select g, repeat(md5(g::text), 3) from generate_series(1, 1500) g;"
                              "alter table surat owner to arsip_owner;", db="arsip")
    files = root / "srv" / "arsip-scans"
    files.mkdir(parents=True)
    for i in range(5):
        (files / f"scan-{i}.bin").write_bytes(os.urandom(2048 + i))
    ws = make_workspace(root / "etc", s3_server, bucket)
    ws.policy("arsip", [
        {"name": "arsip-db", "postgres": {"database": "arsip", "port": pg.port, "bin_dir": pg.bin_dir}},
        {"name": "scans", "files": {"paths": [str(files)]}},
    ])
    first = json.loads(ws.drtool("backup", "arsip", "--json", check=True).stdout.strip().splitlines()[-1])
    assert first["status"] == "success", first
    complete = {"sum": psql(pg.port, pg.bin_dir, SUM_SQL, db="arsip"), "tree": digest(files)}
    psql(pg.port, pg.bin_dir, "insert into surat select g, 'newer' from generate_series(1501, 1600) g", db="arsip")
    (files / "scan-new.bin").write_bytes(b"only in the incomplete run")
    second = json.loads(ws.drtool("backup", "arsip", "--json", check=True).stdout.strip().splitlines()[-1])
    snaps = json.loads(ws.restic("snapshots", "--json", "--tag", f"run={second['id']},stream=fingerprint.json").stdout)
    assert len(snaps) == 1
    assert ws.restic("forget", snaps[0]["id"]).returncode == 0      # as if the run died before its last write
    # A custodian's kit sealed to an age key: `age -d -i` opens it without a terminal.
    import pyrage
    identity = pyrage.x25519.Identity.generate()
    (root / "custodian.key").write_text(str(identity) + "\n")
    (root / "custodian.key").chmod(0o600)
    made = ws.drtool("kit", "create", "arsip", "--out", str(root / "arsip.age"),
                     "--recipient", f"ops={identity.to_public()}", check=True)
    assert made.returncode == 0
    return {"ws": ws, "first": first, "second": second, "bucket": bucket, "files": files, "root": root,
            "kit": root / "arsip.age", "identity": root / "custodian.key", **complete}


def run_runbook(backed_up, tmp_path, fresh, **extra: str) -> subprocess.CompletedProcess:
    ws = backed_up["ws"]
    book = tmp_path / "arsip.md"
    ws.drtool("runbook", "arsip", "--out", str(book), check=True)
    script = tmp_path / "recover.sh"
    script.write_text(extract_script(book.read_text()))
    path = f"{fresh.bin_dir}:{BARE_PATH}"
    assert shutil.which("drtool", path=path) is None and shutil.which("age", path=path)
    # Only what the runbook names: the kit and its key, no repository password, no S3 keys (the
    # kit has none: they come from AWS_*, as the runbook says).
    env = {
        "PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8",
        "KIT": str(backed_up["kit"]), "AGE_IDENTITY": str(backed_up["identity"]),
        "RECOVERY_DIR": str(tmp_path / "work"), "RESTORE_ROOT": str(tmp_path / "root"),
        "AWS_ACCESS_KEY_ID": ws.env["DRT_S3_KEY"], "AWS_SECRET_ACCESS_KEY": ws.env["DRT_S3_SECRET"],
        "PGHOST": "127.0.0.1", "PGPORT": str(fresh.port), "PGUSER": "postgres", **extra,
    }
    return subprocess.run(["bash", "-e", str(script)], check=False, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)


def test_runbook_script_recovers_the_newest_complete_set_with_bare_tools(backed_up, tmp_path, s3_server):
    ws = backed_up["ws"]
    with ScratchPostgres() as fresh:       # the new machine's empty PostgreSQL
        proc = run_runbook(backed_up, tmp_path, fresh)
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        assert f"restoring backup run {backed_up['first']['id']}" in proc.stdout
        assert "arsip: row counts equal the backup fingerprint" in proc.stdout
        assert psql(fresh.port, fresh.bin_dir, SUM_SQL, db="arsip") == backed_up["sum"]
        # Roles came first, so the owner survived.
        assert psql(fresh.port, fresh.bin_dir, "select tableowner from pg_tables where tablename = 'surat'",
                    db="arsip") == "arsip_owner"
    restored = tmp_path / "root" / str(backed_up["files"]).lstrip("/")
    assert digest(restored) == backed_up["tree"]          # the same run: no scan-new.bin
    # The runbook kept offsite in the config bundle is the same document.
    from drtool.actions.bundle import fetch_config_bundle
    from drtool.engine.restic import RepoAccess, Restic
    from drtool.secrets import Secret

    access = RepoAccess(ws.repo_url, Secret((ws.root / "repo.pass").read_text()),
                        {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    fetch_config_bundle(Restic(access), tmp_path / "bundle")
    assert (tmp_path / "bundle" / "runbooks" / "arsip.md").read_text() == (tmp_path / "arsip.md").read_text()


def test_runbook_refuses_an_incomplete_set_and_restores_nothing(backed_up, tmp_path):
    with ScratchPostgres() as fresh:
        proc = run_runbook(backed_up, tmp_path, fresh, RUN=backed_up["second"]["id"])
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "is not a complete backup set" in proc.stderr and "refusing" in proc.stderr
        assert psql(fresh.port, fresh.bin_dir, "select count(*) from pg_database where datname = 'arsip'") == "0"
    assert not (tmp_path / "root").exists()


def test_runbook_stops_when_restored_counts_differ_from_the_fingerprint(backed_up, tmp_path):
    # A restore that silently loses rows: this pg_restore loads the schema only.
    fake = tmp_path / "bin"
    fake.mkdir()
    with ScratchPostgres() as fresh:
        (fake / "pg_restore").write_text(f'#!/bin/bash\nexec {fresh.bin_dir}/pg_restore "$@" --section=pre-data\n')
        (fake / "pg_restore").chmod(0o755)
        proc = run_runbook(backed_up, tmp_path, fresh, PATH=f"{fake}:{fresh.bin_dir}:{BARE_PATH}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "row counts of arsip differ from the backup fingerprint" in proc.stderr
        assert "public.surat\t1500" in proc.stdout and "public.surat\t0" in proc.stdout   # diff shows both


def test_signed_records_fail_verify_report_once_altered(backed_up, tmp_path, s3_server):
    ws = backed_up["ws"]
    bucket_dir = s3_server.root / backed_up["bucket"]
    from drtool.crypto.signing import load_or_create_signing_key, public_key_b64

    key = public_key_b64(load_or_create_signing_key(ws.root / "state"))
    # A drill whose only step opens the repository with a recovery kit file.
    kit = tmp_path / "arsip.drkit"
    passfile = tmp_path / "kit.pass"
    passfile.write_text("kit passphrase for the drill\n")
    passfile.chmod(0o600)
    read_fd = os.open(passfile, os.O_RDONLY)
    try:
        made = subprocess.run([sys.executable, "-m", "drtool", "-c", str(ws.config), "kit", "create", "arsip",
                               "--out", str(kit), "--passphrase-fd", str(read_fd)],
                              env=ws.env, capture_output=True, text=True, timeout=300, pass_fds=(read_fd,), check=False)
    finally:
        os.close(read_fd)
    assert made.returncode == 0, made.stderr
    ws.playbook("arsip-kit", {"policy": "arsip", "steps": [
        {"name": "kit opens", "kit": {"file": str(kit), "passphrase": {"file": str(passfile)}}}]})
    drill = ws.drtool("drill", "arsip-kit")
    assert drill.returncode == 0, drill.stdout + drill.stderr

    records = {"run": sorted(bucket_dir.rglob("runs/*.json")), "drill": sorted(bucket_dir.rglob("drills/*.json"))}
    assert records["run"] and records["drill"], list(bucket_dir.rglob("*.json"))
    for kind, paths in records.items():
        original = paths[-1]
        assert ws.drtool("verify-report", str(original), "--public-key", key).returncode == 0
        record = json.loads(original.read_text())
        if kind == "drill":
            assert "escrow key" in json.dumps(record)            # the kit step said how it opened the repository
        record["status" if "status" in record else "passed"] = "tampered"
        altered = tmp_path / f"{kind}-altered.json"
        altered.write_text(json.dumps(record))
        proc = ws.drtool("verify-report", str(altered))
        assert proc.returncode == 1 and "altered after it was signed" in proc.stderr
        other = public_key_b64(load_or_create_signing_key(tmp_path / "other-state"))
        proc = ws.drtool("verify-report", str(original), "--public-key", other)
        assert proc.returncode == 1 and "not the expected key" in proc.stderr
    assert yaml.safe_load((ws.root / "playbooks" / "arsip-kit.yaml").read_text())["policy"] == "arsip"

    # Revoking the kit's escrow key makes the same drill fail at its kit step.
    revoked = ws.drtool("kit", "revoke", str(kit))
    assert revoked.returncode == 0, revoked.stderr
    drill = ws.drtool("drill", "arsip-kit", "--json")
    assert drill.returncode == 1
    report = json.loads(drill.stdout)
    assert report["passed"] is False and report["steps"][0]["status"] == "failed"
    assert "kit opens" in drill.stderr
