"""Which snapshot paths a restore `--path` pattern selects (pure logic).

The same rules as restic's `--include`, since restic does the selecting at restore time and
drtool must know the same set to list it (dry run) and to verify it afterwards:

* a pattern is split at `/` into parts, each a shell glob (`*`, `?`, `[a-z]`) or `**`
  (any number of parts);
* an absolute pattern (`/srv/scans/2026`) matches from the snapshot's root;
* a relative pattern (`scans/2026/11/*`) matches at any depth;
* a path matches when any run of its leading parts (absolute) or of consecutive parts
  (relative) matches the whole pattern, so a matched directory brings everything below it.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Sequence

from drtool.errors import UsageError


def check_pattern(pattern: str) -> str:
    """A usable pattern, or a UsageError saying why not."""
    if not pattern.strip():
        raise UsageError("--path needs a pattern, e.g. 'scans/2026/11/*' or /srv/scans/ktp-0001.pdf")
    if "\0" in pattern or any(part == ".." for part in pattern.split("/")):
        raise UsageError(f"--path {pattern!r}: '..' and NUL are not allowed in a pattern")
    return pattern


def _parts(pattern: str) -> list[str]:
    return posixpath.normpath(pattern).split("/")


def _part_matches(pattern: str, name: str) -> bool:
    if not any(c in pattern for c in "*?[\\"):
        return pattern == name
    # Go's filepath.Match negates a class with '^', fnmatch with '!'.
    return fnmatch.fnmatchcase(name, pattern.replace("[^", "[!"))


def _match(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if "**" in pattern:
        pos = pattern.index("**")
        head, tail = list(pattern[:pos]), list(pattern[pos + 1:])
        # '**' stands for 0, 1, 2, ... single-part wildcards
        return any(_match(head + ["*"] * n + tail, parts) for n in range(len(parts) - len(pattern) + 2))
    if not pattern:
        return not parts
    if len(pattern) > len(parts):
        return False
    offsets = [0] if pattern[0] == "" else range(len(parts) - len(pattern), -1, -1)
    return any(all(_part_matches(p, parts[o + i]) for i, p in enumerate(pattern)) for o in offsets)


def matches(patterns: Iterable[str], path: str) -> bool:
    """Whether restic's --include with these patterns restores the snapshot path `path`."""
    parts = path.split("/")
    return any(_match(_parts(p), parts) for p in patterns if p)


def ancestors(path: str) -> list[str]:
    """/a/b/c -> [/a, /a/b] (the directories restic creates to hold a selected entry)."""
    out, head = [], posixpath.dirname(path)
    while head not in ("/", ""):
        out.append(head)
        head = posixpath.dirname(head)
    return out[::-1]
