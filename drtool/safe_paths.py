"""Restores never write outside their target: the checks every restore path runs first.

A snapshot is data from the past, maybe from a machine that was already compromised, and
a restore runs as root. Three ways a restore could write outside its target:

1. a name that leaves it: absolute (`/etc/cron.d/x`) or with a `..` component;
2. a name below a symlink *in the archive* (`link -> /etc`, then `link/cron.d/x`);
3. a name below a symlink *already in the target* (a `--force` restore over a tree in
   which `link_out -> /outside` exists, of a snapshot in which `link_out/` is a directory):
   restic restore and GNU tar both follow it.

`name_problem` and `TarMemberGuard` catch 1 and 2 (the guard reads a tar stream's headers
as it passes, so the member is refused before tar sees it); `symlink_crossings` catches 3
from a listing of the snapshot and of the target's symlinks, before anything is written.
Stream names (`stream=` tags become temp file names) must be plain file names.

Pure except `local_symlinks` (a walk of the target that never follows a link).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)


def name_problem(name: str) -> str | None:
    """Why an archive or snapshot path may not be restored, or None."""
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith("/"):
        return "is absolute"
    if ".." in name.split("/"):
        return "has a '..' component"
    return None


def safe_stream_name(name: str) -> bool:
    """A stream name is a plain file name: it becomes a temp file's name during restores."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


def normalise(name: str) -> str:
    """'./a//b/' -> 'a/b' (the path a member lands on, relative to the target)."""
    return posixpath.normpath(name).lstrip("/") if name not in ("", ".") else ""


def local_symlinks(target: Path) -> dict[str, str]:
    """Every symlink under `target` (relative path -> where it points), links never followed."""
    links: dict[str, str] = {}
    for folder, dirs, files in os.walk(target, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                links[os.path.relpath(path, target)] = os.readlink(path)
    return links


def symlink_crossings(paths: Iterable[str], links: Mapping[str, str], limit: int = 5) -> list[str]:
    """Paths (relative to the target) that would be written through one of `links`, described."""
    found: list[str] = []
    for raw in paths:
        path = normalise(raw)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in links:
                found.append(f"{path} (through {prefix} -> {links[prefix]})")
                break
        if len(found) >= limit:
            break
    return found


class TarMemberGuard:
    """Reads the headers of a tar stream as it passes (ustar, GNU long names, pax); `problem`
    is set at the first member that names a path outside the target (name_problem), that
    lies below an earlier symlink member, or that is a hard link to such a path.

    Feed each chunk before it is forwarded: once `problem` is set, nothing of that chunk
    may reach tar. Member data is skipped, never buffered."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.members = 0
        self._buf = bytearray()
        self._skip = 0                       # bytes of member data (padded to blocks) still to pass
        self._meta: tuple[str, int, int] | None = None   # a long-name / pax record being read
        self._pending: dict[str, str] = {}   # what such a record says about the next member
        self._links: set[str] = set()        # symlink members seen
        self._ended = False

    def feed(self, data: bytes) -> None:
        if self.problem or self._ended:
            return
        view = memoryview(data)
        if self._skip and not self._buf:     # the usual case: file data, passed without a copy
            used = min(self._skip, len(view))
            self._skip -= used
            view = view[used:]
        self._buf += view
        while not self.problem and not self._ended:
            if self._skip:
                used = min(self._skip, len(self._buf))
                del self._buf[:used]
                self._skip -= used
                if self._skip:
                    return
            elif self._meta is not None:
                kind, size, padded = self._meta
                if len(self._buf) < padded:
                    return
                self._read_meta(kind, bytes(self._buf[:size]))
                del self._buf[:padded]
                self._meta = None
            elif len(self._buf) >= BLOCK:
                header = bytes(self._buf[:BLOCK])
                del self._buf[:BLOCK]
                self._header(header)
            else:
                return

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self._ended = True               # end of archive (tar -x stops reading here too)
            return
        kind = chr(block[156]) if block[156] else "0"
        size = _tar_size(block[124:136])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in ("L", "K", "x"):          # the data describes the next member: read it
            self._meta = (kind, size, padded)
            return
        if kind == "g":                      # global pax header: nothing per member
            self._skip = padded
            return
        name = self._pending.pop("path", None) or _ustar_name(block)
        link = self._pending.pop("linkpath", None) or _cstr(block[157:257])
        self._pending.clear()
        self.members += 1
        self._check(name, kind, link)
        self._skip = 0 if kind in ("1", "2", "3", "4", "5", "6") else padded   # links, devices, dirs: no data

    def _read_meta(self, kind: str, data: bytes) -> None:
        if kind == "L":
            self._pending["path"] = _cstr(data)
        elif kind == "K":
            self._pending["linkpath"] = _cstr(data)
        else:
            self._pending.update(_pax_records(data))

    def _check(self, name: str, kind: str, link: str) -> None:
        problem = name_problem(name)
        path = normalise(name)
        if problem is None:
            parts = path.split("/")
            below = next(("/".join(parts[:d]) for d in range(1, len(parts)) if "/".join(parts[:d]) in self._links),
                         None)
            if below is not None:
                problem = f"lies below the symlink {below} of the same archive"
        if problem is None and kind == "1":
            why = name_problem(link)
            if why:
                problem = f"is a hard link to {link!r}, which {why}"
        if problem is not None:
            self.problem = f"archive member {name!r} {problem}"
        elif kind == "2":
            self._links.add(path)


def _tar_size(field: bytes) -> int:
    if field and field[0] & 0x80:            # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _cstr(data: bytes) -> str:
    return data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _ustar_name(block: bytes) -> str:
    name = _cstr(block[0:100])
    if block[257:263] == b"ustar\x00":      # POSIX ustar: a prefix field (GNU's "ustar  " has none)
        prefix = _cstr(block[345:500])
        if prefix:
            return f"{prefix}/{name}"
    return name


def _pax_records(data: bytes) -> dict[str, str]:
    """'NN key=value\\n' records of a pax extended header (path and linkpath matter here)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[space + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return {k: v for k, v in records.items() if k in ("path", "linkpath")}
