"""A PostgreSQL cluster made from a physical base backup and WAL replay, then promoted.

    with RecoveryPostgres(major=15) as pg:          # a private 0700 directory (or `home`)
        pg.extract(relay_into_tar)                  # the base backup's tar, as the postgres user
        pg.configure(restore_command, target)       # conf sanitised, recovery.signal, restore_command
        pg.recover(timeout)                         # replay, promote; retried once without the target
        pg.settle()                                 # recovery settings removed; durable: checked, password

Configuration of the backed-up server is kept where it is safe, because a recovered server
should run like the old one (memory, extensions, roles): postgresql.conf and
postgresql.auto.conf are kept with the settings that would point the new server at the old
one's files, network or archive commented out (`UNSAFE_KEYS`), and drtool's own settings go
into `drtool.conf`, included last from postgresql.conf (loopback only, its own port and
socket, archive_mode off, hot_standby off). The recovery settings live in
postgresql.auto.conf until the server promoted, then they are removed.

A target time beyond the last commit in the WAL makes PostgreSQL 13+ stop with "recovery
ended before configured recovery target was reached". When the caller knows the WAL holds
everything before the target (the restore plan's window), replaying to the end of that WAL
is the same state, so recovery is started once more without the target.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from drtool.errors import SourceError
from drtool.execute import LocalRunner
from drtool.scratch.postgres import (
    DURABLE_SETTINGS,
    OS_USER,
    ScratchPostgres,
    _conf_quote,
    _is_postgres,
    _log_tail,
    _write_owned,
    hba_conf,
    installed_majors,
)
from drtool.sources.wal_names import parse_lsn

log = logging.getLogger(__name__)

UNSAFE_KEYS = frozenset({
    "data_directory", "hba_file", "ident_file", "external_pid_file", "config_file",
    "listen_addresses", "port", "unix_socket_directories", "unix_socket_group", "unix_socket_permissions",
    "archive_mode", "archive_command", "archive_library", "restore_command", "archive_cleanup_command",
    "recovery_end_command", "recovery_target", "recovery_target_name", "recovery_target_time",
    "recovery_target_xid", "recovery_target_lsn", "recovery_target_inclusive", "recovery_target_timeline",
    "recovery_target_action", "primary_conninfo", "primary_slot_name", "promote_trigger_file", "hot_standby",
    "logging_collector", "log_directory", "ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file",
    "ssl_crl_dir", "synchronized_standby_slots", "synchronous_standby_names",
})
# A drill's cluster replays fast: nothing here survives a recovered production server.
RECOVERY_TUNING = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "autovacuum": "off",
                   "max_wal_size": "8GB", "checkpoint_timeout": "30min", "shared_buffers": "256MB",
                   "maintenance_work_mem": "512MB"}
RECOVERY_BEGIN = "# drtool recovery: removed once the server promoted"
RECOVERY_END = "# end of drtool recovery"
NOT_REACHED = "recovery ended before configured recovery target was reached"
READY = "database system is ready to accept connections"


def sanitize_conf(text: str, exists: Callable[[str], bool] = os.path.exists,
                  also: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """Pure (but for `exists`): comment out UNSAFE_KEYS (and `also`) and includes of files that are
    not there; returns the text and the keys it disabled."""
    out, dropped = [], []
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)\s*(.*)", line)
        key = match.group(1).lower() if match else None
        if key in UNSAFE_KEYS or key in also:
            out.append(f"#drtool# {line}")
            dropped.append(key)                      # type: ignore[arg-type]
        elif key in ("include", "include_dir") and not exists(_unquote(match.group(3))):  # type: ignore[union-attr]
            out.append(f"#drtool# {line}")
            dropped.append(key)                      # type: ignore[arg-type]
        else:
            out.append(line)
    return "\n".join(out) + "\n", sorted(set(dropped))


def _unquote(value: str) -> str:
    value = value.split("#", 1)[0].strip()
    return value[1:-1].replace("''", "'") if len(value) >= 2 and value[0] == value[-1] == "'" else value


def recovery_block(restore_command: str, target: datetime | None) -> str:
    """Pure: the recovery settings (postgresql.auto.conf) for a target time or the end of the WAL."""
    lines = [RECOVERY_BEGIN, f"restore_command = {_conf_quote(restore_command)}",
             "recovery_target_timeline = 'latest'", "recovery_target_action = 'promote'"]
    if target is not None:
        when = target.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        lines += [f"recovery_target_time = '{when}'", "recovery_target_inclusive = on"]
    return "\n".join([*lines, RECOVERY_END]) + "\n"


def strip_recovery(text: str) -> str:
    """Pure: postgresql.auto.conf without drtool's recovery block."""
    return re.sub(re.escape(RECOVERY_BEGIN) + r".*?" + re.escape(RECOVERY_END) + r"\n?", "", text, flags=re.DOTALL)


def parse_history(text: str) -> list[tuple[int, int, str]]:
    """Pure: (parent timeline, switch LSN, reason) lines of a timeline history file."""
    found = []
    for line in text.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit():
            found.append((int(parts[0]), parse_lsn(parts[1]), parts[2] if len(parts) > 2 else ""))
    return found


@dataclass
class RecoveryEnd:
    timeline: int
    switch_lsn: int | None              # where the old timeline ended: the recovery point in the WAL
    reason: str                         # "no recovery target specified", "before 2026-... " ...
    last_replayed: datetime | None      # pg_last_xact_replay_timestamp()
    retried_without_target: bool


class RecoveryPostgres(ScratchPostgres):
    """See the module docstring. `durable`: a production server (no fast settings, a password)."""

    def __init__(self, major: int, *, durable: bool = False, home: Path | None = None, port: int | None = None,
                 keep: bool = False) -> None:
        super().__init__(min_major=major, keep=keep, durable=durable, home=home, port=port)
        self.exact_major = major
        self.dropped: list[str] = []
        self._log_offset = 0

    # ------------------------------------------------------------ a directory, no initdb

    def start(self) -> None:
        majors = installed_majors()
        if self.exact_major not in majors:
            have = ", ".join(str(m) for m in sorted(majors)) or "none"
            raise SourceError(f"the base backup is of PostgreSQL {self.exact_major}; a physical backup needs "
                              f"exactly that major version's server (installed: {have})",
                              hint=f"apt-get install postgresql-{self.exact_major}")
        self.major, self.bin_dir = self.exact_major, majors[self.exact_major]
        from drtool.scratch.common import claim_dir, private_dir
        self.dir = claim_dir(self.home, owner=self._os_user) if self.home else \
            private_dir("pgpitr", owner=self._os_user, base=self.base_dir)
        self.data_dir.mkdir(mode=0o700)
        if self._os_user:
            shutil.chown(self.data_dir, OS_USER, OS_USER)

    def extract(self, feed: Callable[[list[str], LocalRunner], int]) -> int:
        """`feed(tar argv, runner)` relays the base backup into `tar -x` run as the server's OS user."""
        argv = ["tar", "-x", "-f", "-", "-C", str(self.data_dir), "--no-same-owner"]
        return feed(argv, LocalRunner(user=self._os_user))

    # ------------------------------------------------------------ configuration

    def configure(self, restore_command: str, target: datetime | None, port: int) -> None:
        data = self.data_dir
        for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            (data / stale).unlink(missing_ok=True)
        # A production server runs durable whatever the old one did; a drill's runs fast.
        also = frozenset(DURABLE_SETTINGS) if self.durable else frozenset(RECOVERY_TUNING)
        conf = data / "postgresql.conf"
        text, dropped = sanitize_conf(conf.read_text(), also=also) if conf.exists() else \
            ("# drtool: the original server kept its configuration outside the data directory\n", [])
        auto = data / "postgresql.auto.conf"
        auto_text, auto_dropped = sanitize_conf(auto.read_text(), also=also) if auto.exists() else ("", [])
        self.dropped = sorted(set(dropped) | set(auto_dropped))
        _write_owned(conf, text + "\ninclude_if_exists = 'drtool.conf'\n", append=False)
        self.port = port
        self._write_drtool_conf(port)
        _write_owned(auto, strip_recovery(auto_text) + recovery_block(restore_command, target), append=False)
        _write_owned(data / "pg_hba.conf", "# drtool: recovery in progress, socket only\nlocal all all trust\n",
                     append=False)
        if not (data / "pg_ident.conf").exists():
            _write_owned(data / "pg_ident.conf", "", append=False)
        _write_owned(data / "recovery.signal", "", append=False)

    def _write_drtool_conf(self, port: int) -> None:
        settings = {"listen_addresses": "'127.0.0.1'", "port": str(port),
                    "unix_socket_directories": _conf_quote(self.socket_dir), "logging_collector": "off",
                    "archive_mode": "off", "hot_standby": "off", "ssl": "off"}
        chosen = DURABLE_SETTINGS if self.durable else RECOVERY_TUNING
        settings.update({k: v if v.isalnum() else _conf_quote(v) for k, v in chosen.items()})
        title = "a recovered production server" if self.durable else "a drill's throwaway recovery"
        lines = [f"# drtool: {title}; settings of the old server that pointed elsewhere were disabled: "
                 f"{', '.join(self.dropped) or 'none'}"]
        _write_owned(self.data_dir / "drtool.conf", "\n".join(lines + [f"{k} = {v}" for k, v in settings.items()])
                     + "\n", append=False)

    def retarget(self, restore_command: str, target: datetime | None) -> None:
        auto = self.data_dir / "postgresql.auto.conf"
        _write_owned(auto, strip_recovery(auto.read_text()) + recovery_block(restore_command, target), append=False)

    # ------------------------------------------------------------ replay

    def recover(self, restore_command: str, target: datetime | None, *, timeout: float,
                may_end_early: bool = True) -> RecoveryEnd:
        retried = False
        outcome = self._replay(timeout)
        if outcome == "not-reached" and target is not None and may_end_early:
            # The plan proved the WAL holds every commit before the target: its end is that state.
            log.info("no commit after %s in the WAL: replaying to its end (the same state)", target.isoformat())
            self.retarget(restore_command, None)
            retried = True
            outcome = self._replay(timeout)
        if outcome != "promoted":
            raise SourceError(f"recovery stopped: {outcome}\nserver log:\n{_log_tail(self._logfile, 25)}",
                              hint="see the server log above")
        return self._end(retried)

    @property
    def _logfile(self) -> Path:
        return self.dir / "server.log"  # type: ignore[operator]

    def _replay(self, timeout: float) -> str:
        """Start the server (no wait: replay may be long) and watch it until it promoted or stopped."""
        self._log_offset = self._logfile.stat().st_size if self._logfile.exists() else 0
        self._pg_ctl("start", "-W", "-l", str(self._logfile), timeout=60)
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            text = self._new_log()
            if NOT_REACHED in text:
                self._wait_stopped()
                return "not-reached"
            if READY in text and not (self.data_dir / "recovery.signal").exists():
                self._pid = self._read_pid()
                return "promoted"
            if self._postmaster_gone(time.monotonic() - started):
                fatal = [ln for ln in self._new_log().splitlines() if "FATAL" in ln or "PANIC" in ln]
                return fatal[-1] if fatal else "the server exited during recovery"
            time.sleep(0.3)
        raise SourceError(f"recovery did not finish within {timeout:.0f}s", hint="raise the step's timeout")

    def _new_log(self) -> str:
        try:
            with open(self._logfile, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _postmaster_gone(self, running_for: float) -> bool:
        pid = self._read_pid()
        if pid is None:                      # not written yet, or removed by a server that stopped
            return running_for > 5.0
        return not _is_postgres(pid)

    def _wait_stopped(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.data_dir / "postmaster.pid").exists():
            pid = self._read_pid()
            if pid is None or not _is_postgres(pid):
                break
            time.sleep(0.2)

    def _end(self, retried: bool) -> RecoveryEnd:
        timeline = int(self.socket_sql("SELECT timeline_id FROM pg_control_checkpoint()"))
        last = self.socket_sql("SELECT pg_last_xact_replay_timestamp()")
        history = self.data_dir / "pg_wal" / f"{timeline:08X}.history"
        entries = parse_history(history.read_text()) if history.exists() else []
        switch, reason = (entries[-1][1], entries[-1][2]) if entries else (None, "")
        return RecoveryEnd(timeline, switch, reason, datetime.fromisoformat(last) if last else None, retried)

    def socket_sql(self, query: str, database: str = "postgres") -> str:
        """One value over the private unix socket, as the postgres OS user."""
        argv = self._argv([self._tool("psql"), "-X", "-w", "-A", "-t", "-h", self.socket_dir, "-p", str(self.port),
                           "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-c", query])
        return LocalRunner().run(argv, timeout=600).text.strip()

    # ------------------------------------------------------------ afterwards

    def settle(self, password: str | None = None) -> dict[str, str]:
        """Recovery settings out; TCP logins from 127.0.0.1 (with `password` for the superuser on a
        durable server); durable: checkpointed and its durability settings checked."""
        auto = self.data_dir / "postgresql.auto.conf"
        _write_owned(auto, strip_recovery(auto.read_text()), append=False)
        if password is not None:
            self.socket_sql(f"ALTER ROLE postgres PASSWORD {_sql_literal(password)}")
        _write_owned(self.data_dir / "pg_hba.conf", hba_conf(password is not None, durable=self.durable),
                     append=False)
        self.socket_sql("SELECT pg_reload_conf()")
        if not self.durable:
            return {}
        self.socket_sql("CHECKPOINT")
        running = {name: self.socket_sql(f"SHOW {name}") for name in DURABLE_SETTINGS}
        wrong = {k: v for k, v in running.items() if v != DURABLE_SETTINGS[k]}
        if wrong:
            raise SourceError(f"the recovered PostgreSQL in {self.data_dir} runs with "
                              + ", ".join(f"{k}={v}" for k, v in wrong.items()),
                              hint="the old server's postgresql.conf turns durability off; fix it and restart")
        return running


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
