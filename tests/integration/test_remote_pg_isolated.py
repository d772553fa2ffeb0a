"""A PostgreSQL reached only through the SSH session: no TCP, no socket visible to the test process.

sshd runs in its own mount namespace with a tmpfs on a private directory. Over
SSH the test creates a PostgreSQL cluster in that tmpfs and starts it with
`listen_addresses=''` and its unix socket inside the tmpfs, so nothing but a
process inside the namespace (i.e. an SSH session) can connect to it. A drtool
policy with `host:` then backs it up through the CLI, and the dump is restored
into a local ScratchPostgres: identical row counts and checksums prove the data
came through SSH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drtool.config.models import Host
from drtool.execute import LocalRunner
from drtool.remote.ssh import SshRunner
from tests.support.postgres import pg_server
from tests.support.sshd import SshServer, start_sshd
from tests.support.workspace import make_workspace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PG_BIN = "/usr/lib/postgresql/15/bin"
CHECKSUM_SQL = ("select count(*), md5(string_agg(nik || nama || encode(foto, 'hex'), ',' order by nik)) "
                "from penduduk")
SEED_SQL = ("create table penduduk (nik text primary key, nama text, foto bytea);"
            "insert into penduduk select 'NIK' || g, 'Warga ' || g || ' Ṡ', decode(md5(g::text), 'hex') "
            "from generate_series(1, 2500) g;"
            "create table keluarga (kk text, nik text);"
            "insert into keluarga select 'KK' || (g / 4), 'NIK' || g from generate_series(1, 2500) g;")


def _runner(server: SshServer) -> SshRunner:
    known = server.write_known_hosts(server.root / "known_hosts_pg")
    host = Host(address="127.0.0.1", port=server.port, key_file=str(server.client_key), connect_timeout=5)
    return SshRunner(host, known_hosts=known, host_name="test", retries=1)


def _remote_psql(server: SshServer, sock: Path, sql: str, db: str = "postgres") -> str:
    argv = [f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-h", str(sock), "-U", "postgres", "-d", db,
            "-v", "ON_ERROR_STOP=1", "-c", sql]
    with _runner(server) as r:
        return r.run(argv, timeout=60).text.strip()


@pytest.fixture(scope="module")
def isolated_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshServer, Path]]:
    """(sshd, socket directory): a PostgreSQL inside sshd's mount namespace, unix socket only."""
    if not Path("/usr/sbin/sshd").exists() and not os.environ.get("CI"):
        pytest.skip("openssh-server is not installed")
    if not Path(PG_BIN, "initdb").exists() and not os.environ.get("CI"):
        pytest.skip(f"PostgreSQL 15 server binaries are not installed ({PG_BIN})")
    # The postgres user must traverse every parent of the private dir: pytest's tmp dirs are 0700.
    private = Path(tempfile.mkdtemp(prefix="drtool-pgns-"))
    private.chmod(0o755)
    server = start_sshd(tmp_path_factory.mktemp("remote-pg") / "sshd", private_dirs=(private,))
    data, sock, log = private / "pg", private / "sock", private / "pg.log"
    postmaster: int | None = None
    try:
        with _runner(server) as r:
            prepare = 'mkdir -p "$1" "$2" && chown postgres:postgres "$1" "$2" && touch "$3" && chown postgres "$3"'
            r.run(["sh", "-c", prepare, "sh", str(data), str(sock), str(log)], timeout=30)
            r.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", str(data), "-A", "trust",
                   "-U", "postgres", "--no-sync"], timeout=60)
            r.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", str(data), "-l", str(log),
                   "-w", "-t", "30", "-o",
                   f"-c listen_addresses='' -c unix_socket_directories={sock} -c fsync=off", "start"],
                  timeout=60)
            postmaster = int(r.run(["head", "-n", "1", str(data / "postmaster.pid")], timeout=10).text.strip())
        yield server, sock
    finally:
        try:
            with _runner(server) as r:
                r.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "immediate",
                       "-w", "-t", "20", "stop"], timeout=30, check=False)
        finally:
            # Same PID namespace: if the SSH stop did not work, the postmaster must not outlive the test.
            if postmaster is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGKILL)
            server.stop()
            shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(scope="module")
def pg():
    yield from pg_server()


def _local_psql(pg, sql: str, db: str) -> str:
    argv = [f"{pg.bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg.port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=60).text.strip()


def test_postgres_only_reachable_through_ssh_is_backed_up_and_restored(tmp_path, s3_server, bucket,
                                                                        isolated_pg, pg) -> None:
    server, sock = isolated_pg

    # The premise: the socket exists only inside sshd's namespace, and there is no TCP listener.
    assert not sock.exists() or not any(sock.iterdir())
    direct = subprocess.run([f"{PG_BIN}/psql", "-X", "-h", str(sock), "-U", "postgres", "-d", "postgres",
                             "-c", "select 1"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, check=False)
    assert direct.returncode != 0
    assert "No such file or directory" in direct.stderr, direct.stderr
    with _runner(server) as r:
        assert r.run(["test", "-S", str(sock / ".s.PGSQL.5432")], timeout=10, check=False).returncode == 0
    assert _remote_psql(server, sock, "show listen_addresses") == ""

    # Data created through SSH.
    _remote_psql(server, sock, "create database siak")
    _remote_psql(server, sock, SEED_SQL, db="siak")
    remote_sum = _remote_psql(server, sock, CHECKSUM_SQL, db="siak")
    assert remote_sum.startswith("2500|")

    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    config = yaml.safe_load(ws.config.read_text())
    config["hosts"] = {"dbns": {"address": "127.0.0.1", "port": server.port, "key_file": str(server.client_key),
                                "connect_timeout": "5s"}}
    ws.config.write_text(yaml.safe_dump(config, sort_keys=False))
    ws.policy("isolated", [{"name": "siak", "postgres": {"database": "siak", "host": str(sock),
                                                          "user": "postgres", "bin_dir": PG_BIN}}], host="dbns")
    ws.drtool("hosts", "trust", "dbns", "--yes", check=True)

    proc = ws.drtool("backup", "isolated", "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["status"] == "success", run
    assert run["details"]["sources"]["siak"]["status"] == "success", run["details"]["sources"]["siak"]

    url = f"postgresql://postgres@127.0.0.1:{pg.port}/siak_isolated"
    out = json.loads(ws.drtool("restore", "isolated", "--source", "siak", "--target", url, "--json",
                               timeout=120, check=True).stdout)
    assert out["verified"] is True and out["problems"] == [], out
    assert _local_psql(pg, CHECKSUM_SQL, db="siak_isolated") == remote_sum
    assert _local_psql(pg, "select count(*) from keluarga", db="siak_isolated") \
        == _remote_psql(server, sock, "select count(*) from keluarga", db="siak") == "2500"
