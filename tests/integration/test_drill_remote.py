"""Drills that restore onto a standby host over SSH: real sshd, PostgreSQL, restic, rclone S3.

The "standby" is this machine seen through a real OpenSSH sshd running in its own
mount namespace: its `srv/` directory is a tmpfs that only sshd's sessions see, so
files restored there can only have travelled through SSH. The standby's database
server is a second PostgreSQL (with a password) that the drill reaches as
127.0.0.1 *from the standby*: pg_restore and psql run there, fed over the channel.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drtool.config.models import Host
from drtool.execute import LocalRunner
from drtool.remote.ssh import SshRunner
from drtool.secrets import Secret
from tests.support.drtool_env import DrtoolEnv, data_root, make_env
from tests.support.postgres import pg_server
from tests.support.sshd import SshServer, start_sshd

pytestmark = pytest.mark.integration

STANDBY_PW = "standby-Pg-Pw-31c9e07b"


@pytest.fixture(scope="module")
def standby(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshServer, Path]]:
    if not Path("/usr/sbin/sshd").exists() and not os.environ.get("CI"):
        pytest.skip("openssh-server is not installed")
    root = tmp_path_factory.mktemp("standby")
    srv = root / "srv"          # empty here; a tmpfs inside sshd's mount namespace
    server = start_sshd(root / "sshd", private_dirs=(srv,))
    try:
        yield server, srv
    finally:
        server.stop()


def _runner(server: SshServer) -> SshRunner:
    known = server.write_known_hosts(server.root / "known_test")
    host = Host(address="127.0.0.1", port=server.port, key_file=str(server.client_key), connect_timeout=5)
    return SshRunner(host, known_hosts=known, host_name="standby", retries=1)


@pytest.fixture(scope="module")
def pg():
    yield from pg_server()


@pytest.fixture(scope="module")
def standby_pg():
    yield from pg_server(password=Secret(STANDBY_PW))


def psql(server, sql: str, db: str = "postgres", password: str | None = None) -> str:
    argv = [f"{server.bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(server.port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    env = {"PGPASSWORD": password} if password else None
    return LocalRunner().run(argv, env=env, timeout=120).text.strip()


@pytest.fixture(scope="module")
def siak(pg) -> str:
    psql(pg, "create database siak")
    psql(pg, "create table penduduk (nik text primary key, nama text, foto bytea);"
             "insert into penduduk select 'NIK' || g, 'Warga ' || g || ' Ṡ', decode(md5(g::text), 'hex') "
             "from generate_series(1, 2500) g;"
             "create table keluarga (kk text, nik text);"
             "insert into keluarga select 'KK' || (g / 4), 'NIK' || g from generate_series(1, 2500) g;", db="siak")
    return "siak"


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


def make_tree(root: Path) -> Path:
    data = root / "scans"
    (data / "2021" / "11").mkdir(parents=True)
    (data / "2021" / "11" / "ktp-0001.txt").write_text("NIK 1671xxxxxxxx0001\n" * 50)
    (data / "2021" / "11" / "kk-0002.bin").write_bytes(os.urandom(40_000))
    (data / "2021" / "empty").mkdir()
    (data / "secret.txt").write_text("only root\n")
    (data / "secret.txt").chmod(0o600)
    (data / "nama dengan spasi.txt").write_text("spasi\n")
    (data / "latest").symlink_to("2021/11/ktp-0001.txt")
    return data


def workspace(tmp_path: Path, s3_server, bucket: str, server: SshServer, pg, prod: Path) -> tuple[DrtoolEnv, Path]:
    env = make_env(tmp_path / "ws", s3_server, bucket)
    config = yaml.safe_load(env.config.read_text())
    config["hosts"] = {"standby": {"address": "127.0.0.1", "port": server.port, "key_file": str(server.client_key),
                                   "connect_timeout": "5s"}}
    env.config.write_text(yaml.safe_dump(config, sort_keys=False))
    env.env["PGPASSWORD"] = STANDBY_PW      # for the standby's server; never in argv or the playbook
    data = make_tree(prod)
    env.policy("records", [
        {"name": "siak", "postgres": {"database": "siak", "host": "127.0.0.1", "port": pg.port,
                                      "user": "postgres", "bin_dir": pg.bin_dir}},
        {"name": "scans", "files": {"paths": [str(data)]}},
    ])
    code, out, err = env.run("hosts", "trust", "standby", "--yes")
    assert code == 0, out + err
    env.backup("records")
    return env, data


def test_drill_restores_onto_the_standby_and_checks_it_there(tmp_path, s3_server, bucket, standby, pg, standby_pg,
                                                            siak, prod) -> None:
    server, srv = standby
    env, data = workspace(tmp_path, s3_server, bucket, server, pg, prod)
    remote_dir = srv / "restored" / "scans"
    rel = str(data).lstrip("/")
    check = ('set -e; f="$DRTOOL_RESTORE_DIR/$1/2021/11/ktp-0001.txt"; test -s "$f"; '
             'echo "standby has $(wc -c < "$f") bytes, database $DRTOOL_DATABASE_SIAK, policy $DRTOOL_POLICY"')
    env.playbook("standby-drill", {"policy": "records", "steps": [
        {"name": "restore siak onto standby", "restore": {
            "source": "siak", "host": "standby",
            "into": f"postgresql://postgres@127.0.0.1:{standby_pg.port}/siak_standby"}},
        {"name": "siak rows on standby", "verify": {"source": "siak"}},
        {"name": "residents on standby", "sql": {"source": "siak", "query": "select count(*) from penduduk",
                                                 "expect": {"equals": "2500"}}},
        {"name": "restore scans onto standby", "restore": {"source": "scans", "host": "standby",
                                                           "into": str(remote_dir)}},
        {"name": "scans on standby match", "verify": {"source": "scans"}},
        {"name": "standby sees the scan", "command": {"argv": ["sh", "-c", check, "sh", rel], "host": "standby"},
         "timeout": "60s"},
    ]})
    code, report, err = env.run_json("drill", "standby-drill")
    assert code == 0, json.dumps(report, indent=1) + err
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["status"] for s in report["steps"]] == ["passed"] * 6, json.dumps(report["steps"], indent=1)
    assert "on host standby" in steps["restore siak onto standby"]["detail"]
    assert "5000 rows: exactly" in steps["siak rows on standby"]["detail"]
    scans = steps["scans on standby match"]
    assert "on host standby" in scans["detail"] and scans["bytes"] >= 41_000
    assert scans["checked"] >= 8
    out = steps["standby sees the scan"]["stdout_tail"]
    assert "standby has 1050 bytes, database siak_standby, policy records" in out

    # The database really is on the standby's server; the files only exist inside sshd's namespace.
    assert psql(standby_pg, "select count(*) from penduduk", db="siak_standby", password=STANDBY_PW) == "2500"
    assert not any(srv.iterdir()), "the standby's tree must not be visible to the test process"
    with _runner(server) as r:
        listing = r.run(["find", str(remote_dir / rel), "-printf", r"%y %m %s %P\n"], timeout=60).text
        assert "f 600 10 secret.txt" in listing and "l 777 " in listing and "2021/empty" in listing
        assert "f 644 6 nama dengan spasi.txt" in listing
        # A second drill onto the same, now non-empty directory is refused and writes nothing.
        r.run(["touch", str(remote_dir / "marker")], timeout=30)

    env.playbook("again", {"policy": "records", "steps": [
        {"name": "restore scans again", "restore": {"source": "scans", "host": "standby", "into": str(remote_dir)}},
    ]})
    code, report, err = env.run_json("drill", "again")
    assert code == 1 and report["steps"][0]["status"] == "failed", json.dumps(report, indent=1) + err
    assert "is not empty; nothing was written" in report["steps"][0]["detail"]
    # The standby's password went through the SSH channel, never into a drill record.
    assert STANDBY_PW not in json.dumps(report)


def test_failing_remote_command_fails_the_drill_naming_the_step(tmp_path, s3_server, bucket, standby, pg, siak,
                                                               prod) -> None:
    server, _srv = standby
    env, _data = workspace(tmp_path, s3_server, bucket, server, pg, prod)
    env.playbook("broken", {"policy": "records", "steps": [
        {"name": "standby app check", "command": {
            "argv": ["sh", "-c", 'echo "checking $DRTOOL_POLICY"; echo "app: config missing" >&2; exit 4'],
            "host": "standby"}, "timeout": "60s"},
    ]})
    code, report, err = env.run_json("drill", "broken")
    assert code == 1, json.dumps(report, indent=1) + err
    [step] = report["steps"]
    assert step["name"] == "standby app check" and step["status"] == "failed"
    assert "on host standby exited with code 4: app: config missing" in step["detail"]
    assert step["stdout_tail"].strip() == "checking records"
    code, out, err = env.run("drill", "broken")
    assert code == 1 and "standby app check" in out + err
