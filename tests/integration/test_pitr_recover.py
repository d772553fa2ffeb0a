"""After the fire, with nothing but the recovery kit: `drtool recover --kit --at latest` and the
runbook's bare point-in-time section (bash -e, no drtool on PATH) each bring a PITR source back
to its last shipped write, row for row."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from drtool.actions.runbook import extract_script
from drtool.scratch.common import free_port
from tests.integration.test_pitr import start_shipper, stop, wait_offsite, workspace
from tests.integration.test_recover import fresh_env, run_cli
from tests.integration.test_runbook_exec import BARE_PATH
from tests.support.pg_primary import Writer, burn, pitr_primary, psql, psql_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture()
def srv_dir():
    base = Path("/var/lib/drtool-tests")
    base.mkdir(mode=0o711, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="pitr-", dir=base))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ids(bin_dir: str, port: int, env: dict | None = None) -> list[int]:
    import os
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        text = psql_port(bin_dir, port, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ticks", "siak")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [int(x) for x in text.split(",") if x]


def test_kit_alone_recovers_to_latest_with_drtool_and_with_the_bare_runbook(tmp_path, s3_server, bucket, srv_dir):
    import pyrage

    with pitr_primary() as pg:
        ws = workspace(tmp_path, s3_server, bucket, pg)
        identity = pyrage.x25519.Identity.generate()
        key = tmp_path / "custodian.key"
        key.write_text(str(identity) + "\n")
        key.chmod(0o600)
        shipper = start_shipper(ws)
        try:
            with Writer(pg, "siak", every=0.3) as writer:
                ws.drtool("backup", "siak", check=True)
                ws.drtool("kit", "create", "siak", "--out", str(tmp_path / "siak.age"),
                          "--recipient", f"ops={identity.to_public()}", check=True)
                psql(pg, "SELECT pg_switch_wal()")
                wait_for(lambda: len(writer.rows) > 20, what="rows after the base backup")
            rows = [n for n, _ in writer.rows]
            wait_offsite(ws, writer.rows[-1][1])
        finally:
            stop(shipper, signal.SIGKILL)
        book = tmp_path / "siak.md"
        ws.drtool("runbook", "siak", "--out", str(book), check=True)
        burn(pg)
        shutil.rmtree(ws.root)                                           # config, state dir, spool: gone
        aws = (s3_server.access_key, s3_server.secret_key)
        home = tmp_path / "home"
        home.mkdir()

        proc = run_cli(["recover", "--kit", str(tmp_path / "siak.age"), "--identity", str(key), "--at", "latest",
                        "--data-dir", str(srv_dir / "drtool"), "--json"], env=fresh_env(home, aws=aws), cwd=home,
                       passphrase=None)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        [db] = report["sources"]
        pitr = db["pitr"]
        assert db["verified"] and pitr["target"] == "latest" and pitr["recovered_to"] == "no recovery target specified"
        assert ids(pg.bin_dir, pitr["port"], {"PGPASSFILE": pitr["passfile"]}) == rows
        subprocess.run(pitr["service"]["stop"], capture_output=True, timeout=60, check=True)

        script = tmp_path / "pitr.sh"
        script.write_text(extract_script(book.read_text(), pitr=True))
        port = free_port()
        env = {"PATH": BARE_PATH, "HOME": str(home), "LANG": "C.UTF-8", "KIT": str(tmp_path / "siak.age"),
               "AGE_IDENTITY": str(key), "RECOVERY_DIR": str(tmp_path / "work"),
               "AWS_ACCESS_KEY_ID": aws[0], "AWS_SECRET_ACCESS_KEY": aws[1],
               "PITR_DIR": str(srv_dir / "bare"), "PITR_PORT": str(port)}
        assert shutil.which("drtool", path=BARE_PATH) is None
        bare = subprocess.run(["bash", "-e", str(script)], env=env, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL, cwd=tmp_path)
        try:
            assert bare.returncode == 0, bare.stdout + bare.stderr
            assert "recovered; newest replayed commit:" in bare.stdout
            assert ids(pg.bin_dir, port) == rows                     # the old server's pg_hba: trust on 127.0.0.1
        finally:
            subprocess.run(["runuser", "-u", "postgres", "--", f"{pg.bin_dir}/pg_ctl", "-D", str(srv_dir / "bare"),
                            "-m", "immediate", "stop"], capture_output=True, timeout=60)
