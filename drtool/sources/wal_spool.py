"""The local WAL spool of one PITR source: where pg_receivewal writes, and how a batch is staged.

    <spool>/                 0700, drtool's own
        wal/                 pg_receivewal -D: complete segments, the .partial being written, .history
        outbox/              the batch being shipped: hard links to complete segments, a copy of
                             the partial's written part, manifest.json (name, size, sha256 of each)
        state.json           what was shipped last (0600, written atomically)
        .lock                one shipper per spool (flock)

A complete segment never changes, so it is hard-linked into the outbox, shipped, and only
removed from wal/ once restic committed the batch and its summary matched the manifest.
The partial is copied up to its last non-zero byte (pg_receivewal pre-allocates it with
zeros); a fetch pads it back to the segment size. Nothing is removed before it is offsite.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.errors import StateError
from drtool.sources.wal_names import (
    PARTIAL_SUFFIX,
    Segment,
    history_tli,
    is_segment,
    parse_segment,
)

MANIFEST = "manifest.json"
LONG_PAGE_HEADER = 40          # bytes of WAL page header at the start of a segment (SizeOfXLogLongPHD)


@dataclass
class SpoolContents:
    complete: list[Segment] = field(default_factory=list)
    partials: list[Segment] = field(default_factory=list)      # newest last; older ones are old timelines'
    histories: list[int] = field(default_factory=list)
    bytes: int = 0

    @property
    def current_partial(self) -> Segment | None:
        return self.partials[-1] if self.partials else None


@dataclass
class Staged:
    """A batch in the outbox, ready for restic."""

    complete: list[Segment]
    partial: tuple[Segment, int, str] | None       # (segment, bytes, sha256)
    stale_partials: list[Segment]
    histories: list[int]
    files: dict[str, int]                          # file name -> size (manifest.json included)
    partial_data: bytes = field(default=b"", repr=False)   # the partial's copy, for pg_waldump

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def nonzero_length(data: bytes) -> int:
    """Bytes up to and including the last non-zero one (pg_receivewal pre-allocates with zeros)."""
    return len(data.rstrip(b"\0"))


def wal_covered(lsn: int, segsize: int, partial: tuple[Segment, int] | None, complete_upto: int | None) -> bool:
    """Pure: is all WAL before `lsn` in the complete segments up to `complete_upto` and the
    partial copy? (An LSN just past a fresh segment's page header needs only the segments before.)"""
    segno, offset = divmod(lsn, segsize)
    if partial is not None and partial[0].segno == segno:
        return partial[1] >= offset
    if complete_upto is not None and segno <= complete_upto:
        return True
    return offset <= LONG_PAGE_HEADER and complete_upto is not None and segno - 1 <= complete_upto


class Spool:
    def __init__(self, root: Path, segsize: int) -> None:
        self.root = Path(root)
        self.segsize = segsize
        self.wal = self.root / "wal"
        self.outbox = self.root / "outbox"
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        for path in (self.root, self.wal):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.chmod(0o700)

    def lock(self) -> None:
        """One shipper per spool: a second one would ship and delete the same files."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"another WAL shipper is running for the spool {self.root}",
                             hint="stop it (drtool daemon or drtool wal-ship) before starting this one") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------ what is there

    def scan(self) -> SpoolContents:
        found = SpoolContents()
        for entry in os.scandir(self.wal):
            name = entry.name
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue                                # renamed by pg_receivewal meanwhile
            if is_segment(name) and size == self.segsize:
                found.complete.append(parse_segment(name, self.segsize))
            elif name.endswith(PARTIAL_SUFFIX) and is_segment(name[: -len(PARTIAL_SUFFIX)]):
                found.partials.append(parse_segment(name[: -len(PARTIAL_SUFFIX)], self.segsize))
            elif history_tli(name) is not None:
                found.histories.append(history_tli(name))  # type: ignore[arg-type]
            else:
                continue
            found.bytes += size
        found.complete.sort()
        found.partials.sort(key=lambda s: (s.segno, s.tli))
        return found

    # ------------------------------------------------------------ staging a batch

    def stage(self, contents: SpoolContents, *, limit: int) -> Staged:
        """Fill the outbox: up to `limit` complete segments, the histories and the partial's copy
        (the partial only when every complete segment fits: it must be the newest data)."""
        self.clear_outbox()
        self.outbox.mkdir(mode=0o700)
        complete = contents.complete[:limit]
        whole = len(complete) == len(contents.complete)
        files: dict[str, int] = {}
        digests: dict[str, str] = {}
        for seg in complete:
            name = seg.name(self.segsize)
            digests[name], files[name] = self._link(name)
        histories = list(contents.histories) if whole else []
        for tli in histories:
            name = f"{tli:08X}.history"
            digests[name], files[name] = self._link(name)
        partial, partial_data = None, b""
        stale = contents.partials[:-1] if whole else []
        for seg in stale:
            name = seg.name(self.segsize) + PARTIAL_SUFFIX
            digests[name], files[name] = self._link(name)
        current = contents.current_partial if whole else None
        if current is not None:
            partial_data = self._copy_partial(current)
            if partial_data is not None:
                name = current.name(self.segsize) + PARTIAL_SUFFIX
                files[name], digests[name] = len(partial_data), hashlib.sha256(partial_data).hexdigest()
                partial = (current, files[name], digests[name])
        manifest = {"segment_size": self.segsize, "files": {n: {"size": files[n], "sha256": digests[n]} for n in files},
                    "partial": None if partial is None else {"name": partial[0].name(self.segsize), "bytes": partial[1]},
                    "stale_partials": [s.name(self.segsize) for s in stale]}
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        (self.outbox / MANIFEST).write_bytes(data)
        files[MANIFEST] = len(data)
        return Staged(complete, partial, stale, histories, files, partial_data or b"")

    def _link(self, name: str) -> tuple[str, int]:
        src, dst = self.wal / name, self.outbox / name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)                      # another file system
        return _sha256(dst), dst.stat().st_size

    def _copy_partial(self, seg: Segment) -> bytes | None:
        try:
            data = (self.wal / (seg.name(self.segsize) + PARTIAL_SUFFIX)).read_bytes()
        except FileNotFoundError:
            return None                                 # completed and renamed meanwhile: next batch
        data = data[: nonzero_length(data)]
        (self.outbox / (seg.name(self.segsize) + PARTIAL_SUFFIX)).write_bytes(data)
        return data

    def commit(self, staged: Staged) -> None:
        """The batch is offsite: remove what it shipped from wal/ (never the current partial)."""
        names = [s.name(self.segsize) for s in staged.complete]
        names += [f"{t:08X}.history" for t in staged.histories]
        names += [s.name(self.segsize) + PARTIAL_SUFFIX for s in staged.stale_partials]
        for name in names:
            (self.wal / name).unlink(missing_ok=True)
        self.clear_outbox()

    def clear_outbox(self) -> None:
        shutil.rmtree(self.outbox, ignore_errors=True)

    def discard_partial(self, seg: Segment) -> None:
        """After a gap: the old partial was shipped; pg_receivewal must start afresh."""
        (self.wal / (seg.name(self.segsize) + PARTIAL_SUFFIX)).unlink(missing_ok=True)

    # ------------------------------------------------------------ state

    def load_state(self) -> dict[str, Any]:
        return read_state(self.root)

    def save_state(self, state: dict[str, Any]) -> None:
        path = self.root / "state.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, sort_keys=True)
        os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(root: Path) -> dict[str, Any]:
    """A spool's state.json ({} when absent or damaged: that only costs one re-ship). Read
    without the spool lock: it is replaced atomically."""
    try:
        state = json.loads((root / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
