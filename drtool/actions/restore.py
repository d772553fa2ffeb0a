"""Use case: restore one source of a policy from a chosen snapshot set."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from drtool.actions.common import RepoHandle, open_repo, restic_host
from drtool.actions.dry_run import database_plan, files_plan, matching_tables, target_state
from drtool.actions.select import FINGERPRINT_STREAM, SnapshotSet, choose, snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import PART_SOURCE_KINDS, Policy, RestoreStep, Source
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import UsageError
from drtool.execute import Runner
from drtool.report.units import human_bytes
from drtool.secrets import Secret
from drtool.sources.base import DbTarget, Fingerprint
from drtool.sources.patterns import check_pattern


RESTORE_TIMEOUT_S = 24 * 3600.0


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


def restore_files_set(restic, chosen: SnapshotSet, dest: Path, *, force: bool = False,  # noqa: ANN001
                      include: Sequence[str] = ()) -> dict[str, Any]:
    """Restore a files set: a restic tree snapshot, or a tar stream from a remote host.

    `include`: only the entries these patterns select (restic --include; sources/patterns.py)."""
    refuse_paths_of_tar(chosen, include)
    if chosen.files is not None:
        from drtool.sources.files import restore_files
        return restore_files(restic, chosen.files.id, dest, force=force, include=include)
    from drtool.sources.remote_files import restore_tar
    [(stream, snap)] = chosen.streams.items()
    return restore_tar(restic, snap.id, stream, dest, force=force)


def dump_path(chosen: SnapshotSet) -> tuple[str, str]:
    """(snapshot id, path to dump): a tree snapshot and a tar-mode stream both dump as a tar."""
    if chosen.files is not None:
        return chosen.files.id, "/"
    [(stream, snap)] = chosen.streams.items()
    return snap.id, "/" + stream


@dataclass(frozen=True)
class FilesRestored:
    bytes: int
    files: int | None            # known for restores on this machine
    phase: str                   # the timed phase, as drill reports name it
    checked: str                 # what checked the content on the way

    def describe(self) -> str:
        count = f"{self.files} files, " if self.files is not None else ""
        return f"{count}{human_bytes(self.bytes)}"


def restore_files_to(restic: Restic, chosen: SnapshotSet, dest: str, runner: Runner, *, force: bool = False,
                     timeout: float = RESTORE_TIMEOUT_S, include: Sequence[str] = ()) -> FilesRestored:
    """Restore a files set (or the `include` patterns of it) into `dest` on the runner's machine.

    Here: `restic restore --verify` (tree snapshots) or the tar relay (tar sets). On a
    host: `restic dump SNAP /` streamed into `tar -x -C DEST` there over the channel."""
    if include and runner.name != "local":
        raise UsageError(f"a part of a files set (paths:) is restored on this machine only, not on {runner.where}",
                         hint="restore it here, or the whole set onto the host")
    if runner.name == "local":
        from drtool.sources.files import tree_size
        restore_files_set(restic, chosen, Path(dest), force=force, include=include)
        files, nbytes = tree_size(Path(dest))
        if chosen.files is not None:
            return FilesRestored(nbytes, files, "download+decrypt+write+verify (restic restore --verify)",
                                 "content hashes re-read and verified by restic")
        return FilesRestored(nbytes, files, "download+decrypt+write (restic dump | tar -x)",
                             "restic checked every blob while reading")
    from drtool.engine.reader import extract_dump
    from drtool.sources.tree_remote import check_remote_dir

    check_remote_dir(runner, dest, force=force)
    snapshot_id, path = dump_path(chosen)
    if force:        # over a tree already there: never through one of its symlinks
        from drtool.sources.restore_guard import check_tar_restore, remote_symlinks
        check_tar_restore(restic, snapshot_id, path, dest, remote_symlinks(runner, dest), where=f" on {runner.where}")
    runner.run(["mkdir", "-p", "-m", "0700", "--", dest], timeout=300)
    nbytes = extract_dump(restic, snapshot_id, path, runner, dest, timeout=timeout, where=f"on {runner.where}")
    return FilesRestored(nbytes, None, f"download+decrypt+send+extract (restic dump | tar -x on {runner.where})",
                         "restic checked every blob while reading")


def verify_files_at(restic: Restic, chosen: SnapshotSet, dest: str, runner: Runner,  # noqa: ANN201 - TreeDiff
                    include: Sequence[str] = ()):
    """Compare a restored tree (or the `include` part of it), here or on a host, with its snapshot."""
    if runner.name == "local":
        return verify_files_set(restic, chosen, Path(dest), include)
    from drtool.sources.tree_remote import verify_remote_tree

    snapshot_id, path = dump_path(chosen)
    return verify_remote_tree(restic, snapshot_id, path, runner, dest, runner.where)


def refuse_missing_paths(restic: Restic, chosen: SnapshotSet, include: Sequence[str]) -> None:
    """A part of a files set (--path, a step's paths:) must be something the snapshot holds."""
    refuse_paths_of_tar(chosen, include)
    if include and not files_plan(restic, chosen, include)["entries"]:
        raise UsageError(f"no entry of snapshot {chosen.primary.short_id} matches {', '.join(include)}; "
                         "nothing was written", hint="browse it with `drtool ls POLICY --source SOURCE`")


def refuse_paths_of_tar(chosen: SnapshotSet, include: Sequence[str]) -> None:
    if include and chosen.files is None:
        raise UsageError(f"--path needs a restic tree snapshot; set {chosen.primary.short_id} of {chosen.source} is "
                         "a tar stream (taken over SSH from a host without restic)",
                         hint="restore it whole, then copy the files you need")


def verify_files_set(restic, chosen: SnapshotSet, dest: Path, include: Sequence[str] = ()):  # noqa: ANN001, ANN201
    """Compare a restored tree with its snapshot (listing) or archive (content too)."""
    if chosen.files is not None:
        from drtool.sources.files import verify_tree
        return verify_tree(restic, chosen.files.id, dest, include)
    from drtool.sources.remote_files import verify_tar_tree
    [(stream, snap)] = chosen.streams.items()
    return verify_tar_tree(restic, snap.id, stream, dest)


def parse_db_target(kind: str, target: str) -> DbTarget:
    """postgresql://user@host:port/db, mysql://user@host:port/db or a sqlite file path.

    Passwords are not accepted in the URL (they would sit in argv and shell
    history); use PGPASSWORD / MYSQL_PWD in the environment instead.
    """
    if kind == "sqlite":
        check_path_target(kind, target)
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


def check_path_target(kind: str, target: str) -> None:
    """Files and SQLite targets are paths: `sqlite:/srv/x.db` would become a ./sqlite:/srv tree."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", target)
    if kind in ("files", "sqlite") and scheme:
        raise UsageError(f"--target for a {kind} source is a {'file' if kind == 'sqlite' else 'directory'} path, "
                         f"not a URL; got {target!r}",
                         hint=f"write the path itself, e.g. {target[scheme.end():] or '/srv/restore'} "
                              f"(or ./{target} if you really mean a relative name with a colon)")


@dataclass(frozen=True)
class Part:
    """Which part of a source to restore; empty: all of it."""

    paths: tuple[str, ...] = ()           # files: restic --include patterns
    tables: tuple[str, ...] = ()          # postgres [SCHEMA.]TABLE, mariadb TABLE
    schemas: tuple[str, ...] = ()         # postgres

    @classmethod
    def of_step(cls, spec: RestoreStep) -> "Part":
        return cls(tuple(spec.paths), tuple(spec.tables), tuple(spec.schemas))

    def __bool__(self) -> bool:
        return bool(self.paths or self.tables or self.schemas)

    def check(self, source: Source) -> None:
        """Bad combinations are usage errors, before anything is read or written."""
        for pattern in self.paths:
            check_pattern(pattern)
        if self.paths and source.kind not in PART_SOURCE_KINDS["paths"]:
            raise UsageError(f"--path is for files sources; {source.name} is {source.kind}",
                             hint="use --table (postgres, mariadb) or --schema (postgres)")
        if (self.tables or self.schemas) and source.kind not in PART_SOURCE_KINDS["tables"]:
            raise UsageError(f"--table / --schema are for postgres and mariadb sources; {source.name} is {source.kind}")
        if self.schemas and source.kind not in PART_SOURCE_KINDS["schemas"]:
            raise UsageError("--schema is for postgres sources (a MariaDB database is its own schema)")

    def restore_kwargs(self, fingerprint: Fingerprint) -> dict[str, Any]:
        """The database restore's keyword arguments for this part; a table or schema the backup
        lacks is a usage error before anything is touched."""
        if not (self.tables or self.schemas):
            return {}
        matching_tables(fingerprint, self.tables, self.schemas)
        return {key: value for key, value in (("tables", self.tables), ("schemas", self.schemas)) if value}


def restore_source(settings: Settings, policy: Policy, source_name: str, *, target: str,
                   selector: Any = "latest", force: bool = False, host: str | None = None,
                   part: Part = Part(), dry_run: bool = False) -> RestoreOutcome:
    """`host`: restore another machine's backup on purpose; default this host's."""
    source = _source(policy, source_name)
    check_path_target(source.kind, target)
    part.check(source)
    handle = open_repo(settings, policy.repository)
    chosen = find_set(handle, policy, source, selector, host=host or restic_host(settings))
    if dry_run:
        return _dry_run(handle, source, chosen, target, part)
    if source.kind == "files":
        return _restore_files(handle, source, chosen, Path(target).resolve(), force, part)
    from drtool.execute import LocalRunner
    from drtool.sources import database_source
    from drtool.sources.base import verify_restored

    db = database_source(source, LocalRunner())
    dbt = parse_db_target(source.kind, target)
    expected = read_fingerprint(handle, chosen)
    kwargs = part.restore_kwargs(expected)                       # unknown names: exit 2, nothing touched
    reader = ResticStreamReader(handle.restic, chosen.streams, sizes=expected.get("stream_bytes"))
    result = db.restore(reader, dbt, force=force, **kwargs)
    names = result.databases
    check = verify_restored(db, dbt, names, expected, tables=result.tables if part else None)
    detail = {"databases": names, "phases": [p.__dict__ for p in result.phases],
              "verified": check.ok, "problems": check.problems, "verification": check.summary()}
    if part:
        detail.update(tables=result.tables, skipped=result.skipped)
    return RestoreOutcome(source.name, source.kind, chosen, dbt.describe(), detail)


def _source(policy: Policy, source_name: str) -> Source:
    try:
        return policy.source(source_name)
    except KeyError:
        names = ", ".join(s.name for s in policy.sources)
        raise UsageError(f"policy {policy.name!r} has no source {source_name!r} (it has: {names})") from None


def _restore_files(handle: RepoHandle, source: Source, chosen: SnapshotSet, dest: Path, force: bool,
                   part: Part) -> RestoreOutcome:
    refuse_missing_paths(handle.restic, chosen, part.paths)
    detail = restore_files_set(handle.restic, chosen, dest, force=force, include=part.paths)
    if part.paths:
        # drtool selects with restic's rules; the check proves both agree on what was asked for.
        diff = verify_files_set(handle.restic, chosen, dest, part.paths)
        detail.update(entries=diff.checked, bytes=diff.bytes, verified=not diff.problems, problems=diff.problems)
    return RestoreOutcome(source.name, "files", chosen, str(dest), detail)


def _dry_run(handle: RepoHandle, source: Source, chosen: SnapshotSet, target: str, part: Part) -> RestoreOutcome:
    if source.kind == "files":
        refuse_paths_of_tar(chosen, part.paths)
        dest = Path(target).resolve()
        plan = {**files_plan(handle.restic, chosen, part.paths), "target_state": target_state(dest)}
        return RestoreOutcome(source.name, "files", chosen, str(dest), {"dry_run": True, **plan})
    dbt = parse_db_target(source.kind, target)
    plan = database_plan(handle.restic, source, chosen, tables=part.tables, schemas=part.schemas)
    plan["target_state"] = ("not checked in a dry run (no connection is made); a restore refuses a "
                            "database that holds tables unless --force")
    return RestoreOutcome(source.name, source.kind, chosen, dbt.describe(), {"dry_run": True, **plan})
