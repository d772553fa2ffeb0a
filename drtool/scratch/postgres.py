"""A throwaway PostgreSQL cluster on 127.0.0.1: what drills restore into.

    with ScratchPostgres(min_major=15) as pg:
        target = pg.target()          # DbTarget for PostgresDatabase.restore()

`__enter__` runs initdb in a private 0700 directory, starts the server with
pg_ctl on a free loopback port (unix socket inside that directory, TCP on
127.0.0.1 only) and waits until it accepts connections. `__exit__` always
tears down: `pg_ctl stop -m immediate`, a kill of whatever survived, and the
directory removed - also when startup failed halfway. `keep=True` leaves it
running and `connection_hint()` says how to reach and stop it.

initdb and pg_ctl refuse to run as root, so as root they run as the
`postgres` OS user (runuser, found in /usr/sbin even when PATH lacks it);
the private directory is chowned to it.

A drill's cluster is tuned for restore speed, not durability: it is
throwaway. `durable=True` (what `drtool recover` uses) makes a production
server instead: initdb syncs, it lives in `home` (a persistent directory the
caller chose), postgresql.conf holds only durable settings, and the fast
load settings sit in postgresql.auto.conf until `finish_load()` removes
them: stop (shutdown checkpoint), `initdb --sync-only` (what fsync=off left
unsynced reaches the disk), start with the durable settings, CHECKPOINT, and
check that fsync, full_page_writes, synchronous_commit and autovacuum are on.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from drtool.errors import CommandError, SourceError
from drtool.execute import LocalRunner
from drtool.scratch.common import claim_dir, free_port, private_dir
from drtool.secrets import Secret
from drtool.sources.base import DbTarget
from drtool.tools import require

log = logging.getLogger(__name__)

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
OS_USER = "postgres"
SUPERUSER = "postgres"
INITDB_TIMEOUT = 180.0
START_TIMEOUT = 60
STOP_TIMEOUT = 30
START_ATTEMPTS = 3          # a free port can be taken by someone else before we bind it

# Durability off: a crash just means a new drill. These make pg_restore
# markedly faster (no fsync, no full-page images, big checkpoints, minimal WAL).
RESTORE_TUNING: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "512MB",
    "autovacuum": "off",
    "shared_buffers": "256MB",
    # The data load is one transaction on these instances (no WAL for it, wal_level=minimal),
    # holding a few locks per table until it commits: room for 512 x max_connections locks
    # (~20 MB of shared memory) instead of 64 x, enough for dumps of ~10,000 tables.
    "max_locks_per_transaction": "512",
}


# What a production server must run with once the load is over (checked after finish_load).
DURABLE_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "autovacuum": "on",
}


def installed_majors(pattern: str = PG_BIN_GLOB) -> dict[int, str]:
    """Major version -> bin dir, for every PostgreSQL found under /usr/lib/postgresql."""
    found: dict[int, str] = {}
    for bin_dir in glob.glob(pattern):
        match = re.search(r"/(\d+)/bin$", bin_dir)
        if match and os.path.exists(os.path.join(bin_dir, "postgres")):
            found[int(match.group(1))] = bin_dir
    return found


def pick_bin_dir(min_major: int | None, majors: dict[int, str]) -> tuple[int, str]:
    """The lowest installed major >= min_major (a restore needs a server at least as new)."""
    usable = sorted(m for m in majors if min_major is None or m >= min_major)
    if not usable:
        have = ", ".join(str(m) for m in sorted(majors)) or "none"
        want = f"{min_major} or newer" if min_major else "any version"
        pkg = f"postgresql-{min_major}" if min_major else "postgresql"
        raise SourceError(
            f"no PostgreSQL server binaries for {want} under /usr/lib/postgresql (installed: {have})",
            hint=f"install them, e.g. `apt-get install {pkg}` (PGDG repository for newer majors)",
        )
    return usable[0], majors[usable[0]]


def server_conf(port: int, socket_dir: str, *, tuning: bool = True) -> str:
    """postgresql.conf additions: loopback only, private socket, restore tuning (unless durable)."""
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": _conf_quote(socket_dir),
        "logging_collector": "off",
        **({k: _conf_value(v) for k, v in RESTORE_TUNING.items()} if tuning else {}),
    }
    title = "throwaway, tuned for restore speed" if tuning else "recovered by drtool: a production server"
    lines = ["", f"# drtool instance: {title}"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def load_conf() -> str:
    """postgresql.auto.conf of a durable server while it is loaded: removed by finish_load()."""
    lines = ["# drtool: fast load settings, removed (and the data synced) before recover reports success"]
    lines += [f"{k} = {_conf_value(v)}" for k, v in RESTORE_TUNING.items()]
    return "\n".join(lines) + "\n"


def hba_conf(password: bool, *, durable: bool = False) -> str:
    """Unix socket: trust (only the owner can enter the 0700 dir), peer on a production server.
    TCP: 127.0.0.1 only, with a password when one is set."""
    method = "scram-sha-256" if password else "trust"
    return (
        "# drtool instance\n"
        f"local all all {'peer' if durable else 'trust'}\n"
        f"host all all 127.0.0.1/32 {method}\n"
    )


def _conf_value(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9.]+", value) else _conf_quote(value)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class ScratchPostgres:
    """A throwaway local PostgreSQL cluster; see the module docstring."""

    def __init__(
        self,
        min_major: int | None = None,
        keep: bool = False,
        base_dir: str | None = None,
        password: Secret | None = None,
        *,
        durable: bool = False,
        home: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.min_major = min_major
        self.keep = keep
        self.base_dir = base_dir
        self.password = password
        self.durable = durable          # a production server: see the module docstring
        self.home = home                # durable: this (new or empty) directory instead of a temp one
        self.wanted_port = port
        self.major: int | None = None
        self.bin_dir: str | None = None
        self.dir: Path | None = None
        self.port: int | None = None
        self._pid: int | None = None
        self._runner = LocalRunner()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.keep:
            log.warning("keeping scratch PostgreSQL: %s", self.connection_hint())
            return
        self.stop()

    def start(self) -> None:
        self.major, self.bin_dir = pick_bin_dir(self.min_major, installed_majors())
        if self.home is not None:
            self.dir = claim_dir(self.home, owner=self._os_user)
        else:
            self.dir = private_dir("pg", owner=self._os_user, base=self.base_dir)
        self._initdb()
        self._write_hba()
        if self.durable:
            _write_owned(self.data_dir / "postgresql.auto.conf", load_conf(), append=False)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = self.wanted_port if self.wanted_port and attempt == 1 else free_port()
            self._write_conf(self.port)
            if self._pg_ctl_start(last=attempt == START_ATTEMPTS):
                break
        self._pid = self._read_pid()
        log.info("scratch PostgreSQL %s running on 127.0.0.1:%s (%s)", self.major, self.port, self.dir)

    def finish_load(self) -> dict[str, str]:
        """Durable server: drop the load settings, sync to disk, restart durable, CHECKPOINT; returns
        the settings it runs with (raises when one is not as DURABLE_SETTINGS says)."""
        assert self.durable and self.dir is not None
        self.shutdown()
        _write_owned(self.data_dir / "postgresql.auto.conf",
                     "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n",
                     append=False)
        try:
            self._runner.run(self._argv([self._tool("initdb"), "--sync-only", "-D", str(self.data_dir)]),
                             timeout=INITDB_TIMEOUT)
        except CommandError as exc:
            raise SourceError(f"initdb --sync-only failed for {self.data_dir}: {exc.message}") from None
        self.restart()
        self.sql("CHECKPOINT")
        running = {name: self.sql(f"SHOW {name}") for name in DURABLE_SETTINGS}
        wrong = {k: v for k, v in running.items() if v != DURABLE_SETTINGS[k]}
        if wrong:
            raise SourceError(f"the recovered PostgreSQL in {self.data_dir} runs with "
                              + ", ".join(f"{k}={v}" for k, v in wrong.items()),
                              hint="a setting in postgresql.conf overrides drtool's; fix it and restart")
        return running

    def shutdown(self) -> None:
        """Stop the server cleanly (shutdown checkpoint), keeping its directory."""
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 10)
        self._pid = None

    def restart(self) -> None:
        if not self._pg_ctl_start(last=True):
            raise SourceError(f"PostgreSQL in {self.data_dir} did not start again")
        self._pid = self._read_pid()

    def sql(self, query: str, database: str = "postgres") -> str:
        """One value, over TCP as the superuser (password through the environment, never argv)."""
        assert self.port is not None
        env = {"PGPASSWORD": self.password.reveal()} if self.password else {}
        argv = [self._tool("psql"), "-X", "-w", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
                "-U", SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-c", query]
        return self._runner.run(argv, env=env, timeout=INITDB_TIMEOUT).text.strip()

    @property
    def _os_user(self) -> str | None:
        return OS_USER if os.geteuid() == 0 else None

    def _argv(self, argv: list[str]) -> list[str]:
        """As root, run as the postgres OS user: initdb and pg_ctl refuse root."""
        if self._os_user is None:
            return argv
        runuser = require("runuser", why=f"to run {os.path.basename(argv[0])} as the {OS_USER} OS user")
        return [runuser, "-u", OS_USER, "--", *argv]

    def start_argv(self) -> list[str]:
        logfile = self.dir / "server.log"  # type: ignore[operator]
        return self._argv([self._tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(logfile), "-w", "start"])

    def stop_argv(self) -> list[str]:
        return self._argv([self._tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def stop(self) -> None:
        """Stop the server, kill what survived, remove the directory. Idempotent, never raises."""
        if self.dir is None:
            return
        pid = self._pid or self._read_pid()
        if self.bin_dir and (self.data_dir / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 10)
            except Exception as exc:  # noqa: BLE001 - fall through to the kill below
                log.warning("pg_ctl stop failed, killing the server: %s", exc)
        # Pids are looked up only now and checked to be postgres: a pid recycled
        # since the server started must never be killed.
        if pid is not None and _is_postgres(pid):
            _kill_all([pid, *(c for c in _children(pid) if _is_postgres(c))])
        if self.port:
            _wait_port_free(self.port)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self._pid = None

    # ------------------------------------------------------------ public info

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "scratch PostgreSQL is not started"
        return self.dir / "data"

    @property
    def socket_dir(self) -> str:
        assert self.dir is not None, "scratch PostgreSQL is not started"
        return str(self.dir)

    def target(self) -> DbTarget:
        assert self.port is not None and self.bin_dir is not None, "scratch PostgreSQL is not started"
        env = {
            "DRTOOL_PG_HOST": "127.0.0.1",
            "DRTOOL_PG_PORT": str(self.port),
            "DRTOOL_PG_USER": SUPERUSER,
            # libpq's own variables too, so a drill `command` step can just run psql.
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": SUPERUSER,
        }
        return DbTarget(kind="postgres", host="127.0.0.1", port=self.port, user=SUPERUSER,
                        password=self.password, bin_dir=self.bin_dir, env=env)

    def connection_hint(self) -> str:
        if self.port is None or self.bin_dir is None or self.dir is None:
            return "scratch PostgreSQL is not running"
        psql = shlex.join([os.path.join(self.bin_dir, "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                           "-U", SUPERUSER, "postgres"])
        stop = shlex.join(self.stop_argv())
        if self.durable:
            return f"connect: {psql}\nstop:    {stop}\nstart:   {shlex.join(self.start_argv())}"
        return f"connect: {psql}\nstop:    {stop} && rm -rf {shlex.quote(str(self.dir))}"

    # ------------------------------------------------------------ steps

    def _tool(self, name: str) -> str:
        assert self.bin_dir is not None
        return os.path.join(self.bin_dir, name)

    def _initdb(self) -> None:
        argv = [self._tool("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8",
                "--locale=C.UTF-8", "--auth=trust"]
        if not self.durable:
            argv.append("--no-sync")      # a crash just means a new drill
        pwfile = None
        if self.password is not None:
            # The password goes through a 0600 file inside the 0700 dir, never argv.
            pwfile = self.dir / "pwfile"  # type: ignore[operator]
            _write_private(pwfile, self.password.reveal() + "\n")
            argv.append(f"--pwfile={pwfile}")
        try:
            self._runner.run(self._argv(argv), timeout=INITDB_TIMEOUT)
        except CommandError as exc:
            raise SourceError(f"initdb failed for the scratch PostgreSQL in {self.dir}: {exc.message}",
                              hint=f"check that the {OS_USER} OS user exists and can enter {self.dir}") from None
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)

    def _write_hba(self) -> None:
        _write_owned(self.data_dir / "pg_hba.conf", hba_conf(self.password is not None, durable=self.durable),
                     append=False)

    def _write_conf(self, port: int) -> None:
        if self.durable:
            # A production server's settings live in postgresql.conf (a separate file kept
            # by the include below, rewritten on a port retry); auto.conf holds the load tuning.
            _write_owned(self.data_dir / "drtool.conf", server_conf(port, self.socket_dir, tuning=False), append=False)
            conf = self.data_dir / "postgresql.conf"
            if "include_if_exists = 'drtool.conf'" not in conf.read_text():
                _write_owned(conf, "\ninclude_if_exists = 'drtool.conf'\n", append=True)
            return
        # postgresql.auto.conf is read last and rewritten on every retry, so settings win.
        _write_owned(self.data_dir / "postgresql.auto.conf", server_conf(port, self.socket_dir), append=False)

    def _pg_ctl_start(self, *, last: bool) -> bool:
        logfile = self.dir / "server.log"  # type: ignore[operator]
        try:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT), "-l", str(logfile), timeout=START_TIMEOUT + 15)
            return True
        except CommandError as exc:
            tail = _log_tail(logfile)
            if not last and "could not bind" in tail:
                log.info("port %s was taken, retrying with another", self.port)
                return False
            raise SourceError(f"scratch PostgreSQL did not start on 127.0.0.1:{self.port}: {exc.message}\n"
                              f"server log:\n{tail}",
                              hint="see the server log above; is the port or shared memory exhausted?") from None

    def _pg_ctl(self, *args: str, timeout: float) -> None:
        self._runner.run(self._argv([self._tool("pg_ctl"), "-D", str(self.data_dir), *args]), timeout=timeout)

    def _read_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


# ------------------------------------------------------------------ helpers

def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if os.geteuid() == 0:
        shutil.chown(path, OS_USER, OS_USER)


def _write_owned(path: Path, text: str, *, append: bool) -> None:
    with open(path, "a" if append else "w") as fh:
        fh.write(text)
    if not append:
        path.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(path, OS_USER, OS_USER)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (postgres backends are the postmaster's children)."""
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        # Field 4 is the ppid; the comm field (2) may hold spaces, so split after its ')'.
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(Path(stat).parent.name))
    return kids


def _is_postgres(pid: int) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe).startswith(("postgres", "postmaster")) and _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it holds no port or files, so it counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _kill_all(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_port_free(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            # SO_REUSEADDR as the server uses it: TIME_WAIT leftovers do not hold the port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.1)
    log.warning("port %s still held after stopping the scratch PostgreSQL", port)
