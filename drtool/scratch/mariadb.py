"""A throwaway MariaDB server: drills restore into it, tests use it as "production".

`ScratchMariadb` runs `mariadb-install-db` into a private directory, starts
`mariadbd` on a private socket and a free 127.0.0.1 port, and gives the TCP
account `root@127.0.0.1` a password (generated unless one is given) so that
password handling is exercised exactly as against a real server. The local
admin account (`root@localhost` via unix_socket) is used only to set up and to
shut down.

The server is tuned for restore speed, not durability (no binlog, no
doublewrite, lazy log flush, small buffers): it is thrown away afterwards.
`__exit__` always tears down -- shutdown, then kill, then remove the directory
-- also when start failed halfway, unless `keep=True` (for post-mortems).

`durable=True` (what `drtool recover` uses) makes a production server in
`home`: its settings are in `home/my.cnf` (durable InnoDB: doublewrite, log
flushed at every commit), which the systemd unit uses too; only the redo log
flush is relaxed during the load (a command-line flag), and `finish_load()`
sets it back to 1 and flushes the engine logs before recover reports success.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from drtool.errors import CommandError, SourceError
from drtool.execute import LocalProcess, LocalRunner
from drtool.scratch.common import claim_dir, free_port, private_dir
from drtool.secrets import Secret
from drtool.sources.base import DbTarget

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
TCP_USER = "root"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SETUP_TIMEOUT = 30.0

# Throwaway instance: trade durability for restore speed and a small footprint.
TUNING = (
    "--skip-log-bin",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--skip-performance-schema",
    "--max-allowed-packet=256M",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
)


def _os_user() -> str:
    return getpass.getuser()


def install_db_argv(program: str, datadir: Path, *, as_root: bool, socket_user: str) -> list[str]:
    argv = [program, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
            "--skip-name-resolve", "--auth-root-authentication-method=socket",
            f"--auth-root-socket-user={socket_user}", "--innodb-log-file-size=16M",
            # The bootstrap server would otherwise use $TMPDIR, which the mysql user may not write.
            f"--tmpdir={datadir.parent / 'tmp'}"]
    if as_root:
        argv.append("--user=mysql")
    return argv


# Durable server: only the redo flush is relaxed while loading (dynamic, set back by finish_load).
LOAD_TUNING = ("--innodb-flush-log-at-trx-commit=0",)
DURABLE_SETTINGS = {"innodb_flush_log_at_trx_commit": "1", "innodb_doublewrite": "1"}


def durable_cnf(home: Path, port: int, *, as_root: bool) -> str:
    """my.cnf of a recovered server: the same paths and port as a scratch one, durable InnoDB."""
    lines = ["# Written by `drtool recover`: a recovered production server.", "[mysqld]"]
    if as_root:
        lines.append("user=mysql")
    lines += [f"datadir={home / 'data'}", f"socket={home / 'mysqld.sock'}", f"pid-file={home / 'mysqld.pid'}",
              f"log-error={home / 'error.log'}", f"tmpdir={home / 'tmp'}", f"port={port}",
              f"bind-address={HOST}", "skip-name-resolve", "innodb-flush-log-at-trx-commit=1",
              "innodb-doublewrite=1", "max-allowed-packet=256M", "character-set-server=utf8mb4",
              "collation-server=utf8mb4_unicode_ci", ""]
    return "\n".join(lines)


def server_argv(program: str, home: Path, port: int, *, as_root: bool) -> list[str]:
    argv = [program, "--no-defaults"]
    # mariadbd refuses to run as root unless told which user to be.
    if as_root:
        argv.append("--user=mysql")
    argv += [
        f"--datadir={home / 'data'}",
        f"--socket={home / 'mysqld.sock'}",
        f"--pid-file={home / 'mysqld.pid'}",
        f"--log-error={home / 'error.log'}",
        f"--tmpdir={home / 'tmp'}",
        f"--port={port}",
        f"--bind-address={HOST}",
        "--skip-name-resolve",
        *TUNING,
    ]
    return argv


def sql_string(value: str) -> str:
    """A MariaDB string literal (default sql_mode: backslash escapes are active)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0") + "'"


def _find(program_names: Sequence[str]) -> str:
    for name in program_names:
        found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if found:
            return found
    raise SourceError(f"{program_names[0]} is not installed",
                      hint="install the Debian package mariadb-server (apt-get install mariadb-server)")


class ScratchMariadb:
    """Context manager: a started, empty MariaDB server on 127.0.0.1."""

    def __init__(self, keep: bool = False, base_dir: str | None = None,
                 password: Secret | None = None, *, durable: bool = False, home: Path | None = None,
                 port: int | None = None) -> None:
        self.keep = keep
        self.base_dir = base_dir
        self.durable = durable
        self.wanted_home = home
        self.wanted_port = port
        self.password = password or Secret("drtool-" + secrets.token_urlsafe(18))
        self.home: Path | None = None
        self.port: int = 0
        self.proc: LocalProcess | None = None
        self._as_root = os.geteuid() == 0
        self._socket_user = "root" if self._as_root else _os_user()
        self._runner = LocalRunner()

    # ------------------------------------------------------------ public

    @property
    def socket(self) -> str:
        assert self.home is not None, "ScratchMariadb is not started"
        return str(self.home / "mysqld.sock")

    def target(self, database: str | None = None) -> DbTarget:
        return DbTarget(
            kind="mariadb", host=HOST, port=self.port, user=TCP_USER, password=self.password,
            socket=self.socket, database=database,
            env={"DRTOOL_MARIADB_HOST": HOST, "DRTOOL_MARIADB_PORT": str(self.port),
                 "DRTOOL_MARIADB_SOCKET": self.socket, "DRTOOL_MARIADB_USER": TCP_USER},
        )

    def connection_hint(self) -> str:
        return (f"mariadb --host={HOST} --port={self.port} --user={TCP_USER} --password "
                f"(or, as OS user {self._socket_user}: mariadb --socket={self.socket}); "
                f"server log: {self.home / 'error.log' if self.home else '?'}")

    def admin_sql(self, sql: str, *, timeout: float = SETUP_TIMEOUT) -> str:
        """Run SQL as the local socket admin (setup and tests); returns the batch output."""
        argv = [_find(["mariadb", "mysql"]), "--no-defaults", f"--socket={self.socket}",
                f"--user={self._socket_user}", "--batch", "--skip-column-names",
                "--default-character-set=utf8mb4"]
        return self._runner.run(argv, input=sql.encode(), timeout=timeout).text

    def __enter__(self) -> ScratchMariadb:
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.keep:
            log.warning("keeping scratch MariaDB: %s", self.connection_hint())
            return
        self._teardown()

    # ------------------------------------------------------------ start

    @property
    def mariadbd(self) -> str:
        return _find(["mariadbd", "mysqld"])

    @property
    def defaults_file(self) -> Path:
        assert self.home is not None
        return self.home / "my.cnf"

    def _start(self) -> None:
        owner = "mysql" if self._as_root else None
        if self.wanted_home is not None:
            self.home = claim_dir(self.wanted_home, owner=owner)
        else:
            self.home = private_dir("mariadb", owner=owner, base=self.base_dir)
        tmp = self.home / "tmp"
        tmp.mkdir(mode=0o700)
        if self._as_root:
            shutil.chown(tmp, "mysql", "mysql")
        self._install()
        self.port = self.wanted_port or free_port()
        if self.durable:
            fd = os.open(self.defaults_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(durable_cnf(self.home, self.port, as_root=self._as_root))
            argv = [self.mariadbd, f"--defaults-file={self.defaults_file}", *LOAD_TUNING]
        else:
            argv = server_argv(self.mariadbd, self.home, self.port, as_root=self._as_root)
        # detach: the server outlives the drill step's thread that starts it (a child started
        # with PR_SET_PDEATHSIG would die with that thread); teardown stops it.
        self.proc = self._runner.start(argv, detach=True)
        self._wait_ready()
        self._create_tcp_user()

    def _install(self) -> None:
        assert self.home is not None
        argv = install_db_argv(_find(["mariadb-install-db", "mysql_install_db"]), self.home / "data",
                               as_root=self._as_root, socket_user=self._socket_user)
        try:
            self._runner.run(argv, timeout=120)
        except CommandError as exc:
            raise SourceError(f"mariadb-install-db failed in {self.home}: {exc.message}",
                              hint="check that the mysql user can enter the base directory") from None

    def _wait_ready(self) -> None:
        assert self.proc is not None
        admin = _find(["mariadb-admin", "mysqladmin"])
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SourceError(f"mariadbd exited with code {self.proc.poll()} during start-up:\n"
                                  + self._log_tail(), hint=f"see {self.home}/error.log")
            if os.path.exists(self.socket):
                res = self._runner.run([admin, "--no-defaults", f"--socket={self.socket}",
                                        f"--user={self._socket_user}", "--connect-timeout=2", "ping"],
                                       timeout=10, check=False)
                if res.returncode == 0:
                    return
            time.sleep(0.05)
        raise SourceError(f"mariadbd did not become ready within {START_TIMEOUT:.0f}s:\n" + self._log_tail(),
                          hint=f"see {self.home}/error.log")

    def finish_load(self) -> dict[str, str]:
        """Durable server: flush every commit from now on, and flush what the load left in the log."""
        assert self.durable
        self.admin_sql("SET GLOBAL innodb_flush_log_at_trx_commit = 1;\nFLUSH ENGINE LOGS;\nFLUSH TABLES;\n")
        names = list(DURABLE_SETTINGS)
        values = self.admin_sql("SELECT " + ", ".join(f"@@GLOBAL.{n}" for n in names) + ";\n").split()
        running = {n: ("1" if v in ("1", "ON") else v) for n, v in zip(names, values)}
        wrong = {k: v for k, v in running.items() if v != DURABLE_SETTINGS[k]}
        if wrong:
            raise SourceError(f"the recovered MariaDB in {self.home} runs with "
                              + ", ".join(f"{k}={v}" for k, v in wrong.items()))
        return running

    def start_argv(self) -> list[str]:
        """Start it again by hand, detached (start-stop-daemon, from dpkg: on every Debian)."""
        # --pidfile: "already running" means this server, not any other mariadbd on the machine.
        assert self.home is not None
        argv = ["start-stop-daemon", "--start", "--background", "--pidfile", str(self.home / "mysqld.pid"),
                "--exec", self.mariadbd]
        return [*argv, "--", f"--defaults-file={self.defaults_file}"]

    def stop_argv(self) -> list[str]:
        return [_find(["mariadb-admin", "mysqladmin"]), "--no-defaults", f"--socket={self.socket}",
                f"--user={self._socket_user}", "shutdown"]

    def _create_tcp_user(self) -> None:
        # The password travels on stdin, never argv; a failing client's echo of
        # it is masked because Secret values are registered for redaction.
        pw = sql_string(self.password.reveal())
        self.admin_sql(
            f"CREATE USER '{TCP_USER}'@'{HOST}' IDENTIFIED BY {pw};\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{TCP_USER}'@'{HOST}' WITH GRANT OPTION;\n"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.home / "error.log").read_text(errors="replace") if self.home else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ stop

    def _teardown(self) -> None:
        try:
            self._stop_server()
        finally:
            if self.home is not None:
                shutil.rmtree(self.home, ignore_errors=True)

    def _stop_server(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            self._runner.run([_find(["mariadb-admin", "mysqladmin"]), "--no-defaults",
                              f"--socket={self.socket}", f"--user={self._socket_user}", "shutdown"],
                             timeout=STOP_TIMEOUT, check=False)
        except CommandError:
            pass  # the kill below still stops it
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("mariadbd in %s did not shut down; killing it", self.home)
            proc.kill()
            proc.wait(STOP_TIMEOUT)
