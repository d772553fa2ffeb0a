"""Files of a remote host (policy `host:`), backed up without installing drtool there.

Two modes, picked per run by `pick_mode` from what the host has:

restic  restic >= 0.14 is on the host's PATH and the repository is a network
        URL (s3:, rest:, sftp:, ...). `restic backup --json -- PATHS` runs *there*:
        file-level dedup, unchanged files skipped by metadata against a parent
        snapshot, only new chunks cross the network. RESTIC_REPOSITORY, the
        password and the AWS_* credentials travel on the SSH channel's stdin
        (SshRunner's env prelude): never argv, never a file. Its cache is a fresh
        `mktemp -d` removed afterwards. Exit 3 (unreadable files) is a failure
        and its snapshot is forgotten, like a local backup with holes.
tar     anything else (no restic there, too old, or a repository path only this
        machine can reach). `tar -C / -cf - -- RELATIVE_PATHS` streams over the
        channel into local `restic backup --stdin --stdin-filename SOURCE.tar`
        through the engine's commit gate: a dropped connection or a tar failure
        leaves no snapshot. The host needs only tar and sh.

Tags are those of a local files backup (drtool, policy=, source=, run=); tar
mode adds `stream=SOURCE.tar`, which is how restore tells the two apart:
`restore_tar` and `verify_tar_tree` below restore and check such a set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drtool.engine.pipeline import stream_to_restic
from drtool.engine.restic import JsonLineReader, Restic, classify_failure, limit_args
from drtool.errors import Cancelled, CommandError, DrtoolError, RemoteError, UsageError
from drtool.execute import LocalRunner, Runner, stop_process
from drtool.sources.files import TreeDiff, check_target_dir
from drtool.events import EventFn, Notice, Progress

if TYPE_CHECKING:  # pragma: no cover - typing only
    from drtool.catalog import RunRecord
    from drtool.config.loader import Settings
    from drtool.config.models import FilesSource, Policy, Source

log = logging.getLogger(__name__)


MIN_REMOTE_RESTIC = (0, 14, 0)       # repository format v2 (compression) needs 0.14
# Repository URLs another machine can reach; anything else is a path on this machine.
NETWORK_SCHEMES = ("s3:", "rest:", "sftp:", "b2:", "azure:", "gs:", "swift:", "rclone:")
TAR_SUFFIX = ".tar"
REMOTE_BACKUP_TIMEOUT = 24 * 3600.0
PROBE_TIMEOUT = 60.0
_VERSION = re.compile(r"\brestic (\d+)\.(\d+)\.(\d+)")


# ------------------------------------------------------------------ pure logic

def parse_restic_version(text: str) -> tuple[int, int, int] | None:
    """(0, 14, 0) from `restic 0.14.0 compiled with go1.19.8 on linux/amd64`."""
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def pick_mode(repo_url: str, remote_restic: tuple[int, int, int] | None,
              wanted: str = "auto") -> tuple[str, str]:
    """('restic' | 'tar', why) for a repository URL and the host's restic version (None: absent).

    `wanted` is the host's `files_mode` (auto | restic | tar) once drtool.yaml
    offers it; 'tar' keeps the repository credentials off the host entirely.
    """
    if wanted == "tar":
        return "tar", "files_mode: tar for this host"
    if wanted not in ("auto", "restic"):
        raise UsageError(f"files_mode must be auto, restic or tar, got {wanted!r}")
    auto, why = _auto_mode(repo_url, remote_restic)
    if wanted == "restic" and auto != "restic":
        raise RemoteError(f"files_mode: restic was asked for, but {why}",
                          hint="install restic >= 0.14 on the host and use a network repository, or set files_mode: auto")
    return auto, why


def _auto_mode(repo_url: str, remote_restic: tuple[int, int, int] | None) -> tuple[str, str]:
    if remote_restic is None:
        return "tar", "restic is not installed on the host"
    shown = ".".join(map(str, remote_restic))
    if remote_restic < MIN_REMOTE_RESTIC:
        return "tar", f"restic {shown} on the host is older than {'.'.join(map(str, MIN_REMOTE_RESTIC))}"
    if not repo_url.startswith(NETWORK_SCHEMES):
        return "tar", "the repository is a path on this machine, which the host cannot reach"
    return "restic", f"restic {shown} on the host writes to the repository directly"


def tar_stream_name(source_name: str) -> str:
    return source_name + TAR_SUFFIX


def tar_argv(spec: FilesSource) -> list[str]:
    """GNU tar writing an archive of the absolute `spec.paths` to stdout, member names relative to /.

    restic exclude patterns are globs; an absolute one (`/srv/docs/tmp`) is
    anchored at the root, any other (`*.tmp`, `cache`) matches a name at any
    depth, which is what GNU tar does with --anchored / --no-anchored.
    """
    argv = ["tar", "-C", "/", "-cf", "-"]
    if spec.one_file_system:
        argv.append("--one-file-system")
    for pattern in spec.exclude:
        if pattern.startswith("/"):
            argv += ["--anchored", f"--exclude={pattern.lstrip('/')}", "--no-anchored"]
        else:
            argv.append(f"--exclude={pattern}")
    rel = [p.rstrip("/").lstrip("/") or "." for p in spec.paths]
    return [*argv, "--", *rel]


def remote_backup_argv(spec: FilesSource, *, cache_dir: str, tags: Sequence[str], host: str,
                       parent: str | None, limits: Sequence[str] = ()) -> list[str]:
    """`restic backup` as run on the host; the repository and secrets come from its environment.

    `limits`: the repository's bandwidth flags (engine.restic.limit_args), as for local restic."""
    argv = ["restic", "--cache-dir", cache_dir, *limits, "backup", "--json", "--host", host]
    for tag in tags:
        argv += ["--tag", tag]
    for pattern in spec.exclude:
        argv += ["--exclude", pattern]
    if spec.one_file_system:
        argv.append("--one-file-system")
    if parent:
        argv += ["--parent", parent]
    return [*argv, "--", *spec.paths]


# ------------------------------------------------------------------ backup

def backup_remote_files(settings: Settings, policy: Policy, source: Source, restic: Restic,
                        run: RunRecord, host: str, emit: EventFn,
                        cancel: threading.Event | None) -> dict[str, Any]:
    """Back up a files source of `policy.host`; returns the same shape as a local files backup."""
    # Tags are the actions layer's scheme, shared with local backups (imported here, not at
    # module level, so this adapter module does not depend on actions when merely imported).
    from drtool.tags import policy_tags
    from drtool.remote import runner_for

    base_tags = policy_tags(policy, source.name)
    run_tags = policy_tags(policy, source.name, run_id=run.id)
    wanted = settings.config.hosts[policy.host].files_mode
    runner = runner_for(settings, policy.host)
    with closing(runner):
        version = None if wanted == "tar" else probe_restic(runner)
        mode, why = pick_mode(restic.access.url, version, wanted)
        emit(Notice(f"files of {source.name} on host {policy.host}: {mode} mode ({why})", source.name))
        if mode == "restic":
            result = _backup_with_remote_restic(runner, source, restic, run, host, emit, cancel,
                                                base_tags=base_tags, tags=run_tags)
        else:
            name = tar_stream_name(source.name)
            result = _backup_with_tar(runner, source, restic, run, host, emit, cancel,
                                      tags=[*run_tags, f"stream={name}"])
    result.update(mode=mode, mode_reason=why, host=policy.host)
    return result


def probe_restic(runner: Runner) -> tuple[int, int, int] | None:
    """The host's restic version, or None when it has none on its PATH."""
    result = runner.run(["sh", "-c", 'command -v restic >/dev/null || exit 127; exec restic version'],
                        check=False, timeout=PROBE_TIMEOUT)
    if result.returncode == 0:
        return parse_restic_version(result.text)
    if result.returncode == 127:
        return None
    raise CommandError(result.argv, result.returncode, result.stderr.decode("utf-8", "replace"),
                       what=f"`restic version` on {runner.name}")


def _backup_with_tar(runner: Runner, source: Source, restic: Restic, run: RunRecord, host: str,
                     emit: EventFn, cancel: threading.Event | None, *, tags: list[str]) -> dict[str, Any]:
    name = tar_stream_name(source.name)
    argv = tar_argv(source.spec)
    result = stream_to_restic(
        restic, lambda: runner.start(argv), filename=name, tags=tags, host=host,
        what=f"tar of {source.name} on {runner.name}", cancel=cancel,
        stall=source.stall_timeout, timeout=source.timeout,
        on_progress=lambda obj: emit(Progress(source.name, obj, name)),
    )
    run.snapshots.append(result.snapshot_id)
    run.bytes_added += result.data_added
    return {"status": "success", "snapshots": [result.snapshot_id], "bytes_added": result.data_added,
            "files": None, "bytes": result.bytes_in, "stream": name}


def _repo_env(restic: Restic) -> dict[str, str]:
    access = restic.access
    # Order matters only to the prelude; values travel over stdin, one line each.
    return {"RESTIC_REPOSITORY": access.url, "RESTIC_PASSWORD": access.password.reveal(),
            "RESTIC_PROGRESS_FPS": "1", **access.env}


def _parent_snapshot(restic: Restic, base_tags: list[str], host: str) -> str | None:
    """The latest tree snapshot of this source: lets restic skip unchanged files by metadata.

    Named explicitly because restic would otherwise pick a parent by host name
    and paths, which may be another machine's backup of the same paths. `host` is the
    snapshot host of this run: another host's tree is never the parent.
    """
    snaps = [s for s in restic.snapshots(tags=base_tags, host=host)
             if s.tag("stream") is None and s.tag("run")]
    return snaps[-1].id if snaps else None


def _backup_with_remote_restic(runner: Runner, source: Source, restic: Restic, run: RunRecord, host: str,
                               emit: EventFn, cancel: threading.Event | None, *, base_tags: list[str],
                               tags: list[str]) -> dict[str, Any]:
    parent = _parent_snapshot(restic, base_tags, host)
    cache_dir = runner.run(["mktemp", "-d", "-t", "drtool-restic-cache.XXXXXXXXXX"], timeout=PROBE_TIMEOUT).text.strip()
    if not cache_dir.startswith("/"):
        raise RemoteError(f"mktemp on {runner.name} printed {cache_dir[:100]!r}, not a directory path",
                          hint="check the host's TMPDIR")
    argv = remote_backup_argv(source.spec, cache_dir=cache_dir, tags=tags, host=host, parent=parent,
                              limits=limit_args(restic.access))
    ok = False
    try:
        summary = _run_remote_restic(runner, argv, _repo_env(restic), restic.access.url, source.name,
                                     emit, cancel)
        ok = True
    finally:
        left = _remove_remote_dir(runner, cache_dir)
        if not ok:
            _after_remote_failure(runner, restic, tags)
    snap = summary["snapshot_id"]
    run.snapshots.append(snap)
    added = int(summary.get("data_added", 0))
    run.bytes_added += added
    run.files_new += int(summary.get("files_new", 0))
    result = {"status": "success", "snapshots": [snap], "bytes_added": added,
              "files": int(summary.get("total_files_processed", 0)),
              "bytes": int(summary.get("total_bytes_processed", 0)), "parent": parent}
    if left:
        result["cache_dir_left"] = left
    return result


def _run_remote_restic(runner: Runner, argv: list[str], env: dict[str, str], url: str, source_name: str,
                       emit: EventFn, cancel: threading.Event | None) -> dict[str, Any]:
    proc = runner.start(argv, env=env)
    reader = JsonLineReader(proc, lambda obj: emit(Progress(source_name, obj)))
    deadline = time.monotonic() + REMOTE_BACKUP_TIMEOUT
    try:
        while True:
            try:
                code = proc.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"files backup of {source_name} on {runner.name} cancelled; "
                                    "restic there was stopped before committing") from None
                if time.monotonic() > deadline:
                    raise CommandError(argv, None, proc.stderr_tail(), what=f"restic backup on {runner.name}",
                                       hint=f"it ran longer than {REMOTE_BACKUP_TIMEOUT / 3600:.0f}h")
    except BaseException:
        stop_process(proc, grace=20)
        raise
    reader.join(30)
    what = f"restic backup on {runner.name}"
    if code == 3:
        detail = "; ".join(reader.errors[:5]) or proc.stderr_tail()
        raise CommandError(argv, code, f"some files could not be read: {detail}", what=what,
                           hint="the snapshot was incomplete and is not kept; fix permissions or exclude the paths")
    if code != 0:
        stderr = proc.stderr_tail()
        known = classify_failure(code, stderr, url)
        if known is not None:
            raise type(known)(f"{what}: {known.message}", hint=known.hint)
        hint = None
        if code == 127:
            hint = f"restic vanished from the PATH on {runner.name} between the check and the backup"
        elif code == 255:
            hint = "the connection to the host was lost; nothing from this run was kept"
        raise CommandError(argv, code, stderr, what=what, hint=hint)
    summary = reader.summary or {}
    if not summary.get("snapshot_id"):
        raise CommandError(argv, code, "restic finished without reporting a snapshot id", what=what)
    return summary


def _remove_remote_dir(runner: Runner, path: str) -> str | None:
    """rm -rf the temporary cache; returns the path if it could not be removed (reported, not fatal)."""
    try:
        result = runner.run(["rm", "-rf", "--", path], check=False, timeout=300)
        if result.returncode == 0:
            return None
        log.warning("could not remove %s on %s: %s", path, runner.name, result.stderr[-300:])
    except DrtoolError as exc:
        log.warning("could not remove %s on %s: %s", path, runner.name, exc)
    return path


def _after_remote_failure(runner: Runner, restic: Restic, tags: list[str]) -> None:
    """No snapshot of a failed run may stay; a remote restic killed mid-run may leave a lock.

    `restic unlock` on the host removes only locks of its own dead processes
    (it can tell, being on the same host); then any snapshot tagged with this
    run and source is forgotten from here.
    """
    try:
        runner.run(["restic", "unlock"], env=_repo_env(restic), check=False, timeout=300)
    except DrtoolError as exc:
        log.warning("could not run restic unlock on %s: %s", runner.name, exc)
    try:
        leftovers = restic.snapshots(tags=tags)
        if leftovers:
            log.warning("forgetting %d snapshot(s) of a failed remote files backup", len(leftovers))
            restic.forget_ids([s.id for s in leftovers])
    except DrtoolError:
        log.warning("could not verify that the failed remote backup left no snapshot", exc_info=True)


# ------------------------------------------------------------------ restore and verify (tar mode)

def restore_tar(restic: Restic, snapshot_id: str, stream: str, target: Path, *, force: bool = False,
                timeout: float = 24 * 3600) -> dict[str, Any]:
    """Extract a tar-mode snapshot (`restic dump ID /SOURCE.tar | tar -x`) into `target`.

    Names that leave `target` are refused (drtool/safe_paths.py), also through a symlink
    already in it; owners and modes are restored by number, as restic does.
    """
    from drtool.engine.reader import extract_dump
    from drtool.safe_paths import local_symlinks
    from drtool.sources.restore_guard import check_tar_restore

    check_target_dir(target, force=force)
    if force and target.is_dir():
        check_tar_restore(restic, snapshot_id, "/" + stream, str(target), local_symlinks(target))
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        total = extract_dump(restic, snapshot_id, "/" + stream, LocalRunner(), str(target), timeout=timeout)
    except CommandError as exc:
        from drtool.sources.files import restore_failed
        raise restore_failed(target, exc.stderr_tail or exc.message) from None
    return {"target": str(target), "bytes": total}


def verify_tar_tree(restic: Restic, snapshot_id: str, stream: str, target: Path) -> TreeDiff:
    """Compare a restored tree with the archive, content included (sha256 of every file).

    The archive is read once, streamed from `restic dump`; nothing is kept in memory.
    """
    from drtool.engine.reader import walk_dump_tar

    diff = TreeDiff()

    def visit(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        diff.checked += 1
        _compare_member(archive, member, rel, target, diff)

    seen = {"/" + rel for rel in walk_dump_tar(restic, snapshot_id, "/" + stream, visit,
                                               what=f"reading {stream} from snapshot {snapshot_id[:8]}")}
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            rel = "/" + os.path.relpath(os.path.join(root, name), target)
            if rel not in seen:
                diff.add(f"{rel}: present after restore but not in the archive")
    return diff


def _compare_member(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str, target: Path,
                    diff: TreeDiff) -> None:
    local = target / rel
    path = "/" + rel
    try:
        st = os.lstat(local)
    except OSError:
        diff.add(f"{path}: missing after restore")
        return
    if member.isfile():
        if not stat.S_ISREG(st.st_mode):
            diff.add(f"{path}: expected a regular file")
            return
        if st.st_size != member.size:
            diff.add(f"{path}: size {st.st_size}, archive says {member.size}")
        diff.bytes += st.st_size
        src = archive.extractfile(member)
        want = hashlib.sha256()
        if src is not None:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                want.update(chunk)
        if _sha256(local) != want.hexdigest():
            diff.add(f"{path}: content differs from the archive")
    elif member.isdir():
        if not stat.S_ISDIR(st.st_mode):
            diff.add(f"{path}: expected a directory")
    elif member.islnk():
        if not stat.S_ISREG(st.st_mode):
            diff.add(f"{path}: expected a hard link to /{member.linkname}")
    elif member.issym():
        if not stat.S_ISLNK(st.st_mode):
            diff.add(f"{path}: expected a symlink")
        elif os.readlink(local) != member.linkname:
            diff.add(f"{path}: symlink points to {os.readlink(local)!r}, archive says {member.linkname!r}")
    if (member.isfile() or member.isdir()) and stat.S_IMODE(st.st_mode) != member.mode & 0o7777:
        diff.add(f"{path}: mode {stat.S_IMODE(st.st_mode):o}, archive says {member.mode & 0o7777:o}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

