"""The fire drill: a playbook with `from_nothing:` recovers in a sandbox that has only the kit.

Real restic, rclone S3 and PostgreSQL. The drill runs `drtool recover` (or the generated
runbook in bash, bare tools) in an empty HOME with a clean environment, runs the playbook's
checks against what came back, reports time-to-service per source and in total, tears
everything down and is recorded (and signed offsite) like any drill. It fails clearly with a
wrong passphrase, a kit without S3 credentials (nothing from this machine leaks in), a revoked
kit and a tampered configuration bundle.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

from drtool.execute import LocalRunner
from tests.support.postgres import pg_server
from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration

PASSPHRASE = "fire drill passphrase 2021"


def psql(port: int, bin_dir: str, sql: str, db: str = "postgres") -> str:
    argv = [f"{bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=120).text.strip()


def sandboxes() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("drtool-fire-drill-*")}


@pytest.fixture(scope="module")
def prod_pg():
    yield from pg_server()


@pytest.fixture(scope="module")
def site(tmp_path_factory, s3_server, prod_pg):
    root = tmp_path_factory.mktemp("fire")
    bucket = "fire-" + uuid.uuid4().hex[:10]
    s3_server.make_bucket(bucket)
    pg = prod_pg
    psql(pg.port, pg.bin_dir, "create database siak")
    psql(pg.port, pg.bin_dir, "create table penduduk (nik text primary key, nama text);"
                              "insert into penduduk select 'NIK' || g, 'Warga ' || g from generate_series(1, 2000) g",
         db="siak")
    docs = root / "srv" / "scans"
    docs.mkdir(parents=True)
    (docs / "readme.txt").write_text("family cards\n")
    ws = make_workspace(root / "etc", s3_server, bucket)
    ws.policy("siak", [
        {"name": "siak-db", "postgres": {"database": "siak", "port": pg.port, "bin_dir": pg.bin_dir}},
        {"name": "scans", "files": {"paths": [str(docs)]}},
    ], targets={"rto": "1h", "rpo": "24h"})
    ws.drtool("backup", "siak", check=True)
    passfile = root / "kit.pass"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    kits = {}
    for name, extra in (("siak.age", ["--with-credentials"]), ("no-creds.age", [])):
        fd = os.open(passfile, os.O_RDONLY)
        try:
            made = subprocess.run(["python3", "-m", "drtool", "-c", str(ws.config), "kit", "create", "siak",
                                   "--out", str(root / name), "--passphrase-fd", str(fd), *extra],
                                  env=ws.env, capture_output=True, text=True, timeout=300, pass_fds=(fd,), check=False)
        finally:
            os.close(fd)
        assert made.returncode == 0, made.stderr
        kits[name] = root / name
    return {"ws": ws, "root": root, "docs": docs, "kits": kits, "passfile": passfile, "bucket": bucket,
            "s3": s3_server}


def fire_playbook(site, name: str, *, kit: str = "siak.age", passfile: Path | None = None,
                  mode: str = "drtool") -> None:
    ws = site["ws"]
    ws.playbook(name, {"policy": "siak", "schedule": "0 3 1 * *",      # monthly, by the daemon
                       "from_nothing": {"kit": str(site["kits"][kit]),
                                        "passphrase": {"file": str(passfile or site["passfile"])}, "mode": mode},
                       "steps": [
                           {"name": "all citizens are back", "sql": {
                               "source": "siak-db", "query": "select count(*) from penduduk",
                               "expect": {"equals": 2000}}},
                           {"name": "scans are readable", "command": [
                               "sh", "-c", f'grep -q "family cards" "$DRTOOL_RESTORE_DIR{site["docs"]}/readme.txt"']},
                       ]})


def drill(site, name: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = site["ws"].drtool("drill", name, "--json", timeout=900)
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else {})


def test_from_nothing_drill_recovers_checks_times_and_tears_down(site):
    before = sandboxes()
    fire_playbook(site, "fire")
    proc, report = drill(site, "fire")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["passed"] and report["rto"]["met"] is True and report["rto"]["achieved_s"] > 0
    names = [s["name"] for s in report["steps"]]
    assert names[1:] == ["recover siak-db", "recover scans", "all citizens are back", "scans are readable"]
    fire = report["from_nothing"]
    assert set(fire["time_to_service_s"]) == {"siak-db", "scans"}
    assert fire["total_s"] == max(fire["time_to_service_s"].values()) == pytest.approx(report["rto"]["achieved_s"],
                                                                                          abs=0.01)
    assert fire["credentials"] == {"offsite": "the recovery kit"} and fire["host"] == "drtool-test"
    assert report["steps"][1]["rows"] == 2000
    # Torn down: no sandbox and no server left; recorded offsite, signed.
    assert sandboxes() == before
    offsite = site["s3"].root / site["bucket"]
    record = json.loads(next(offsite.rglob(f"drills/{report['id']}.json")).read_text())
    assert record["signature"]["alg"] == "ed25519" and record["from_nothing"]["mode"] == "drtool"
    assert PASSPHRASE not in proc.stdout + proc.stderr + json.dumps(record)


def test_runbook_variant_runs_the_generated_runbook_with_bare_tools(site):
    before = sandboxes()
    fire_playbook(site, "fire-runbook", mode="runbook")
    proc, report = drill(site, "fire-runbook")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    step = next(s for s in report["steps"] if s["kind"] == "restore")
    assert step["name"] == "runbook in bash, bare tools (sandbox)" and step["exit_code"] == 0
    assert "siak: row counts equal the backup fingerprint" in step["output_tail"]
    assert [s["status"] for s in report["steps"][-2:]] == ["passed", "passed"]
    assert report["from_nothing"]["total_s"] > 0 and sandboxes() == before
    assert report["rpo"]["met"] is True and report["snapshot"]["run"] in step["output_tail"]


def test_wrong_passphrase_fails_the_drill_clearly(site, tmp_path):
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the kit passphrase\n")
    wrong.chmod(0o600)
    fire_playbook(site, "fire-wrong", passfile=wrong)
    proc, report = drill(site, "fire-wrong")
    assert proc.returncode == 1 and not report["passed"]
    assert "wrong passphrase" in report["steps"][0]["detail"] and "Traceback" not in proc.stderr
    assert [s["status"] for s in report["steps"][1:]] == ["skipped", "skipped"]


def test_sandbox_has_nothing_of_this_machine(site):
    # The parent has AWS_* and the configuration's S3 variables set; the sandbox must not see them.
    assert site["ws"].env.get("AWS_SECRET_ACCESS_KEY")
    fire_playbook(site, "fire-no-creds", kit="no-creds.age")
    proc, report = drill(site, "fire-no-creds")
    assert proc.returncode == 1
    assert "holds no S3 credentials" in report["steps"][0]["detail"]


def test_revoked_kit_fails_the_drill(site, tmp_path):
    ws = site["ws"]
    kit = tmp_path / "to-revoke.age"
    fd = os.open(site["passfile"], os.O_RDONLY)
    try:
        subprocess.run(["python3", "-m", "drtool", "-c", str(ws.config), "kit", "create", "siak", "--out", str(kit),
                        "--with-credentials", "--passphrase-fd", str(fd)], env=ws.env, check=True,
                       capture_output=True, timeout=300, pass_fds=(fd,))
    finally:
        os.close(fd)
    ws.drtool("kit", "revoke", str(kit), check=True)
    site["kits"]["revoked"] = kit
    fire_playbook(site, "fire-revoked", kit="revoked")
    proc, report = drill(site, "fire-revoked")
    assert proc.returncode == 1 and "may have been revoked" in report["steps"][0]["detail"]


def test_tampered_bundle_fails_the_drill(site):
    """Last: it stores an altered configuration bundle as the newest one."""
    ws = site["ws"]
    snaps = json.loads(ws.restic("snapshots", "--json", "--tag", "kind=config").stdout)
    newest = max(snaps, key=lambda s: s["time"])
    data = subprocess.run(["restic", "dump", newest["id"], "/drtool-config.tar"], capture_output=True, timeout=120,
                          env={**ws.env, "RESTIC_REPOSITORY": ws.repo_url, "RESTIC_PASSWORD": "canary-Repo-Pw-7f3a9c1e"},
                          check=True).stdout
    altered = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=altered, mode="w") as dst:
        for member in src:
            body = src.extractfile(member).read()
            if member.name == "policies/siak.yaml":
                body += b"# an attacker's edit\n"
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    stored = subprocess.run(["restic", "backup", "--stdin", "--stdin-filename", "drtool-config.tar", "--host",
                             newest["hostname"], *sum((["--tag", t] for t in newest["tags"]), [])],
                            input=altered.getvalue(), capture_output=True, timeout=120, check=False,
                            env={**ws.env, "RESTIC_REPOSITORY": ws.repo_url, "RESTIC_PASSWORD": "canary-Repo-Pw-7f3a9c1e"})
    assert stored.returncode == 0, stored.stderr
    fire_playbook(site, "fire-tampered")
    proc, report = drill(site, "fire-tampered")
    assert proc.returncode == 1 and "does not match its signed manifest" in report["steps"][0]["detail"]


def test_daemon_schedules_the_fire_drill_like_any_playbook(site, monkeypatch):
    from drtool.actions.daemon import build_jobs
    from drtool.config import load_settings

    fire_playbook(site, "fire-monthly")
    for key, value in site["ws"].env.items():
        monkeypatch.setenv(key, value)
    jobs = {info.job.id: info for info in build_jobs(load_settings(str(site["ws"].config)))}
    assert "drill:fire-monthly" in jobs and jobs["drill:fire-monthly"].policy == "siak"
