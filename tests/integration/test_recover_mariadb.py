"""Recover into a production MariaDB: durable InnoDB settings, a persistent data dir owned by
mysql, a restart with the printed commands keeps the data. Real restic, rclone S3, MariaDB."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.drtool_env import make_env
from tests.support.mariadb import mariadb_server

pytestmark = pytest.mark.integration

PASSPHRASE = "mariadb recovery passphrase"


@pytest.fixture(scope="module")
def prod_maria():
    yield from mariadb_server()


@pytest.fixture()
def srv_dir():
    base = Path("/var/lib/drtool-tests")
    base.mkdir(mode=0o711, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="recovered-maria-", dir=base))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def client(cnf: str, sql: str, db: str | None = None) -> str:
    argv = ["mariadb", f"--defaults-extra-file={cnf}", "-N", "-B", "-e", sql, *([db] if db else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_recover_makes_a_durable_mariadb_that_survives_a_restart(tmp_path, s3_server, bucket, prod_maria, srv_dir):
    from drtool.actions.kit import create_kit

    prod_maria.admin_sql("CREATE DATABASE arsip; USE arsip;"
                         "CREATE TABLE surat (id int PRIMARY KEY, isi text) ENGINE=InnoDB;"
                         "INSERT INTO surat VALUES (1,'a'),(2,'b'),(3,'c');")
    env = make_env(tmp_path / "setup", s3_server, bucket)
    env.env["PROD_MARIA_PW"] = prod_maria.password.reveal()
    env.policy("arsip", [{"name": "arsip-db", "mariadb": {
        "database": "arsip", "port": prod_maria.port, "password": {"env": "PROD_MARIA_PW"}}}])
    env.backup("arsip")
    kit = tmp_path / "arsip.age"
    with env._environ():
        create_kit(env.settings(), "arsip", kit, PASSPHRASE, include_credentials=True)
    home = tmp_path / "home"
    home.mkdir()
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSPHRASE.encode() + b"\n")
    os.close(write_fd)
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
             "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    try:
        proc = subprocess.run([sys.executable, "-m", "drtool", "recover", "--kit", str(kit), "--data-dir",
                               str(srv_dir), "--json", "--passphrase-fd", str(read_fd)], env=clean, cwd=home,
                              capture_output=True, text=True, timeout=600, pass_fds=(read_fd,), check=False)
    finally:
        os.close(read_fd)
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    server = next((s["server"] for s in report.get("sources", []) if s.get("server")), None)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert report["sources"][0]["verified"] is True and report["sources"][0]["rows"] == 3
        data_dir = Path(server["data_dir"])
        assert data_dir == srv_dir / "arsip" / "arsip-db" / "server" / "data"
        assert data_dir.stat().st_uid == pwd.getpwnam("mysql").pw_uid
        cnf = server["passfile"]
        assert (Path(cnf).stat().st_mode & 0o777) == 0o600
        assert client(cnf, "SELECT @@innodb_flush_log_at_trx_commit, @@innodb_doublewrite") == "1\t1"
        assert "MariaDB on 127.0.0.1" in proc.stdout or server["service"]["unit_file"]
        subprocess.run(server["service"]["stop"], check=True, capture_output=True, timeout=120)
        subprocess.run(server["service"]["start"], check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while True:
            ping = subprocess.run(["mariadb-admin", f"--defaults-extra-file={cnf}", "ping"], capture_output=True,
                                  timeout=10, check=False)
            if ping.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert client(cnf, "SELECT count(*) FROM surat", "arsip") == "3"
        assert client(cnf, "SELECT @@innodb_flush_log_at_trx_commit") == "1"
        unit = Path(server["service"]["unit_file"]).read_text()
        assert f"--defaults-file={server['dir']}/my.cnf" in unit and "User=mysql" in unit
    finally:
        if server:
            subprocess.run(server["service"]["stop"], capture_output=True, timeout=120, check=False)
