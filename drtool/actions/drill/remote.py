"""Drill steps that act on another host over SSH: restore onto a standby machine, run checks there.

- `command: {argv, host: NAME}` runs the argv on NAME; the DRTOOL_* variables
  travel through the runner's env mechanism (over the channel, never in argv).
- `restore: {source, into, host: NAME}`:
  - databases: the source's own restore with NAME's runner and the "stream"
    strategy, so `restic dump` runs here and pg_restore / the mariadb client
    run on NAME, fed over the SSH channel; `into:` is a server URL as seen from
    NAME (127.0.0.1 is NAME's loopback).
  - files: `restic dump SNAP /` (a tree snapshot) or `restic dump SNAP /STREAM`
    (a tar-mode snapshot) is a tar; it is streamed into `tar -x -C DIR` on NAME.
    A non-empty DIR is refused unless force.
- `verify` after a remote files restore reads the same tar from the repository
  once more and compares it with NAME's tree: every path, type, size, mode,
  symlink target and the sha256 of every file (computed on NAME with sha256sum),
  and reports entries that are on NAME but not in the snapshot.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from drtool.drill.context import DrillContext, Restored
from drtool.engine.reader import walk_dump_tar
from drtool.errors import CommandError, RestoreRefused, UsageError
from drtool.secrets import redact
from drtool.sources.files import TreeDiff

if TYPE_CHECKING:  # pragma: no cover - typing only
    from drtool.actions.select import SnapshotSet
    from drtool.config.models import Step
    from drtool.drill.steps import Outcome
    from drtool.remote.ssh import SshRunner

RESTORE_TIMEOUT_S = 24 * 3600.0
LIST_TIMEOUT_S = 6 * 3600.0
OUTPUT_TAIL = 2000

_runners: weakref.WeakKeyDictionary[DrillContext, dict[str, SshRunner]] = weakref.WeakKeyDictionary()
_runners_lock = threading.Lock()


@dataclass
class RemoteRestored(Restored):
    """A source restored onto another host; `directory` / `target` are as that host sees them."""

    host: str = ""
    runner: Any = None


def host_runner(ctx: DrillContext, name: str) -> SshRunner:
    """One SSH connection per host for the whole drill, closed when the drill ends."""
    from drtool.remote import ssh_runner

    with _runners_lock:
        cached = _runners.setdefault(ctx, {})
        if name not in cached:
            runner = ssh_runner(ctx.settings, name)
            cached[name] = runner
            ctx._stack.callback(runner.close)
        return cached[name]


# ---------------------------------------------------------------- command

def run_command(ctx: DrillContext, step: Step, timeout: float) -> Outcome:
    from drtool.drill.steps import Outcome, StepFailed

    spec = step.command
    assert spec.host is not None
    runner = host_runner(ctx, spec.host)
    env = {**ctx.command_env(), **spec.env}
    result = runner.run(spec.argv, env=env, timeout=timeout, check=False)
    out = redact(result.stdout.decode("utf-8", "replace"))[-OUTPUT_TAIL:]
    err = redact(result.stderr.decode("utf-8", "replace"))[-OUTPUT_TAIL:]
    data = {"exit_code": result.returncode, "stdout_tail": out, "stderr_tail": err, "host": spec.host}
    if result.returncode != 0:
        last = (err.strip() or out.strip()).splitlines()[-1:] or ["no output"]
        raise StepFailed(f"{spec.argv[0]} on host {spec.host} exited with code {result.returncode}: "
                         f"{last[0][:300]}", data=data)
    last = out.strip().splitlines()[-1:] or ["no output"]
    return Outcome(f"{spec.argv[0]} on host {spec.host} exited 0: {last[0][:300]}", data=data)


# ---------------------------------------------------------------- restore

def restore(ctx: DrillContext, step: Step, chosen: SnapshotSet) -> Outcome:
    spec = step.restore
    assert spec.host is not None
    source = ctx.policy.source(spec.source)
    if spec.into == "scratch":
        what = "an absolute directory on that host" if source.kind in ("files", "sqlite") else \
            "a server URL as seen from that host, e.g. postgresql://postgres@127.0.0.1:5432/name"
        raise UsageError(f"restore step {step.name!r} targets host {spec.host!r}: into: must be {what}, not scratch",
                         hint="scratch instances are started on this machine only")
    runner = host_runner(ctx, spec.host)
    if source.kind == "files":
        return _restore_files(ctx, step, chosen, runner)
    return _restore_database(ctx, step, chosen, runner)


def _absolute_remote(path: str, host: str) -> str:
    if not path.startswith("/"):
        raise UsageError(f"into: {path!r} must be an absolute path on host {host}")
    return str(PurePosixPath(path))


def _dump_path(chosen: SnapshotSet) -> tuple[str, str]:
    """(snapshot id, path to dump): a tree snapshot and a tar-mode stream both dump as a tar."""
    if chosen.files is not None:
        return chosen.files.id, "/"
    [(stream, snap)] = chosen.streams.items()
    return snap.id, "/" + stream


def check_remote_dir(runner: SshRunner, dest: str, *, force: bool) -> None:
    """Refuse a remote path that is not a directory, or a non-empty one unless force."""
    script = ('if [ -e "$1" ] && [ ! -d "$1" ]; then exit 3; fi; '
              'if [ -d "$1" ]; then find "$1" -mindepth 1 -print -quit; fi')
    result = runner.run(["sh", "-c", script, "sh", dest], timeout=300, check=False)
    if result.returncode == 3:
        raise RestoreRefused(f"restore target {dest} on {runner.where} exists and is not a directory")
    if result.returncode != 0:
        raise CommandError(["find", dest], result.returncode, result.stderr.decode("utf-8", "replace"),
                           what=f"checking {dest} on {runner.where}")
    if result.stdout.strip() and not force:
        raise RestoreRefused(f"restore target {dest} on {runner.where} is not empty; nothing was written",
                             hint="choose an empty directory, or set force: true to restore over it")


def _restore_files(ctx: DrillContext, step: Step, chosen: SnapshotSet, runner: SshRunner) -> Outcome:
    from drtool.drill.model import phase_dict
    from drtool.drill.steps import Outcome

    spec = step.restore
    dest = _absolute_remote(spec.into, spec.host)
    check_remote_dir(runner, dest, force=spec.force)
    runner.run(["mkdir", "-p", "-m", "0700", "--", dest], timeout=300)
    snapshot_id, path = _dump_path(chosen)
    timeout = (step.timeout + 5.0) if step.timeout else RESTORE_TIMEOUT_S
    started = time.monotonic()
    nbytes = stream_tar_to_host(ctx.restic, snapshot_id, path, runner, dest, timeout=timeout)
    took = time.monotonic() - started
    source = ctx.policy.source(spec.source)
    ctx.restored[spec.source] = RemoteRestored(source, chosen, directory=PurePosixPath(dest),  # type: ignore[arg-type]
                                               scratch=False, host=spec.host or "", runner=runner)
    phase = phase_dict(f"download+decrypt+send+extract (restic dump | tar -x on {spec.host})", took, nbytes)
    return Outcome(f"{_mb(nbytes)} of tar from {chosen.primary.short_id} extracted into {dest} on host "
                   f"{spec.host}; restic checked every blob while reading", [phase],
                   {"target": dest, "host": spec.host, "bytes": nbytes})


def stream_tar_to_host(restic: Any, snapshot_id: str, path: str, runner: SshRunner, dest: str, *,
                       timeout: float) -> int:
    """`restic dump SNAP PATH` here, piped into `tar -x -C DEST` on the host. Returns the tar's size."""
    from drtool.engine.reader import extract_dump

    return extract_dump(restic, snapshot_id, path, runner, dest, timeout=timeout, where=f"on {runner.where}")


def _restore_database(ctx: DrillContext, step: Step, chosen: SnapshotSet, runner: SshRunner) -> Outcome:
    from drtool.actions.restore import parse_db_target
    from drtool.drill.model import phase_dict
    from drtool.drill.steps import Outcome
    from drtool.engine.reader import ResticStreamReader
    from drtool.sources import database_source

    spec = step.restore
    source = ctx.policy.source(spec.source)
    phases = []
    started = time.monotonic()
    fingerprint = ctx.fingerprint(source.name)
    phases.append(phase_dict("read fingerprint", time.monotonic() - started))
    if source.kind == "sqlite":
        target = parse_db_target("sqlite", _absolute_remote(spec.into, spec.host or ""))
    else:
        target = parse_db_target(source.kind, spec.into)
    db = database_source(source, runner)
    reader = ResticStreamReader(ctx.restic, chosen.streams, sizes=fingerprint.get("stream_bytes"))
    if source.kind == "postgres":
        # pg_restore runs on the host, fed over the channel; a temp file here would be invisible to it.
        result = db.restore(reader, target, force=spec.force, strategy="stream")  # type: ignore[call-arg]
    else:
        result = db.restore(reader, target, force=spec.force)
    phases += [phase_dict(p.name, p.duration_s, p.bytes) for p in result.phases]
    ctx.restored[source.name] = RemoteRestored(source, chosen, target=target, databases=list(result.databases),
                                               db=db, fingerprint=fingerprint, scratch=False,
                                               host=spec.host or "", runner=runner)
    return Outcome(f"{', '.join(result.databases) or 'nothing'} ({_mb(result.bytes)}) from "
                   f"{chosen.primary.short_id} into {target.describe()} on host {spec.host}",
                   phases, {"target": target.describe(), "host": spec.host,
                            "databases": list(result.databases), "bytes": result.bytes})


# ---------------------------------------------------------------- verify (files)

def verify_files(ctx: DrillContext, restored: RemoteRestored) -> TreeDiff:
    """Compare the host's tree with the snapshot's tar: paths, types, sizes, modes, link targets, sha256."""
    runner: SshRunner = restored.runner
    dest = str(restored.directory)
    remote = remote_listing(runner, dest)
    hashes = remote_hashes(runner, dest)
    snapshot_id, path = _dump_path(restored.chosen)
    diff = TreeDiff()

    def visit(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        diff.checked += 1
        _compare(archive, member, rel, remote.get(rel), hashes, diff)

    seen = walk_dump_tar(ctx.restic, snapshot_id, path, visit, what=f"reading snapshot {snapshot_id[:8]}")
    for rel in sorted(set(remote) - seen):
        diff.add(f"/{rel}: present on host {restored.host} but not in the snapshot")
    return diff


def _compare(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str, entry: tuple[str, int, int, str] | None,
             hashes: dict[str, str], diff: TreeDiff) -> None:
    path = "/" + rel
    if entry is None:
        diff.add(f"{path}: missing after restore")
        return
    kind, size, mode, link = entry
    if member.isfile():
        if kind != "f":
            diff.add(f"{path}: expected a regular file")
            return
        if size != member.size:
            diff.add(f"{path}: size {size}, snapshot says {member.size}")
        digest = hashlib.sha256()
        handle = archive.extractfile(member)
        assert handle is not None
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        if hashes.get(rel) != digest.hexdigest():
            diff.add(f"{path}: content differs from the snapshot (sha256)")
        diff.bytes += member.size
    elif member.isdir():
        if kind != "d":
            diff.add(f"{path}: expected a directory")
            return
    elif member.issym():
        if kind != "l":
            diff.add(f"{path}: expected a symlink")
        elif link != member.linkname:
            diff.add(f"{path}: symlink points to {link!r}, snapshot says {member.linkname!r}")
        return
    else:
        return   # devices, fifos, hard links: presence only
    want = stat.S_IMODE(member.mode)
    if mode != want:
        diff.add(f"{path}: mode {mode:o}, snapshot says {want:o}")


def remote_listing(runner: SshRunner, dest: str) -> dict[str, tuple[str, int, int, str]]:
    """{relative path: (type letter, size, mode, symlink target)} of the host's tree, NUL-separated."""
    result = runner.run(["find", dest, "-mindepth", "1", "-printf", r"%y %s %m %P\0%l\0"],
                        timeout=LIST_TIMEOUT_S, check=True)
    fields = result.stdout.split(b"\0")
    entries: dict[str, tuple[str, int, int, str]] = {}
    for head, link in zip(fields[0::2], fields[1::2], strict=False):
        if not head:
            continue
        kind, size, mode, rel = head.decode("utf-8", "surrogateescape").split(" ", 3)
        entries[rel] = (kind, int(size), int(mode, 8), link.decode("utf-8", "surrogateescape"))
    return entries


def remote_hashes(runner: SshRunner, dest: str) -> dict[str, str]:
    """{relative path: sha256} of every regular file, computed on the host (coreutils sha256sum)."""
    result = runner.run(["find", ".", "-type", "f", "-exec", "sha256sum", "-z", "--", "{}", "+"],
                        cwd=dest, timeout=LIST_TIMEOUT_S, check=True)
    hashes = {}
    for line in result.stdout.split(b"\0"):
        if line:
            digest, name = line.decode("utf-8", "surrogateescape").split("  ", 1)
            hashes[os.path.normpath(name)] = digest
    return hashes


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"

