"""Pure logic of the SSH adapter and `drtool hosts`: command building, known_hosts, needs."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from drtool.actions.hosts import Tool, missing_needs, parse_probe, policy_requirements
from drtool.config.models import Policy
from drtool.errors import RemoteError, UsageError
from drtool.remote.ssh import (
    HostKey,
    backoff_delays,
    env_payload,
    fingerprint,
    key_status,
    known_hosts_name,
    known_keys,
    load_private_key,
    parse_pid_line,
    preferred_key_types,
    read_key_file,
    record_host_key,
    remote_command,
)

ED_BLOB = base64.b64decode("AAAAC3NzaC1lZDI1NTE5AAAAIHb2Mx0Jx4V9m7ZQ2JtN0Pn6fGq0f0x8k7yXH6wH3E2d")


def run_as_login_shell(command: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    # What sshd does with the command string: `$SHELL -c COMMAND`.
    return subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, timeout=10, check=False)


def test_remote_command_round_trips_argv_and_env_without_values_in_it() -> None:
    argv = ["printf", "[%s]", "two words", "it's", "$HOME", "`id`", "a\nb"]
    env = {"PGPASSWORD": "s3cret; rm -rf / #", "EMPTY": ""}
    command = remote_command(argv, list(env))
    assert "s3cret" not in command
    # The trailing echo runs in the outer shell: the values stay inside the exec'd program.
    proc = run_as_login_shell(command + '; echo "[$PGPASSWORD][$EMPTY]"', env_payload(env) + b"rest")
    lines = proc.stdout.split(b"\n", 1)
    assert parse_pid_line(lines[0] + b"\n") is not None
    assert lines[1] == b"[two words][it's][$HOME][`id`][a\nb][][]\n"


def test_remote_command_exports_env_and_leaves_stdin_for_the_program() -> None:
    command = remote_command(["sh", "-c", 'printf "%s|" "$A" "$B"; cat'], ["A", "B"])
    proc = run_as_login_shell(command, env_payload({"A": " lead and trail ", "B": "x\\y"}) + b"payload\x00\xff")
    out = proc.stdout.split(b"\n", 1)[1]
    assert out == b" lead and trail |x\\y|payload\x00\xff"


def test_remote_command_cwd_and_missing_program() -> None:
    proc = run_as_login_shell(remote_command(["pwd"], cwd="/tmp"), b"")
    assert proc.stdout.split(b"\n")[1] == b"/tmp"
    assert run_as_login_shell(remote_command(["pwd"], cwd="/nonexistent/dir"), b"").returncode == 125
    assert run_as_login_shell(remote_command(["drtool-no-such-program"]), b"").returncode == 127


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A;B", ""])
def test_remote_command_rejects_bad_env_names(name: str) -> None:
    with pytest.raises(UsageError):
        remote_command(["true"], [name])


def test_remote_command_needs_a_program() -> None:
    with pytest.raises(UsageError):
        remote_command([])


def test_env_payload_refuses_newlines_without_echoing_the_value() -> None:
    with pytest.raises(UsageError) as err:
        env_payload({"PW": "top\nsecret"})
    assert "secret" not in str(err.value) and "PW" in str(err.value)
    assert env_payload({"A": "1", "B": "2"}) == b"1\n2\n"


def test_parse_pid_line() -> None:
    assert parse_pid_line(b"drtool-pid 4242\n") == 4242
    assert parse_pid_line(b"drtool-pid 4242") is None        # no newline: incomplete
    assert parse_pid_line(b"Welcome to db1!\n") is None
    assert parse_pid_line(b"drtool-pid x1\n") is None


def test_known_hosts_name_brackets_non_default_ports() -> None:
    assert known_hosts_name("db1.example", 22) == "db1.example"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_fingerprint_matches_paramiko_and_openssh_format() -> None:
    import paramiko

    key = paramiko.Ed25519Key(data=ED_BLOB)
    assert fingerprint(ED_BLOB) == key.fingerprint
    assert fingerprint(ED_BLOB).startswith("SHA256:") and not fingerprint(ED_BLOB).endswith("=")


def test_preferred_key_types_puts_known_first_and_maps_rsa() -> None:
    defaults = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"]
    assert preferred_key_types([], defaults) == defaults
    assert preferred_key_types(["ssh-rsa"], defaults) == ["rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519",
                                                          "ecdsa-sha2-nistp256"]
    assert preferred_key_types(["ecdsa-sha2-nistp256", "ssh-dss"], defaults)[0] == "ecdsa-sha2-nistp256"


def test_backoff_delays_double_and_cap() -> None:
    assert backoff_delays(1) == []
    assert backoff_delays(4, base=0.5) == [0.5, 1.0, 2.0]
    assert backoff_delays(8, base=1, cap=5)[-1] == 5


def test_key_status() -> None:
    a, b = HostKey("ssh-ed25519", b"a"), HostKey("ssh-ed25519", b"b")
    assert key_status([a], a) == "trusted"
    assert key_status([], a) == "unknown"
    assert key_status([b], a) == "changed"


def test_record_host_key_replaces_only_that_host(tmp_path: Path) -> None:
    import paramiko

    path = tmp_path / "state" / "known_hosts"
    new = HostKey("ssh-ed25519", ED_BLOB)
    record_host_key(path, "[10.0.0.5]:2222", new)            # creates dir 0700, file 0600
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    hashed = paramiko.HostKeys.hash_host("db1")
    old_line = f"{hashed} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA" + "A" * 42 + "\n"
    path.write_text("# comment\n" + path.read_text() + old_line + "garbage line\n")
    assert known_keys(path, "db1") and known_keys(path, "db1")[0] != new
    record_host_key(path, "db1", new)
    text = path.read_text()
    assert text.startswith("# comment\n[10.0.0.5]:2222 ssh-ed25519 ")
    assert hashed not in text and "garbage line\n" in text and text.endswith(new.line("db1"))
    assert known_keys(path, "db1") == [new]
    assert known_keys(path, "db2") == []
    assert known_keys(tmp_path / "missing", "db1") == []


def test_revoked_lines_are_never_trusted(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    key = HostKey("ssh-ed25519", ED_BLOB)
    path.write_text("@revoked " + key.line("db1"))
    assert key not in known_keys(path, "db1")


def test_load_private_key_rejects_garbage_without_echoing_it() -> None:
    with pytest.raises(RemoteError) as err:
        load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key-zzz\n-----END OPENSSH PRIVATE KEY-----\n",
                         "hosts.db1.key (env:K)")
    assert "not-a-key-zzz" not in str(err.value) and "hosts.db1.key" in str(err.value)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_text("x")
    os.chmod(path, 0o644)
    with pytest.raises(RemoteError, match="chmod 600"):
        read_key_file(path)
    with pytest.raises(RemoteError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_policy_requirements_and_missing_needs() -> None:
    policy = Policy.model_validate({
        "name": "records", "repository": "main", "host": "db1",
        "sources": [
            {"name": "siak", "postgres": {"database": "siak", "bin_dir": "/usr/lib/postgresql/15/bin"}},
            {"name": "web", "mariadb": {"database": "web"}},
            {"name": "docs", "files": {"paths": ["/srv/docs"]}},
            {"name": "docs2", "files": {"paths": ["/srv/other"]}},
        ],
    })
    needs = policy_requirements(policy)
    assert ("/usr/lib/postgresql/15/bin/pg_dump",) in needs
    assert ("/usr/lib/postgresql/15/bin/pg_dumpall",) in needs
    assert ("mariadb-dump", "mysqldump") in needs
    assert needs.count(("restic", "tar")) == 1
    found = {"mysqldump": Tool("mysqldump", "/usr/bin/mysqldump"), "tar": Tool("tar", "/bin/tar"),
             "restic": Tool("restic", None)}
    missing = missing_needs(needs, found)
    assert "restic or tar" not in missing and "mariadb-dump or mysqldump" not in missing
    assert "/usr/lib/postgresql/15/bin/pg_dump" in missing and "mariadb or mysql" in missing


def test_parse_probe() -> None:
    text = "pg_dump\t/usr/bin/pg_dump\tpg_dump (PostgreSQL) 15.8\nrestic\t\t\nstray line\n"
    tools = parse_probe(text, ["pg_dump", "restic", "tar"])
    assert tools["pg_dump"].path == "/usr/bin/pg_dump" and tools["pg_dump"].version.endswith("15.8")
    assert tools["restic"].path is None and tools["tar"].path is None


def test_runner_for_local_ssh_and_unknown(tmp_path: Path) -> None:
    from drtool.config.loader import Settings
    from drtool.config.models import Config
    from drtool.errors import ConfigError
    from drtool.execute import LocalRunner
    from drtool.remote import runner_for
    from drtool.remote.ssh import SshRunner

    config = Config.model_validate({
        "state_dir": "state",
        "repositories": {"main": {"url": "/srv/repo", "password": {"env": "X"}}},
        "hosts": {"db1": {"address": "127.0.0.1", "port": 2222, "key_file": "keys/id_db1"},
                  "db2": {"address": "127.0.0.1", "known_hosts": "/etc/drtool/kh", "key_file": "~/.ssh/id"}},
    })
    settings = Settings(tmp_path / "drtool.yaml", config, {}, {})
    assert isinstance(runner_for(settings, None), LocalRunner)
    db1 = runner_for(settings, "db1")
    assert isinstance(db1, SshRunner) and db1.name == "ssh:db1"
    assert db1.known_hosts == tmp_path / "state" / "known_hosts"
    assert db1.host.key_file == str(tmp_path / "keys" / "id_db1")   # relative to drtool.yaml
    db2 = runner_for(settings, "db2")
    assert db2.known_hosts == Path("/etc/drtool/kh") and db2.host.key_file == "~/.ssh/id"
    with pytest.raises(ConfigError, match="no host named 'db3'"):
        runner_for(settings, "db3")
