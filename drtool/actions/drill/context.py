"""What a drill holds while it runs: the chosen snapshot sets, what was restored where, the
runners of the hosts it works on, and the scratch instances, torn down like `always:`.

Every scratch instance, temp directory and SSH connection is entered into one ExitStack;
leaving the `with DrillContext(...)` block (normally, on error or on Ctrl-C) tears them
all down in reverse order, unless `keep` is set, in which case `kept` says how to reach
each scratch instance.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any

from drtool.actions.common import RepoHandle, restic_host
from drtool.actions.select import SnapshotSet, choose, snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import Policy, Source
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import DrtoolError
from drtool.execute import LocalRunner, Runner
from drtool.scratch.common import private_dir
from drtool.sources.base import DatabaseSource, DbTarget, Fingerprint
from drtool.tags import FINGERPRINT_STREAM

log = logging.getLogger(__name__)


@dataclass
class Restored:
    """One source restored by this drill, here (host None) or on a host over SSH."""

    source: Source
    chosen: SnapshotSet
    target: DbTarget | None = None          # databases (as the restoring host sees them)
    directory: PurePath | None = None       # files (a path on that host)
    databases: list[str] = field(default_factory=list)
    db: DatabaseSource | None = None
    fingerprint: Fingerprint | None = None
    scratch: bool = True
    host: str | None = None                 # None: this machine
    runner: Runner | None = None            # how to reach `host` (verify steps use it)
    tables: list[str] | None = None         # a partial restore (tables:/schemas:): what it restored
    paths: list[str] | None = None          # ... of files (paths:): the patterns it restored

    @property
    def where(self) -> str:
        return f"host {self.host}" if self.host else "this machine"


class DrillContext:
    def __init__(self, settings: Settings, policy: Policy, handle: RepoHandle, *, keep: bool = False,
                 playbook_path: str | None = None, cancel: threading.Event | None = None,
                 host: str | None = None) -> None:
        self.settings = settings
        self.cancel = cancel                 # set by the daemon on SIGTERM
        self.playbook_path = playbook_path   # relative paths in steps are resolved beside it
        self.policy = policy
        self.handle = handle
        self.keep = keep
        # Whose backups are drilled: this host's unless asked otherwise (a shared repository
        # holds other hosts' sets of the same policy, with fingerprints of their own).
        self.host = host or restic_host(settings)
        self.sets: dict[str, SnapshotSet] = {}
        self.set_errors: dict[str, DrtoolError] = {}
        self.restored: dict[str, Restored] = {}
        self.kept: list[str] = []
        self._fingerprints: dict[str, Fingerprint] = {}
        self._runners: dict[str, Runner] = {}
        self._stack = ExitStack()
        self._lock = threading.Lock()

    @property
    def restic(self) -> Restic:
        return self.handle.restic

    def __enter__(self) -> "DrillContext":
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stack.close()

    # ------------------------------------------------------------ where steps run

    def runner(self, host: str | None, *, untrusted: bool = False) -> Runner:
        """Where a step acts: this machine (host None) or a configured host over SSH.

        One SSH connection per host for the whole drill, closed when the drill ends.
        `untrusted` (a `command:` step): locally the program runs contained and with a clean
        environment; over SSH the channel carries only the variables the step is given."""
        if host is None:
            return LocalRunner(contain=True, inherit_env=False) if untrusted else LocalRunner()
        with self._lock:
            if host not in self._runners:
                from drtool.remote import ssh_runner
                runner = ssh_runner(self.settings, host)
                self._runners[host] = runner
                self._stack.callback(runner.close)
            return self._runners[host]

    # ------------------------------------------------------------ snapshots

    def choose(self, selector: Any, source_names: list[str], *, now: datetime) -> dict[str, Any] | None:
        """Pick one snapshot set per source; the oldest pick is the drill's snapshot (its RPO)."""
        for name in source_names:
            try:
                source = self.policy.source(name)
                self.sets[name] = choose(snapshot_sets(self.restic, self.policy, source, host=self.host),
                                         selector, now=now)
            except DrtoolError as exc:
                self.set_errors[name] = exc
        if not self.sets:
            return None
        oldest = min(self.sets.values(), key=lambda s: s.time)
        return {"id": oldest.primary.id, "short_id": oldest.primary.short_id, "time": oldest.time.isoformat(),
                "source": oldest.source,
                "sources": {name: s.to_dict() for name, s in self.sets.items()}}

    def snapshot_set(self, source_name: str) -> SnapshotSet:
        if source_name in self.set_errors:
            raise self.set_errors[source_name]
        if source_name not in self.sets:
            self.choose("latest", [source_name], now=datetime.now().astimezone())
            return self.snapshot_set(source_name)
        return self.sets[source_name]

    def fingerprint(self, source_name: str) -> Fingerprint:
        """The fingerprint recorded at backup time, read from the snapshot set itself."""
        if source_name not in self._fingerprints:
            chosen = self.snapshot_set(source_name)
            reader = ResticStreamReader(self.restic, chosen.streams)
            self._fingerprints[source_name] = json.loads(reader.read_bytes(FINGERPRINT_STREAM))
        return self._fingerprints[source_name]

    def restored_source(self, source_name: str) -> Restored:
        try:
            return self.restored[source_name]
        except KeyError:
            raise DrtoolError(f"source {source_name!r} was not restored earlier in this drill",
                              hint=f"add a step `restore: {{source: {source_name}}}` before this one") from None

    # ------------------------------------------------------------ scratch instances

    def _enter(self, manager: Any, source_name: str) -> Any:
        with self._lock:
            instance = self._stack.enter_context(manager)
        if self.keep and hasattr(instance, "connection_hint"):
            self.kept.append(f"{source_name}: {instance.connection_hint()}")
        return instance

    def scratch_target(self, source: Source, fingerprint: Fingerprint) -> DbTarget:
        """A throwaway instance of the source's kind on this machine, torn down with the drill."""
        if source.kind == "postgres":
            from drtool.scratch.postgres import ScratchPostgres
            return self._enter(ScratchPostgres(min_major=pg_major(fingerprint), keep=self.keep), source.name).target()
        if source.kind == "mariadb":
            from drtool.scratch.mariadb import ScratchMariadb
            return self._enter(ScratchMariadb(keep=self.keep), source.name).target()
        from drtool.scratch.sqlite import ScratchSqlite
        return self._enter(ScratchSqlite(keep=self.keep), source.name).target()

    def scratch_dir(self, source_name: str) -> Path:
        path = private_dir(f"drill-{_safe(source_name)}")
        if self.keep:
            self.kept.append(f"{source_name}: restored into {path} (remove it when done)")
        else:
            with self._lock:
                self._stack.callback(shutil.rmtree, path, ignore_errors=True)
        return path

    # ------------------------------------------------------------ for command steps

    def command_env(self) -> dict[str, str]:
        """How a `command` step reaches what was restored (no secrets of named servers)."""
        env: dict[str, str] = {"DRTOOL_POLICY": self.policy.name}
        for name, restored in self.restored.items():
            key = _safe(name).upper().replace("-", "_").replace(".", "_")
            if restored.directory is not None:
                env["DRTOOL_RESTORE_DIR"] = str(restored.directory)
                env[f"DRTOOL_RESTORE_DIR_{key}"] = str(restored.directory)
            if restored.target is not None:
                env.update(restored.target.env)
                if restored.databases:
                    env[f"DRTOOL_DATABASE_{key}"] = restored.databases[0]
                if restored.scratch and restored.target.password is not None:
                    # A throwaway instance's generated password; the environment is
                    # readable only by this user, never logged or reported.
                    var = "PGPASSWORD" if restored.target.kind == "postgres" else "MYSQL_PWD"
                    env[var] = restored.target.password.reveal()
        return env


def pg_major(fingerprint: Fingerprint) -> int | None:
    """Major version of the server that was dumped: 150004 -> 15, 90624 -> 9."""
    num = int(fingerprint.get("server_version_num") or 0)
    if num <= 0:
        return None
    return num // 10000


def sources_used(steps: list[Any]) -> list[str]:
    names: list[str] = []
    for step in steps:
        name = getattr(step.spec, "source", None)
        if name and name not in names:
            names.append(name)
    return names


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
