"""WAL file names, LSNs and how WAL batches are tagged in the repository (pure).

A WAL segment file is named TTTTTTTTXXXXXXXXYYYYYYYY: timeline, then the segment
number split in two (the "log id" and the segment within it). With the default
16 MiB segments there are 0x100 segments per log id; other `wal_segment_size`s
change that, so every function takes the segment size.

A batch of WAL is one restic tree snapshot (files at its root) tagged

    drtool, policy=P, wal=SOURCE, batch=ID,
    segs=FIRST-LAST        one tag per contiguous run of complete segments (file names)
    partial=NAME:BYTES     a copy of the segment pg_receivewal is still writing, its first BYTES
    history=TLI            a timeline history file (TTTTTTTT.history) in the batch
    upto=ISO-TIME          every commit before this time is in this batch or an earlier one
    sysid=N                the cluster's system identifier
    segsize=BYTES          wal_segment_size

No `source=` and no `run=` tag: the snapshot-set logic of database sources (and its
debris rule for sets without fingerprint.json) never sees a WAL batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
PARTIAL_SUFFIX = ".partial"
WAL_TAG = "wal"


def parse_lsn(text: str) -> int:
    """'0/3002758' -> 50341720."""
    high, _, low = text.strip().partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(segsize: int) -> int:
    return 0x100000000 // segsize


@dataclass(frozen=True, order=True)
class Segment:
    tli: int
    segno: int

    def name(self, segsize: int = DEFAULT_SEGMENT_SIZE) -> str:
        per = segments_per_id(segsize)
        return f"{self.tli:08X}{self.segno // per:08X}{self.segno % per:08X}"

    def start_lsn(self, segsize: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.segno * segsize


def parse_segment(name: str, segsize: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    if not SEGMENT_RE.match(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per = segments_per_id(segsize)
    return Segment(int(name[:8], 16), int(name[8:16], 16) * per + int(name[16:], 16))


def is_segment(name: str) -> bool:
    return bool(SEGMENT_RE.match(name))


def history_tli(name: str) -> int | None:
    match = HISTORY_RE.match(name)
    return int(match.group(1), 16) if match else None


def history_name(tli: int) -> str:
    return f"{tli:08X}.history"


def segment_of(lsn: int, tli: int, segsize: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    return Segment(tli, lsn // segsize)


@dataclass(frozen=True, order=True)
class SegRange:
    """A contiguous run of complete segments on one timeline."""

    tli: int
    first: int
    last: int

    def segments(self) -> Iterable[Segment]:
        return (Segment(self.tli, n) for n in range(self.first, self.last + 1))

    def tag(self, segsize: int) -> str:
        return f"segs={Segment(self.tli, self.first).name(segsize)}-{Segment(self.tli, self.last).name(segsize)}"


def ranges(segments: Iterable[Segment]) -> list[SegRange]:
    """Contiguous runs, per timeline, in order."""
    runs: list[SegRange] = []
    for seg in sorted(set(segments)):
        last = runs[-1] if runs else None
        if last is not None and last.tli == seg.tli and last.last + 1 == seg.segno:
            runs[-1] = SegRange(seg.tli, last.first, seg.segno)
        else:
            runs.append(SegRange(seg.tli, seg.segno, seg.segno))
    return runs


def parse_range(value: str, segsize: int) -> SegRange:
    first, _, last = value.partition("-")
    a, b = parse_segment(first, segsize), parse_segment(last, segsize)
    if a.tli != b.tli or b.segno < a.segno:
        raise ValueError(f"not a segment range: {value!r}")
    return SegRange(a.tli, a.segno, b.segno)


# ------------------------------------------------------------------ batches as tags

def format_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Batch:
    """One WAL batch snapshot, as its tags describe it."""

    snapshot_id: str
    time: datetime                        # the snapshot's own time
    batch_id: str
    ranges: tuple[SegRange, ...] = ()
    partial: tuple[Segment, int] | None = None   # (segment, bytes copied)
    histories: tuple[int, ...] = ()
    upto: datetime | None = None
    sysid: str | None = None
    segsize: int = DEFAULT_SEGMENT_SIZE

    @property
    def complete(self) -> list[Segment]:
        return [seg for r in self.ranges for seg in r.segments()]

    @property
    def newest(self) -> Segment | None:
        """The newest segment this batch holds anything of (its partial, else its last complete)."""
        candidates = [Segment(r.tli, r.last) for r in self.ranges]
        if self.partial is not None:
            candidates.append(self.partial[0])
        return max(candidates, key=lambda s: (s.segno, s.tli)) if candidates else None

    def files(self) -> list[str]:
        """The names of the files in the snapshot (besides manifest.json)."""
        names = [seg.name(self.segsize) for seg in self.complete]
        if self.partial is not None:
            names.append(self.partial[0].name(self.segsize) + PARTIAL_SUFFIX)
        return names + [history_name(t) for t in self.histories]


def batch_tags(*, policy: str, source: str, batch_id: str, complete: Sequence[Segment],
               partial: tuple[Segment, int] | None, histories: Sequence[int], upto: datetime | None,
               sysid: str | None, segsize: int) -> list[str]:
    tags = ["drtool", f"policy={policy}", f"{WAL_TAG}={source}", f"batch={batch_id}"]
    tags += [r.tag(segsize) for r in ranges(complete)]
    if partial is not None:
        tags.append(f"partial={partial[0].name(segsize)}:{partial[1]}")
    tags += [f"history={tli:08X}" for tli in sorted(set(histories))]
    if upto is not None:
        tags.append(f"upto={format_time(upto)}")
    if sysid:
        tags.append(f"sysid={sysid}")
    tags.append(f"segsize={segsize}")
    return tags


def batch_from_tags(snapshot_id: str, time: datetime, tags: Sequence[str]) -> Batch | None:
    """The batch a snapshot's tags describe; None for a snapshot that is not a WAL batch
    (or whose tags do not parse: it is then not trusted as WAL at all)."""
    values: dict[str, list[str]] = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if sep:
            values.setdefault(key, []).append(value)
    if WAL_TAG not in values or "batch" not in values:
        return None
    try:
        segsize = int(values.get("segsize", [str(DEFAULT_SEGMENT_SIZE)])[0])
        runs = tuple(parse_range(v, segsize) for v in values.get("segs", []))
        partial = None
        if "partial" in values:
            name, _, size = values["partial"][0].partition(":")
            partial = (parse_segment(name, segsize), int(size))
        histories = tuple(int(v, 16) for v in values.get("history", []))
        upto = parse_time(values["upto"][0]) if "upto" in values else None
    except ValueError:
        return None
    return Batch(snapshot_id, time, values["batch"][0], runs, partial, histories, upto,
                 values.get("sysid", [None])[0], segsize)
