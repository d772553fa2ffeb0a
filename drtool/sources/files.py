"""Files sources: restore a snapshot into a directory and verify the tree.

Backup of files is plain `restic backup PATHS` (drtool.engine.pipeline.backup_paths).
Verification compares the restored tree with restic's own listing of the
snapshot: every path, type, size, mode and symlink target; content is
verified by `restic restore --verify` at restore time. A partial restore
(`include` patterns, restic's --include) is compared with the part of the
listing those patterns select (drtool.sources.patterns, restic's rules).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.engine.restic import Restic
from drtool.errors import CommandError, RepositoryError, RestoreRefused, SourceError, StorageError
from drtool.sources.patterns import ancestors, matches


def check_target_dir(target: Path, *, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise RestoreRefused(f"restore target {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RestoreRefused(f"restore target {target} is not empty; nothing was written",
                             hint="choose an empty directory, or pass --force to restore over it")


def restore_files(restic: Restic, snapshot_id: str, target: Path, *, force: bool = False,
                  verify: bool = True, include: Sequence[str] = ()) -> dict[str, Any]:
    check_target_dir(target, force=force)
    if force and target.is_dir():
        from drtool.sources.restore_guard import check_tree_restore
        check_tree_restore(restic, snapshot_id, target)     # never through a symlink already there
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    args = ["restore", snapshot_id, "--target", str(target)]
    for pattern in include:
        args += ["--include", pattern]
    if verify:
        args.append("--verify")   # restic re-reads every restored file and checks its content hashes
    try:
        restic.run(args, timeout=24 * 3600)
    except CommandError as exc:
        raise restore_failed(target, exc.stderr_tail or exc.message) from None
    except (RepositoryError, StorageError) as exc:       # known causes: a damaged repository, the storage
        raise restore_failed(target, exc.message, cause=exc.message.splitlines()[0], hint=exc.hint) from None
    return {"target": str(target), **({"include": list(include)} if include else {})}


def restore_failed(target: Path, output: str, *, cause: str | None = None, hint: str | None = None) -> SourceError:
    """A files restore that stopped half-way: its cause, and what it left in the target."""
    from drtool.report.units import human_bytes

    cause = cause or _restore_cause(target, output)
    files, nbytes = tree_size(target) if target.exists() else (0, 0)
    left = (f"{files} files ({human_bytes(nbytes)}) of a partial restore are left in {target}: remove them, "
            "or make room and restore again with --force" if files else f"nothing was left in {target}")
    return SourceError(f"restore into {target} failed: {cause}; {left}", hint=hint)


def _restore_cause(target: Path, output: str) -> str:
    """The line of restic's (or tar's) output that says why, a full disk said plainly."""
    from drtool.engine.restic_errors import cause_line
    from drtool.report.units import human_bytes

    low = output.lower()
    if "no space left on device" in low or "disk quota exceeded" in low:
        free = shutil.disk_usage(target).free if target.exists() else 0
        return f"no space left on device (the file system of {target} has {human_bytes(free)} free)"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return next((ln.split(": ", 1)[-1] for ln in lines if ln.startswith("ignoring error for")), None) \
        or cause_line(output) or (lines[-1] if lines else "restic failed")


@dataclass
class TreeDiff:
    checked: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(problem)


def verify_tree(restic: Restic, snapshot_id: str, target: Path, include: Sequence[str] = ()) -> TreeDiff:
    """Compare the restored tree under `target` with the snapshot's listing (streamed).

    With `include`, only the entries those patterns select are expected; the directories
    restic creates to hold them must exist, their modes are not compared (restic creates
    them 0700 when they were not selected themselves).
    """
    diff = TreeDiff()
    seen: set[str] = set()
    holders: set[str] = set()
    for node in restic.ls(snapshot_id):
        path = node["path"]
        if include and not matches(include, path):
            continue
        seen.add(path)
        holders.update(ancestors(path))
        local = target / path.lstrip("/")
        diff.checked += 1
        try:
            st = os.lstat(local)
        except OSError:
            diff.add(f"{path}: missing after restore")
            continue
        _compare_node(node, local, st, diff)
    if include and not seen:
        diff.add(f"no entry of the snapshot matches {', '.join(include)}")
    for path in sorted(holders - seen):
        if not (target / path.lstrip("/")).is_dir():
            diff.add(f"{path}: directory missing after restore")
    _find_extra(target, seen | holders, diff)
    return diff


def _compare_node(node: dict[str, Any], local: Path, st: os.stat_result, diff: TreeDiff) -> None:
    path, kind = node["path"], node.get("type")
    if kind == "file":
        if not stat.S_ISREG(st.st_mode):
            diff.add(f"{path}: expected a regular file")
        elif st.st_size != node.get("size", 0):
            diff.add(f"{path}: size {st.st_size}, snapshot says {node.get('size')}")
        diff.bytes += st.st_size
    elif kind == "dir" and not stat.S_ISDIR(st.st_mode):
        diff.add(f"{path}: expected a directory")
    elif kind == "symlink":
        if not stat.S_ISLNK(st.st_mode):
            diff.add(f"{path}: expected a symlink")
        # restic 0.14's `ls --json` omits linktarget; compare whenever it is given.
        elif node.get("linktarget") is not None and os.readlink(local) != node["linktarget"]:
            diff.add(f"{path}: symlink points to {os.readlink(local)!r}, snapshot says {node.get('linktarget')!r}")
    mode = node.get("mode")
    if mode is not None and kind in ("file", "dir") and stat.S_IMODE(st.st_mode) != unix_mode(mode):
        diff.add(f"{path}: mode {stat.S_IMODE(st.st_mode):o}, snapshot says {unix_mode(mode):o}")


def unix_mode(go_mode: int) -> int:
    """restic prints Go's os.FileMode: setuid/setgid/sticky live in high bits, not 0o7000."""
    perm = go_mode & 0o777
    for go_bit, unix_bit in ((1 << 23, 0o4000), (1 << 22, 0o2000), (1 << 20, 0o1000)):
        if go_mode & go_bit:
            perm |= unix_bit
    return perm


def _find_extra(target: Path, seen: set[str], diff: TreeDiff) -> None:
    # restic's listing includes the parent directories of backed-up paths, so every
    # legitimate entry of the restored tree is in `seen`.
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            rel = "/" + os.path.relpath(os.path.join(root, name), target)
            if rel not in seen:
                diff.add(f"{rel}: present after restore but not in the snapshot")


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under root, symlinks not followed."""
    files = total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            files += 1
            total += st.st_size
    return files, total
