"""What a drill holds while it runs: the chosen snapshot sets, what was restored
where, and the scratch instances, torn down like `always:`.

Every scratch instance and temp directory is entered into one ExitStack;
leaving the `with DrillContext(...)` block (normally, on error or on Ctrl-C)
tears them all down in reverse order, unless `keep` is set, in which case
`kept` says how to reach each one.
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
from pathlib import Path
from typing import Any

from drtool.actions.common import RepoHandle, restic_host
from drtool.actions.select import FINGERPRINT_STREAM, SnapshotSet, choose, snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import Playbook, Policy, Source
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import DrtoolError
from drtool.scratch.common import private_dir
from drtool.sources.base import DatabaseSource, DbTarget, Fingerprint

log = logging.getLogger(__name__)


@dataclass
class Restored:
    """One source restored by this drill."""

    source: Source
    chosen: SnapshotSet
    target: DbTarget | None = None          # databases
    directory: Path | None = None           # files
    databases: list[str] = field(default_factory=list)
    db: DatabaseSource | None = None
    fingerprint: Fingerprint | None = None
    scratch: bool = True


class DrillContext:
    def __init__(self, settings: Settings, policy: Policy, handle: RepoHandle, *, keep: bool = False,
                 playbook_path: str | None = None, cancel: threading.Event | None = None,
                 host: str | None = None) -> None:
        self.settings = settings
        # Whose backups are drilled: this host's unless asked otherwise (a shared repository
        # holds other hosts' sets of the same policy, with fingerprints of their own).
        self.host = host or restic_host(settings)
        self.cancel = cancel                 # set by the daemon on SIGTERM
        self.playbook_path = playbook_path   # relative paths in steps are resolved beside it
        self.policy = policy
        self.handle = handle
        self.keep = keep
        self.sets: dict[str, SnapshotSet] = {}
        self.set_errors: dict[str, DrtoolError] = {}
        self.restored: dict[str, Restored] = {}
        self.kept: list[str] = []
        self._fingerprints: dict[str, Fingerprint] = {}
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

    def scratch_postgres(self, source_name: str, fingerprint: Fingerprint) -> DbTarget:
        from drtool.scratch.postgres import ScratchPostgres
        return self._enter(ScratchPostgres(min_major=pg_major(fingerprint), keep=self.keep), source_name).target()

    def scratch_mariadb(self, source_name: str) -> DbTarget:
        from drtool.scratch.mariadb import ScratchMariadb
        return self._enter(ScratchMariadb(keep=self.keep), source_name).target()

    def scratch_sqlite(self, source_name: str) -> DbTarget:
        try:
            from drtool.scratch.sqlite import ScratchSqlite
        except ImportError:
            path = self.scratch_dir(source_name) / f"{source_name}.sqlite"
            return DbTarget(kind="sqlite", host=None, path=path, env={"DRTOOL_SQLITE_PATH": str(path)})
        return self._enter(ScratchSqlite(keep=self.keep), source_name).target()

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


def sources_used(playbook: Playbook) -> list[str]:
    names: list[str] = []
    for step in playbook.steps:
        name = getattr(step.spec, "source", None)
        if name and name not in names:
            names.append(name)
    return names


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
