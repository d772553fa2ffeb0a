"""SshRunner and `drtool hosts` against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drtool.config.models import Host
from drtool.config.secrets import SecretRef
from drtool.errors import CommandError, RemoteError
from drtool.remote.ssh import SshRunner
from tests.support.services import free_port
from tests.support.sshd import SshServer, keygen, start_sshd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not Path("/usr/sbin/sshd").exists() and not os.environ.get("CI"):
        pytest.skip("openssh-server is not installed")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture()
def known_hosts(sshd: SshServer, tmp_path: Path) -> Path:
    return sshd.write_known_hosts(tmp_path / "known_hosts")


def make_runner(sshd: SshServer, known_hosts: Path, **host: object) -> SshRunner:
    fields = {"address": "127.0.0.1", "port": sshd.port, "key_file": str(sshd.client_key),
              "connect_timeout": 5, **host}
    return SshRunner(Host(**fields), known_hosts=known_hosts, host_name="db1", retries=2, backoff=0.05)


@pytest.fixture()
def runner(sshd: SshServer, known_hosts: Path) -> Iterator[SshRunner]:
    with make_runner(sshd, known_hosts) as r:
        yield r


def host_fingerprint(sshd: SshServer) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key.with_suffix(".pub"))],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return out.split()[1]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------ running commands

def test_run_returns_output_and_keeps_argv_words_intact(runner: SshRunner) -> None:
    # Spaces, quotes and $ must arrive as the same argv words (shlex.join on our side).
    result = runner.run(["printf", "%s|", "two words", "it's", "$HOME", "*"])
    assert result.stdout == b"two words|it's|$HOME|*|"
    assert result.returncode == 0


def test_run_exit_codes_and_check(runner: SshRunner) -> None:
    failed = runner.run(["sh", "-c", "echo why >&2; exit 3"], check=False)
    assert failed.returncode == 3 and failed.stderr == b"why\n"
    with pytest.raises(CommandError) as err:
        runner.run(["sh", "-c", "echo broken >&2; exit 4"])
    assert err.value.returncode == 4
    assert "broken" in str(err.value) and "db1" in str(err.value)


def test_start_streams_stdin_to_stdout_byte_exact(runner: SshRunner) -> None:
    data = os.urandom(3 * 1024 * 1024)
    proc = runner.start(["cat"], stdin=True, cwd="/tmp")
    assert proc.stdin is not None
    import threading
    writer = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()))
    writer.start()
    got = proc.stdout.read()
    writer.join(10)
    assert proc.wait(10) == 0
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_cwd_is_applied(runner: SshRunner, tmp_path: Path) -> None:
    assert runner.run(["pwd"], cwd=str(tmp_path)).text.strip() == str(tmp_path)
    with pytest.raises(CommandError) as err:
        runner.run(["pwd"], cwd=str(tmp_path / "missing"))
    assert err.value.returncode == 125


def test_command_not_found_is_exit_127_with_hint(runner: SshRunner) -> None:
    with pytest.raises(CommandError) as err:
        runner.run(["drtool-no-such-program", "--version"])
    assert err.value.returncode == 127
    assert "not installed on db1" in str(err.value)
    assert runner.which("drtool-no-such-program") is None
    assert runner.which("sh") in ("/bin/sh", "/usr/bin/sh")


def test_large_stderr_does_not_deadlock(runner: SshRunner) -> None:
    # 8 MiB on stderr interleaved with stdout: without a concurrent drain, the shared
    # SSH window fills and stdout stalls forever.
    script = "for i in 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/zero | tr '\\0' e >&2; echo out$i; done"
    started = time.monotonic()
    proc = runner.start(["sh", "-c", script])
    out = proc.stdout.read()
    assert proc.wait(30) == 0
    assert out.split() == [f"out{i}".encode() for i in range(1, 9)]
    assert proc.stderr_tail().endswith("eeee")
    assert time.monotonic() - started < 20


def test_env_secret_reaches_program_but_no_cmdline(runner: SshRunner, sshd: SshServer) -> None:
    secret = "pw-" + secrets.token_hex(12)
    proc = runner.start(["sh", "-c", 'printf "%s\\n" "$DRTOOL_TEST_PW"; exec cat'],
                        env={"DRTOOL_TEST_PW": secret, "OTHER": "x y"}, stdin=True)
    assert proc.stdout.readline() == (secret + "\n").encode()   # it arrived...
    leaks = []
    for entry in Path("/proc").iterdir():                       # ...but is in no argv here or "there"
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if secret.encode() in cmdline:
            leaks.append(entry.name)
    assert proc.pid is not None and alive(proc.pid)             # checked while it ran
    assert proc.stdin is not None
    proc.stdin.write(b"after the env lines\n")
    proc.stdin.close()
    assert proc.stdout.read() == b"after the env lines\n"       # the prelude left stdin intact
    assert proc.wait(10) == 0
    assert leaks == []
    assert secret not in sshd.log.read_text()


def test_env_value_with_newline_is_refused_without_echoing_it(runner: SshRunner) -> None:
    from drtool.errors import UsageError
    with pytest.raises(UsageError) as err:
        runner.start(["true"], env={"PW": "line1\nline2"})
    assert "line1" not in str(err.value)


def test_terminate_and_kill_stop_the_remote_program(runner: SshRunner) -> None:
    for stop in ("terminate", "kill"):
        proc = runner.start(["sleep", "60"])
        assert proc.pid is not None and alive(proc.pid)
        getattr(proc, stop)()
        assert proc.wait(10) != 0
        deadline = time.monotonic() + 5
        while alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(proc.pid), f"{stop} left the remote program running"
        assert "stopped by drtool" in proc.stderr_tail()


def test_connection_killed_mid_stream_is_a_failure(sshd: SshServer, known_hosts: Path) -> None:
    with make_runner(sshd, known_hosts) as r:
        proc = r.start(["head", "-c", "2000000000", "/dev/zero"])
        assert len(proc.stdout.read(4 * 1024 * 1024)) == 4 * 1024 * 1024
        assert sshd.drop_connections() > 0
        while proc.stdout.read1(1 << 20):
            pass
        code = proc.wait(15)
        assert code != 0
        assert "connection" in proc.stderr_tail() and "lost" in proc.stderr_tail()
        # The runner reconnects for the next command.
        assert r.run(["echo", "again"]).text == "again\n"
        deadline = time.monotonic() + 5
        while proc.pid and alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (proc.pid and alive(proc.pid)), "the remote head kept running after the drop"


def test_jump_host_reaches_target_through_direct_tcpip(sshd: SshServer, known_hosts: Path) -> None:
    bastion = Host(address="127.0.0.1", port=sshd.port, key_file=str(sshd.client_key), connect_timeout=5)
    target = Host(address="127.0.0.1", port=sshd.port, key_file=str(sshd.client_key), jump="bastion",
                  connect_timeout=5)
    with SshRunner(target, known_hosts=known_hosts, hosts={"bastion": bastion, "db1": target},
                   host_name="db1", retries=1) as r:
        assert r.run(["echo", "via bastion"]).text == "via bastion\n"
    loop = Host(address="127.0.0.1", port=sshd.port, key_file=str(sshd.client_key), jump="db1")
    with pytest.raises(RemoteError, match="loop"):
        SshRunner(loop, known_hosts=known_hosts, hosts={"db1": loop}, host_name="db1", retries=1).connect()


def test_key_from_secret_reference(sshd: SshServer, known_hosts: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRTOOL_TEST_SSH_KEY", sshd.client_key.read_text())
    with make_runner(sshd, known_hosts, key_file=None, key=SecretRef(env="DRTOOL_TEST_SSH_KEY")) as r:
        assert r.run(["echo", "ok"]).text == "ok\n"


# ------------------------------------------------------------------ refusals

def test_unknown_host_key_is_refused_with_fingerprint_and_fix(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    with pytest.raises(RemoteError) as err:
        make_runner(sshd, empty).connect()
    text = str(err.value)
    assert "not known" in text and host_fingerprint(sshd) in text
    assert "drtool hosts trust db1" in text
    assert err.value.exit_code == 1
    assert not empty.exists()   # nothing was auto-added


def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    with pytest.raises(RemoteError) as err:
        make_runner(sshd, known).connect()
    text = str(err.value)
    assert "CHANGED" in text and host_fingerprint(sshd) in text
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {blob}\n"


def test_wrong_client_key_is_refused(sshd: SshServer, known_hosts: Path, tmp_path: Path) -> None:
    wrong = keygen(tmp_path / "wrong_key")
    with pytest.raises(RemoteError) as err:
        make_runner(sshd, known_hosts, key_file=str(wrong)).connect()
    assert "refused the login as root" in str(err.value)
    assert "authorized_keys" in str(err.value)


def test_unreachable_host_fails_fast_after_retries(known_hosts: Path) -> None:
    port = free_port()   # nothing listens there
    host = Host(address="127.0.0.1", port=port, key_file="/nonexistent", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(RemoteError) as err:
        SshRunner(host, known_hosts=known_hosts, host_name="gone", retries=2, backoff=0.05).connect()
    assert "cannot reach host gone" in str(err.value) and "tried 2 times" in str(err.value)
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ drtool hosts (CLI)

def write_setup(tmp_path: Path, sshd: SshServer, policies: str = "") -> Path:
    state = tmp_path / "state"
    config = tmp_path / "drtool.yaml"
    config.write_text(f"""
state_dir: {state}
repositories:
  main: {{url: {tmp_path / 'repo'}, password: {{env: DRTOOL_TEST_REPO_PW}}}}
hosts:
  db1: {{address: 127.0.0.1, port: {sshd.port}, key_file: {sshd.client_key}, connect_timeout: 5s}}
""")
    if policies:
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "records.yaml").write_text(policies)
    return config


def drtool(*args: str, input: str | None = None) -> tuple[int, str]:
    """Run the real CLI entry point in-process (click's isolation feeds stdin, captures output)."""
    from click.testing import CliRunner

    from drtool.cli import main

    with CliRunner().isolation(input=input) as streams:
        code = main(list(args))
        text = "".join(s.getvalue().decode() for s in streams[:2] if s is not None)
    return code, text


def test_hosts_trust_then_check(sshd: SshServer, tmp_path: Path) -> None:
    config = write_setup(tmp_path, sshd, policies="""
name: records
repository: main
host: db1
sources:
  - name: siak
    postgres: {database: siak}
  - name: docs
    files: {paths: [/srv/docs]}
""")
    known = tmp_path / "state" / "known_hosts"
    code, text = drtool("-c", str(config), "hosts", "check", "db1")
    assert code == 1 and "not known" in text and not known.exists()

    code, text = drtool("-c", str(config), "hosts", "trust", "db1", input="n\n")
    assert code == 1 and host_fingerprint(sshd) in text and not known.exists()

    code, text = drtool("-c", str(config), "hosts", "trust", "db1", "--yes")
    assert code == 0, text
    assert host_fingerprint(sshd) in text and "trusted" in text
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert known.read_text() == sshd.host_public_line()

    code, text = drtool("-c", str(config), "hosts", "trust", "db1")
    assert code == 0 and "already trusted" in text

    code, text = drtool("-c", str(config), "hosts", "check")
    assert "restic" in text and "/usr/bin/restic" in text
    # pg_dump is not on PATH on this machine (it lives in /usr/lib/postgresql/N/bin):
    # the check names exactly what the policy lacks.
    assert "policy records:" in text
    has_pg_dump = subprocess.run(["sh", "-c", "command -v pg_dump"], capture_output=True, timeout=10,
                                 check=False).returncode == 0
    assert (code == 0) == has_pg_dump
    if not has_pg_dump:
        assert "missing pg_dump" in text


def test_hosts_trust_replaces_a_changed_key_only_when_confirmed(sshd: SshServer, tmp_path: Path) -> None:
    config = write_setup(tmp_path, sshd)
    known = tmp_path / "state" / "known_hosts"
    known.parent.mkdir(mode=0o700)
    other = keygen(tmp_path / "old_key")
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    unrelated = "other.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb2Mx0Jx4V9m7ZQ2JtN0Pn6fGq0f0x8k7yXH6wH3E2d\n"
    known.write_text(f"# kept comment\n{unrelated}[127.0.0.1]:{sshd.port} {kind} {blob}\n")

    code, text = drtool("-c", str(config), "hosts", "trust", "db1", input="n\n")
    assert code == 1 and "DIFFERENT key" in text
    assert blob in known.read_text()

    code, text = drtool("-c", str(config), "hosts", "trust", "db1", input="y\n")
    assert code == 0, text
    assert known.read_text() == "# kept comment\n" + unrelated + sshd.host_public_line()


def test_hosts_unknown_name_is_a_usage_error(sshd: SshServer, tmp_path: Path) -> None:
    config = write_setup(tmp_path, sshd)
    code, text = drtool("-c", str(config), "hosts", "trust", "nope")
    assert code == 2 and "no host named 'nope'" in text


# ------------------------------------------------------------------ PostgreSQL through SSH

def test_postgres_dump_streams_through_ssh(runner: SshRunner, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """psql session, fingerprint and pg_dump all run "remotely"; PGPASSWORD travels over stdin."""
    from drtool.config.models import PostgresSource
    from drtool.errors import SourceError
    from drtool.secrets import Secret
    from drtool.sources.postgres import PostgresDatabase
    from tests.support.postgres import pg_server

    password = "pg-" + secrets.token_hex(10)
    servers = pg_server(password=Secret(password))
    pg = next(servers)
    try:
        monkeypatch.setenv("DRTOOL_TEST_PG_PW", password)
        spec = {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "bin_dir": pg.bin_dir,
                "globals": False, "password": {"env": "DRTOOL_TEST_PG_PW"}}
        admin = PostgresDatabase(PostgresSource(database="postgres", **spec), runner)
        admin.query(pg.target(), "CREATE DATABASE siak")
        admin.query(pg.target(), "CREATE TABLE penduduk (id int PRIMARY KEY, nama text); "
                                 "INSERT INTO penduduk SELECT g, 'Warga ' || g FROM generate_series(1, 2000) g",
                    database="siak")
        source = PostgresDatabase(PostgresSource(database="siak", **spec), runner)
        dump = tmp_path / "siak.pgdump"
        with source.open_dump() as session:
            assert session.fingerprint["databases"]["siak"]["public.penduduk"] == 2000
            [stream] = session.streams
            proc = stream.start()
            with open(dump, "wb") as out:
                while chunk := proc.stdout.read1(1 << 20):
                    out.write(chunk)
            assert proc.wait(60) == 0, proc.stderr_tail()
        listing = subprocess.run([f"{pg.bin_dir}/pg_restore", "--list", str(dump)],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert listing.returncode == 0 and "TABLE DATA public penduduk" in listing.stdout

        monkeypatch.setenv("DRTOOL_TEST_PG_PW", "wrong-password-123")
        wrong = PostgresDatabase(PostgresSource(database="siak", **spec), runner)
        with pytest.raises(SourceError) as err, wrong.open_dump():
            pass
        assert "wrong-password-123" not in str(err.value) and password not in str(err.value)
        assert "password authentication failed" in str(err.value)   # psql's stderr came back
    finally:
        servers.close()   # stops and removes the cluster
