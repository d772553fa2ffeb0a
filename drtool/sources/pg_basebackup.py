"""Physical base backups: the pg_basebackup argv and the check that proves its tar stream whole.

    pg_basebackup -D - -F t -X fetch --checkpoint=fast ...      (one tar stream on stdout)

Why `-X fetch`: the WAL from the backup's start to its stop goes into the tar itself
(pg_wal/), so every base backup is consistent on its own, even if the WAL archive has a
gap; the cost is that the server must keep that WAL until the backup ends (set
wal_keep_size to cover a base backup's duration, or the backup fails loudly: no snapshot).
Tar to stdout needs a cluster without extra tablespaces; `--checkpoint=fast` starts at once
instead of waiting for a spread checkpoint.

`BaseBackupCheck` sees every byte on its way into restic (the pipeline's stream check) and
vetoes the commit unless the stream is a complete pg_basebackup tar: every header's
checksum holds, the end-of-archive marker came, backup_label, global/pg_control and
PG_VERSION are there, every file the backup manifest lists is there with its size, and
pg_wal/ holds every segment from the start LSN to the stop LSN. From the same bytes it
records what point-in-time recovery needs (start/stop LSN, timeline, system identifier,
segment size, major version) for the source's fingerprint.
"""

from __future__ import annotations

import json
import re
import struct
from datetime import datetime, timezone
from typing import Any

from drtool.errors import SourceError
from drtool.sources.psql import pg_tool
from drtool.sources.wal_names import format_lsn, is_segment, parse_lsn, parse_segment

BASE_STREAM = "base.tar"
BLOCK = 512
CAPTURE_LIMITS = {"backup_label": 1 << 20, "PG_VERSION": 64, "global/pg_control": 8192,
                  "backup_manifest": 256 << 20}
_EXTENDED = {b"x", b"g", b"L", b"K"}


def pg_basebackup_argv(bin_dir: str | None, conn: list[str], label: str) -> list[str]:
    return [pg_tool(bin_dir, "pg_basebackup"), *conn, "-D", "-", "-F", "t", "-X", "fetch",
            "--checkpoint=fast", f"--label={label}"]


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:                      # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _header_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


class BaseBackupCheck:
    """A StreamCheck over a pg_basebackup tar stream; see the module docstring."""

    def __init__(self) -> None:
        self._buf = bytearray()          # a header being assembled
        self._left = 0                   # data bytes of the current member still to come
        self._pad = 0
        self._name: str | None = None
        self._capture: bytearray | None = None
        self._capture_limit = 0
        self._next_name: str | None = None   # from a GNU long-name or pax header
        self._zero_blocks = 0
        self._ext_type: bytes | None = None
        self.bytes = 0
        self.files: dict[str, int] = {}
        self.captured: dict[str, bytes] = {}
        self.problem: str | None = None
        self._info: dict[str, Any] | None = None

    # -------------------------------------------------------------- feeding

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        view = memoryview(data)
        while view and self.problem is None:
            if self._left or self._pad:
                view = self._data(view)
            else:
                take = min(BLOCK - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) == BLOCK:
                    self._header(bytes(self._buf))
                    self._buf.clear()

    def _data(self, view: memoryview) -> memoryview:
        if self._left:
            take = min(self._left, len(view))
            if self._capture is not None and len(self._capture) < self._capture_limit:
                self._capture += view[:min(take, self._capture_limit - len(self._capture))]
            self._left -= take
            view = view[take:]
            if self._left == 0:
                self._end_member()
            return view
        take = min(self._pad, len(view))
        self._pad -= take
        return view[take:]

    def _header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self._zero_blocks += 1
            return
        if self._zero_blocks:
            self.problem = "data after the tar end-of-archive marker"
            return
        if not _header_ok(header):
            self.problem = f"a tar header after {self.bytes} bytes has a wrong checksum"
            return
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        kind = header[156:157]
        size = _octal(header[124:136])
        if self._next_name and kind not in _EXTENDED:
            name, self._next_name = self._next_name, None
        name = name.removeprefix("./")
        self._left, self._pad = size, (-size) % BLOCK
        self._name, self._ext_type = name, kind if kind in _EXTENDED else None
        limit = 1 << 20 if self._ext_type else CAPTURE_LIMITS.get(name, 0)
        self._capture = bytearray() if limit else None
        self._capture_limit = limit
        if kind in (b"0", b"\0"):
            self.files[name] = size
        if size == 0:
            self._end_member()

    def _end_member(self) -> None:
        data = bytes(self._capture) if self._capture is not None else None
        if self._ext_type == b"L" and data is not None:
            self._next_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif self._ext_type == b"x" and data is not None:
            found = re.search(rb"\d+ path=([^\n]*)\n", data)
            if found:
                self._next_name = found.group(1).decode("utf-8", "replace")
        elif data is not None and self._name is not None:
            self.captured[self._name] = data
        self._capture, self._ext_type = None, None

    # -------------------------------------------------------------- verdict

    def finish(self) -> None:
        """Raise SourceError unless the stream was a whole base backup that can become consistent."""
        self._check_archive()
        label = _parse_label(self.captured["backup_label"].decode("utf-8", "replace"))
        manifest = self._manifest()
        start, stop, segsize = self._check_wal(label["start_lsn"], manifest.get("stop_lsn") if manifest else None)
        control = self.captured["global/pg_control"]
        self._info = {
            "start_lsn": format_lsn(start), "stop_lsn": format_lsn(stop), "timeline": label["timeline"],
            "start_time": label["start_time"], "stop_time": datetime.now(timezone.utc).isoformat(),
            "backup_from": label["from"],
            "sysid": str(struct.unpack("<Q", control[:8])[0]) if len(control) >= 8 else None,
            "segsize": segsize, "major": _major(self.captured["PG_VERSION"]), "bytes": self.bytes,
            "files": len(self.files)}

    def _check_archive(self) -> None:
        """A whole tar archive (not cut short, not damaged) of a data directory."""
        if self.problem:
            raise SourceError(f"the base backup stream is damaged: {self.problem}")
        if self._left or self._buf or self._zero_blocks < 2:
            raise SourceError(f"the base backup tar stream ended after {self.bytes} bytes without its "
                              "end-of-archive marker (cut short)")
        missing = [n for n in ("backup_label", "global/pg_control", "PG_VERSION") if n not in self.captured]
        if missing:
            raise SourceError(f"the base backup has no {', '.join(missing)}: not a pg_basebackup of a data directory")

    def _check_wal(self, start: int, stop: int | None) -> tuple[int, int, int]:
        """(start, stop, segment size): every WAL segment from start to stop is in the archive."""
        wal = {n.split("/")[-1]: size for n, size in self.files.items()
               if n.startswith("pg_wal/") and is_segment(n.split("/")[-1])}
        if not wal:
            raise SourceError("the base backup holds no WAL (pg_wal/ is empty): it was not taken with -X fetch")
        segsize = max(wal.values())
        if stop is None:      # no manifest (server < 13): up to the last WAL file it holds
            stop = (max(parse_segment(n, segsize).segno for n in wal) + 1) * segsize - 1
        needed = range(start // segsize, stop // segsize + 1)
        have = {parse_segment(n, segsize).segno for n, size in wal.items() if size == segsize}
        lacking = [n for n in needed if n not in have]
        if lacking:
            raise SourceError(f"the base backup lacks {len(lacking)} WAL segment(s) between {format_lsn(start)} "
                              f"and {format_lsn(stop)}: it cannot become consistent")
        return start, stop, segsize

    def _manifest(self) -> dict[str, Any] | None:
        raw = self.captured.get("backup_manifest")
        if raw is None:
            return None
        if len(raw) >= CAPTURE_LIMITS["backup_manifest"]:
            return None                  # too big to hold: the tar checks above still apply
        try:
            doc = json.loads(raw)
        except ValueError:
            raise SourceError("the base backup's backup_manifest is not valid JSON (stream damaged)") from None
        wrong = [f["Path"] for f in doc.get("Files", [])
                 if "Path" in f and self.files.get(f["Path"]) != f.get("Size")]
        if wrong:
            raise SourceError(f"the base backup does not match its manifest: {len(wrong)} file(s) missing or of "
                              f"another size, e.g. {wrong[0]}")
        ranges = doc.get("WAL-Ranges") or []
        if not ranges:
            return {}
        return {"stop_lsn": max(parse_lsn(r["End-LSN"]) for r in ranges)}

    def info(self) -> dict[str, Any]:
        """What recovery needs to know about this base backup (after finish())."""
        if self._info is None:
            raise SourceError("the base backup was not checked")
        return dict(self._info)


def _parse_label(text: str) -> dict[str, Any]:
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    try:
        start = parse_lsn(fields["START WAL LOCATION"].split()[0])
        timeline = int(fields.get("START TIMELINE", "1"))
    except (KeyError, ValueError):
        raise SourceError("the base backup's backup_label cannot be read") from None
    # START TIME is in the server's log_timezone ("... UTC", "... WIB"): kept as written, for people.
    return {"start_lsn": start, "timeline": timeline, "start_time": fields.get("START TIME", "").strip() or None,
            "from": fields.get("BACKUP FROM", "primary").strip()}


def _major(raw: bytes) -> int | None:
    text = raw.decode("ascii", "replace").strip()
    return int(text.split(".")[0]) if text.split(".")[0].isdigit() else None
