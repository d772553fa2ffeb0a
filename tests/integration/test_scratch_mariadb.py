"""ScratchMariadb: starts, protects TCP with the password, and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from drtool.errors import SourceError
from drtool.scratch import mariadb as scratch_mod
from drtool.scratch.mariadb import ScratchMariadb
from drtool.secrets import Secret

pytestmark = pytest.mark.integration

if shutil.which("mariadb-install-db") is None:
    pytest.skip("mariadb-server is not installed", allow_module_level=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; LocalProcess.wait reaps it.
    return True


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def tcp_query(port: int, password: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mariadb", "--no-defaults", "--host=127.0.0.1", f"--port={port}", "--protocol=TCP",
                           "-uroot", "--batch", "--skip-column-names", "-e", sql],
                          env={**os.environ, "MYSQL_PWD": password}, capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.fixture()
def base() -> Path:
    """A base dir the mysql user can enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="drtool-test-scratch-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_start_target_given_password_and_full_teardown(base: Path) -> None:
    password = "it's a \\ pass"            # quotes and backslashes survive the SQL literal
    with ScratchMariadb(base_dir=str(base), password=Secret(password)) as server:
        target = server.target()
        pid, home, port = server.proc.pid, server.home, server.port
        assert target.kind == "mariadb" and target.host == "127.0.0.1" and target.port == port
        assert target.env == {"DRTOOL_MARIADB_HOST": "127.0.0.1", "DRTOOL_MARIADB_PORT": str(port),
                              "DRTOOL_MARIADB_SOCKET": server.socket, "DRTOOL_MARIADB_USER": "root"}
        assert server.password.reveal() not in server.connection_hint()
        assert (home.stat().st_mode & 0o777) == 0o700
        ok = tcp_query(port, password, "SELECT CURRENT_USER()")
        assert ok.returncode == 0 and ok.stdout.strip() == "root@127.0.0.1"
        bad = tcp_query(port, "wrong-password", "SELECT 1")
        assert bad.returncode != 0 and "Access denied" in bad.stderr
        assert b"--skip-grant-tables" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not alive(pid)
    assert not home.exists() and list(base.iterdir()) == []
    assert port_free(port)


def test_failed_start_cleans_up_process_and_dir(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A port someone else already listens on: mariadbd starts, cannot bind, exits.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    monkeypatch.setattr(scratch_mod, "free_port", lambda: taken)
    server = ScratchMariadb(base_dir=str(base))
    try:
        with pytest.raises(SourceError, match="mariadbd exited"), server:
            pass
    finally:
        blocker.close()
    assert server.proc is not None and not alive(server.proc.pid)
    assert list(base.iterdir()) == []


def test_install_failure_is_a_source_error_and_leaves_no_dir(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory the mysql user cannot enter")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)          # under pytest's root-only tmp: mysql cannot enter it
    with pytest.raises(SourceError, match="mariadb-install-db failed"):
        with ScratchMariadb(base_dir=str(locked)):
            pass
    assert list(locked.iterdir()) == []
