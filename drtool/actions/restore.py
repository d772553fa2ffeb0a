"""Use case: restore one source of a policy from a chosen snapshot set."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from drtool.actions.common import RepoHandle, open_repo, restic_host
from drtool.actions.select import FINGERPRINT_STREAM, SnapshotSet, choose, snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import Policy, Source
from drtool.engine.reader import ResticStreamReader
from drtool.errors import UsageError
from drtool.secrets import Secret
from drtool.sources.base import DbTarget, Fingerprint


@dataclass
class RestoreOutcome:
    source: str
    kind: str
    snapshot: SnapshotSet
    target: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "snapshot": self.snapshot.to_dict(),
                "target": self.target, **self.detail}


def find_set(handle: RepoHandle, policy: Policy, source: Source, selector: Any, *, host: str) -> SnapshotSet:
    return choose(snapshot_sets(handle.restic, policy, source, host=host), selector)


def read_fingerprint(handle: RepoHandle, chosen: SnapshotSet) -> Fingerprint:
    reader = ResticStreamReader(handle.restic, chosen.streams)
    return json.loads(reader.read_bytes(FINGERPRINT_STREAM))


def restore_files_set(restic, chosen: SnapshotSet, dest: Path, *, force: bool = False) -> dict[str, Any]:  # noqa: ANN001
    """Restore a files set: a restic tree snapshot, or a tar stream from a remote host."""
    if chosen.files is not None:
        from drtool.sources.files import restore_files
        return restore_files(restic, chosen.files.id, dest, force=force)
    from drtool.sources.remote_files import restore_tar
    [(stream, snap)] = chosen.streams.items()
    return restore_tar(restic, snap.id, stream, dest, force=force)


def verify_files_set(restic, chosen: SnapshotSet, dest: Path):  # noqa: ANN001, ANN201 - TreeDiff
    """Compare a restored tree with its snapshot (listing) or archive (content too)."""
    if chosen.files is not None:
        from drtool.sources.files import verify_tree
        return verify_tree(restic, chosen.files.id, dest)
    from drtool.sources.remote_files import verify_tar_tree
    [(stream, snap)] = chosen.streams.items()
    return verify_tar_tree(restic, snap.id, stream, dest)


def parse_db_target(kind: str, target: str) -> DbTarget:
    """postgresql://user@host:port/db, mysql://user@host:port/db or a sqlite file path.

    Passwords are not accepted in the URL (they would sit in argv and shell
    history); use PGPASSWORD / MYSQL_PWD in the environment instead.
    """
    if kind == "sqlite":
        return DbTarget(kind="sqlite", path=Path(target))
    url = urlparse(target)
    schemes = {"postgres": ("postgres", "postgresql"), "mariadb": ("mysql", "mariadb")}[kind]
    if url.scheme not in schemes:
        raise UsageError(f"--target for a {kind} source must be a URL like {schemes[0]}://user@127.0.0.1:PORT/dbname, "
                         f"got {target!r}")
    if url.password:
        raise UsageError("do not put a password in --target (it would be visible in the process list)",
                         hint="export PGPASSWORD or MYSQL_PWD instead")
    import os
    pw_env = "PGPASSWORD" if kind == "postgres" else "MYSQL_PWD"
    password = Secret(os.environ[pw_env]) if os.environ.get(pw_env) else None
    return DbTarget(kind=kind, host=url.hostname or "127.0.0.1",
                    port=url.port or (5432 if kind == "postgres" else 3306),
                    user=unquote(url.username) if url.username else None,
                    password=password, database=url.path.lstrip("/") or None)


def restore_source(settings: Settings, policy: Policy, source_name: str, *, target: str,
                   selector: Any = "latest", force: bool = False, host: str | None = None) -> RestoreOutcome:
    """`host`: restore another machine's backup on purpose; default this host's."""
    try:
        source = policy.source(source_name)
    except KeyError:
        names = ", ".join(s.name for s in policy.sources)
        raise UsageError(f"policy {policy.name!r} has no source {source_name!r} (it has: {names})") from None
    handle = open_repo(settings, policy.repository)
    chosen = find_set(handle, policy, source, selector, host=host or restic_host(settings))
    if source.kind == "files":
        dest = Path(target).resolve()
        detail = restore_files_set(handle.restic, chosen, dest, force=force)
        return RestoreOutcome(source.name, "files", chosen, str(dest), detail)
    from drtool.execute import LocalRunner
    from drtool.sources import database_source
    from drtool.sources.base import verify_restored

    db = database_source(source, LocalRunner())
    dbt = parse_db_target(source.kind, target)
    expected = read_fingerprint(handle, chosen)
    reader = ResticStreamReader(handle.restic, chosen.streams, sizes=expected.get("stream_bytes"))
    result = db.restore(reader, dbt, force=force)
    names = result.databases
    check = verify_restored(db, dbt, names, expected)
    detail = {"databases": names, "phases": [p.__dict__ for p in result.phases],
              "verified": check.ok, "problems": check.problems, "verification": check.summary()}
    return RestoreOutcome(source.name, source.kind, chosen, dbt.describe(), detail)
