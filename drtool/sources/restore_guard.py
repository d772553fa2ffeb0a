"""Before a files restore writes anything: would it write outside its target?

The rules are in drtool/safe_paths.py; this module gathers what they judge. An empty
target has no symlinks of its own, and the tar guard of extract_dump (drtool/engine/
reader.py) refuses a bad member before tar sees it. A `--force` restore over a tree that
is already there is checked first, in full: the snapshot's listing (`restic ls`, or the
tar archive streamed once from `restic dump`) against the target's symlinks, here or on
a host. Found problems are a RestoreRefused (exit 2): nothing was written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from drtool.errors import CommandError, RestoreRefused
from drtool.execute import Runner
from drtool.safe_paths import local_symlinks, name_problem, symlink_crossings

LIMIT = 5


def refuse_crossings(paths: Iterable[str], links: dict[str, str], target: str, where: str = "") -> None:
    """Raise if any path names a place outside `target` or passes through one of its symlinks."""
    bad: list[str] = []
    checked: list[str] = []
    for path in paths:
        problem = name_problem(path)
        if problem:
            bad.append(f"{path} {problem}")
        checked.append(path)
        if len(bad) >= LIMIT:
            break
    bad += symlink_crossings(checked, links, LIMIT - len(bad)) if len(bad) < LIMIT else []
    if bad:
        raise RestoreRefused(
            f"restoring into {target}{where} would write outside it: " + "; ".join(bad[:LIMIT]) + "; nothing was written",
            hint="the target holds symlinks where the snapshot has directories: restore into an empty directory "
                 "(or remove those links first)")


def check_tree_restore(restic, snapshot_id: str, target: Path) -> None:  # noqa: ANN001 - Restic
    """A restic tree snapshot over an existing `target`."""
    links = local_symlinks(target)
    if not links:
        return              # nothing to pass through; restic itself keeps names inside the target
    # restic lists paths from the snapshot's root ("/srv/scans/a.pdf"); restored under target/.
    refuse_crossings((node["path"].removeprefix("/") for node in restic.ls(snapshot_id)), links, str(target))


def check_tar_restore(restic, snapshot_id: str, path: str, target: str, links: dict[str, str],  # noqa: ANN001
                      where: str = "") -> None:
    """A tar archive (`restic dump SNAP PATH`) over an existing `target` whose symlinks are `links`.
    It reads the archive once more (only for a --force restore over a tree with symlinks)."""
    if not links:
        return              # the in-stream guard of extract_dump covers the archive's own names
    from drtool.engine.reader import walk_dump_tar

    names: list[str] = []
    archive_links: dict[str, str] = {}

    def visit(_archive, member, rel: str) -> None:  # noqa: ANN001 - tarfile objects
        names.append(member.name)
        if member.issym():
            archive_links[rel] = member.linkname

    walk_dump_tar(restic, snapshot_id, path, visit, what=f"reading snapshot {snapshot_id[:8]}")
    refuse_crossings(names, {**links, **archive_links}, target, where)


def remote_symlinks(runner: Runner, dest: str) -> dict[str, str]:
    """The symlinks under `dest` on the runner's host (find -type l, never followed)."""
    result = runner.run(["find", dest, "-mindepth", "1", "-type", "l", "-printf", r"%P\0%l\0"], timeout=3600,
                        check=False)
    if result.returncode != 0:
        raise CommandError(["find", dest], result.returncode, result.stderr.decode("utf-8", "replace"),
                           what=f"listing the symlinks of {dest} on {runner.where}")
    fields = result.stdout.split(b"\0")
    return {fields[i].decode("utf-8", "surrogateescape"): fields[i + 1].decode("utf-8", "surrogateescape")
            for i in range(0, len(fields) - 1, 2)}
