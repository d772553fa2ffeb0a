"""ScratchPostgres: real initdb/pg_ctl; teardown leaves no process, directory or port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from drtool.errors import SourceError
from drtool.scratch import postgres as scratch_mod
from drtool.scratch.postgres import ScratchPostgres, installed_majors
from drtool.secrets import Secret

pytestmark = pytest.mark.integration

if not installed_majors() and not os.environ.get("CI"):
    pytest.skip("PostgreSQL server binaries are not installed", allow_module_level=True)


def psql(pg: ScratchPostgres, sql: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run([os.path.join(pg.bin_dir or "", "psql"), "-X", "-w", "-A", "-t", "-h", "127.0.0.1",
                           "-p", str(pg.port), "-U", "postgres", "-d", "postgres", "-c", sql],
                          check=False, capture_output=True, text=True, timeout=30, env=env)


def pids_of(data_dir: Path) -> list[int]:
    """Processes whose command line names this data directory (the postmaster)."""
    out = subprocess.run(["pgrep", "-f", "--", f"-D {data_dir}"], check=False, capture_output=True, text=True, timeout=10)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def assert_gone(root: Path, port: int, pids: list[int]) -> None:
    assert not root.exists()
    assert not any(alive(p) for p in pids)
    assert port_free(port)


def test_scratch_runs_tuned_on_loopback_and_tears_down() -> None:
    with ScratchPostgres() as pg:
        assert pg.dir is not None and pg.port is not None
        root, port, data = pg.dir, pg.port, pg.data_dir
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        backends = [postmaster, *scratch_mod._children(postmaster)]
        assert len(backends) > 2 and pids_of(data)
        out = psql(pg, "SELECT current_setting('fsync'), current_setting('listen_addresses'), "
                       "current_setting('full_page_writes'), current_setting('synchronous_commit')")
        assert out.stdout.strip() == "off|127.0.0.1|off|off", out.stderr
        assert oct(root.stat().st_mode & 0o777) == "0o700"
        target = pg.target()
        assert (target.kind, target.host, target.port, target.user) == ("postgres", "127.0.0.1", port, "postgres")
        assert target.env["DRTOOL_PG_PORT"] == str(port) and target.env["DRTOOL_PG_HOST"] == "127.0.0.1"
        assert f"-p {port}" in pg.connection_hint()
    assert_gone(root, port, backends)
    assert pids_of(data) == []


def test_teardown_after_exception_inside_block() -> None:
    with pytest.raises(RuntimeError, match="drill step blew up"):
        with ScratchPostgres() as pg:
            root, port = pg.dir, pg.port
            postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
            raise RuntimeError("drill step blew up")
    assert root is not None and port is not None
    assert_gone(root, port, [postmaster])


@pytest.fixture()
def base_dir() -> Iterator[Path]:
    """A base the postgres OS user can enter (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="drtool-test-base-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_startup_failure_halfway_cleans_up(monkeypatch: pytest.MonkeyPatch, base_dir: Path) -> None:
    # initdb succeeds, the server refuses its config: startup fails after the dir and cluster exist.
    monkeypatch.setitem(scratch_mod.RESTORE_TUNING, "shared_buffers", "not-a-size")
    with pytest.raises(SourceError, match="(?s)did not start.*shared_buffers"):
        with ScratchPostgres(base_dir=str(base_dir)):
            pass  # pragma: no cover - never reached
    assert list(base_dir.iterdir()) == []


def test_base_dir_the_server_user_cannot_enter_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only as root does the scratch run as another OS user")
    tmp_path.chmod(0o700)
    with pytest.raises(SourceError, match="(?s)initdb failed.*can enter"):
        with ScratchPostgres(base_dir=str(tmp_path)):
            pass  # pragma: no cover - never reached
    assert list(tmp_path.iterdir()) == []


def test_missing_major_says_what_to_install() -> None:
    with pytest.raises(SourceError, match="(?s)99 or newer.*apt-get install postgresql-99"):
        with ScratchPostgres(min_major=99):
            pass  # pragma: no cover - never reached


def test_password_enables_scram_on_tcp() -> None:
    with ScratchPostgres(password=Secret("scratch-pass-4821")) as pg:
        assert psql(pg, "SELECT 1").returncode != 0
        wrong = psql(pg, "SELECT 1", password="not-the-password")
        assert "password authentication failed" in wrong.stderr
        right = psql(pg, "SELECT rolpassword LIKE 'SCRAM-SHA-256%' FROM pg_authid WHERE rolname = 'postgres'",
                     password="scratch-pass-4821")
        assert right.stdout.strip() == "t", right.stderr
        assert not (pg.dir / "pwfile").exists()  # type: ignore[operator]


def test_keep_leaves_server_running_until_stop() -> None:
    with ScratchPostgres(keep=True) as pg:
        root, port = pg.dir, pg.port
    try:
        assert root is not None and root.exists()
        assert psql(pg, "SELECT 1").stdout.strip() == "1"
    finally:
        pg.stop()
    assert root is not None and port is not None
    assert_gone(root, port, [])
    pg.stop()  # idempotent
