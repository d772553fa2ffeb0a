"""A files tree on another host, seen through a Runner: refuse a busy target, list it, hash it,
and compare it with the tar archive of a snapshot (`restic dump SNAP /`).

The comparison covers every path, type, size, mode, symlink target and the sha256 of
every file (computed on the host with coreutils' sha256sum), and reports entries that
are on the host but not in the snapshot. Nothing is kept in memory but the listing.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from typing import Any

from drtool.engine.reader import walk_dump_tar
from drtool.errors import CommandError, RestoreRefused
from drtool.execute import Runner
from drtool.sources.files import TreeDiff

LIST_TIMEOUT_S = 6 * 3600.0


def check_remote_dir(runner: Runner, dest: str, *, force: bool) -> None:
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


def verify_remote_tree(restic: Any, snapshot_id: str, path: str, runner: Runner, dest: str, host: str) -> TreeDiff:
    """Compare the host's tree under `dest` with the tar of `restic dump SNAP PATH`."""
    remote = remote_listing(runner, dest)
    hashes = remote_hashes(runner, dest)
    diff = TreeDiff()

    def visit(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        diff.checked += 1
        _compare(archive, member, rel, remote.get(rel), hashes, diff)

    seen = walk_dump_tar(restic, snapshot_id, path, visit, what=f"reading snapshot {snapshot_id[:8]}")
    for rel in sorted(set(remote) - seen):
        diff.add(f"/{rel}: present on host {host} but not in the snapshot")
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


def remote_listing(runner: Runner, dest: str) -> dict[str, tuple[str, int, int, str]]:
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


def remote_hashes(runner: Runner, dest: str) -> dict[str, str]:
    """{relative path: sha256} of every regular file, computed on the host (coreutils sha256sum)."""
    result = runner.run(["find", ".", "-type", "f", "-exec", "sha256sum", "-z", "--", "{}", "+"],
                        cwd=dest, timeout=LIST_TIMEOUT_S, check=True)
    hashes = {}
    for line in result.stdout.split(b"\0"):
        if line:
            digest, name = line.decode("utf-8", "surrogateescape").split("  ", 1)
            hashes[os.path.normpath(name)] = digest
    return hashes
