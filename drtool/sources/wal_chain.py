"""The WAL chain (pure): what the base backups and WAL batches in a repository can recover.

    archive = Archive(batches)                # every WAL batch of one source (one cluster)
    view = analyse(bases, archive)            # window(s), newest WAL, gaps, timelines: for status
    plan = plan_restore(bases, archive, at)   # which base backup and which WAL files recover `at`

The rules:
- A base backup (pg_basebackup -X fetch) carries the WAL from its start to its stop, so
  it is consistent on its own at `stop_time`; from there on it needs the archive's WAL,
  segment after segment. On a primary the backup's end switches to a new segment, so the
  base holds its stop segment whole and the archive must go on from the next one (a base
  backup taken from a standby does not switch: the archive must hold its stop segment too).
- A complete segment counts once it is in any batch. Of the segment pg_receivewal was
  still writing only the newest batch's copy counts (`partial`), and only as the last one.
- A batch's `upto` time is reachable from a base when every segment from the base's stop
  segment up to the batch's newest one is in the archive (the newest may be the batch's own
  partial copy). The newest reachable `upto` is where recovery from that base ends.
- A missing segment between the oldest base backup's stop and the newest WAL is a gap: a
  breach, since some moment of the window the admin relies on cannot be recovered.
- Timelines: a timeline's first segment in the archive marks where it took over; a segment
  number belongs to the newest timeline that had started by then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from drtool.sources.wal_names import (
    DEFAULT_SEGMENT_SIZE,
    PARTIAL_SUFFIX,
    Batch,
    Segment,
    history_name,
    parse_segment,
)


@dataclass(frozen=True)
class BaseBackup:
    """One physical base backup, as its fingerprint's `pitr` block records it."""

    run_id: str
    snapshot_id: str                      # the base.tar snapshot
    start_lsn: int
    stop_lsn: int
    tli: int
    start_time: datetime
    stop_time: datetime                   # consistent from here on (recorded after pg_basebackup exited)
    sysid: str | None = None
    segsize: int = DEFAULT_SEGMENT_SIZE
    major: int | None = None
    from_primary: bool = True             # pg_backup_stop switched segments: the stop segment is in the base

    @property
    def stop_segno(self) -> int:
        return self.stop_lsn // self.segsize

    @property
    def next_segno(self) -> int:
        """The first segment the archive must hold for this base backup to go on."""
        return self.stop_segno + 1 if self.from_primary else self.stop_segno

    @property
    def start_segno(self) -> int:
        return self.start_lsn // self.segsize


@dataclass(frozen=True)
class FileRef:
    """Where one WAL file a recovery needs is: which batch snapshot, under which name."""

    snapshot_id: str
    stored_as: str                        # name inside the snapshot (NAME.partial for a partial copy)
    partial_bytes: int | None = None      # a partial copy: its length (padded to the segment size on fetch)


class Archive:
    """Every WAL batch of one cluster (one system identifier), indexed by segment."""

    def __init__(self, batches: Iterable[Batch], sysid: str | None = None) -> None:
        self.batches = sorted((b for b in batches if sysid is None or b.sysid in (None, sysid)),
                              key=lambda b: (b.upto or b.time, b.time))
        self.segsize = self.batches[0].segsize if self.batches else DEFAULT_SEGMENT_SIZE
        self.complete: dict[Segment, Batch] = {}
        self.partials: dict[Segment, tuple[Batch, int]] = {}
        self.histories: dict[int, Batch] = {}
        first: dict[int, int] = {}
        for batch in self.batches:
            for seg in batch.complete:
                self.complete.setdefault(seg, batch)
                first[seg.tli] = min(first.get(seg.tli, seg.segno), seg.segno)
            if batch.partial is not None:
                seg, size = batch.partial
                if size >= self.partials.get(seg, (batch, -1))[1]:
                    self.partials[seg] = (batch, size)
                first[seg.tli] = min(first.get(seg.tli, seg.segno), seg.segno)
            for tli in batch.histories:
                self.histories.setdefault(tli, batch)
        self.first_of_tli = first

    def owner(self, segno: int) -> int:
        """The timeline a segment number belongs to: the newest one that had started by then."""
        started = [tli for tli, first in self.first_of_tli.items() if first <= segno]
        return max(started) if started else min(self.first_of_tli, default=1)

    def segment(self, segno: int) -> Segment:
        return Segment(self.owner(segno), segno)

    def has(self, segno: int) -> bool:
        return self.segment(segno) in self.complete

    def reach(self, from_segno: int) -> int:
        """The last segment number up to which every segment from `from_segno` is complete."""
        n = from_segno
        while self.has(n):
            n += 1
        return n - 1

    @property
    def newest_segno(self) -> int | None:
        found = [b.newest.segno for b in self.batches if b.newest is not None]
        return max(found) if found else None

    @property
    def newest_upto(self) -> datetime | None:
        times = [b.upto for b in self.batches if b.upto is not None]
        return max(times) if times else None

    def end_time(self, base: BaseBackup) -> datetime | None:
        """The newest moment recoverable from `base` (None: only the base's own stop point)."""
        reach = self.reach(base.next_segno)
        best: datetime | None = None
        for batch in self.batches:
            newest = batch.newest
            if batch.upto is None or batch.upto < base.stop_time or newest is None:
                continue
            own_partial = batch.partial is not None and batch.partial[0].segno == reach + 1
            if newest.segno <= reach or (newest.segno == reach + 1 and own_partial):
                best = batch.upto if best is None else max(best, batch.upto)
        return best


# ------------------------------------------------------------------ status view

@dataclass(frozen=True)
class Gap:
    tli: int
    first: int                            # first missing segment number
    last: int                             # last missing segment number
    after: datetime | None                # newest WAL time before the gap
    before: datetime | None               # oldest WAL time after it
    segsize: int = DEFAULT_SEGMENT_SIZE
    shipped: bool = False                 # the chain's end: known missing only because this host shipped it

    def describe(self) -> str:
        first, last = Segment(self.tli, self.first).name(self.segsize), Segment(self.tli, self.last).name(self.segsize)
        what = first if first == last else f"{first}..{last}"
        if self.shipped:
            since = f" (WAL after {self.after:%Y-%m-%d %H:%M:%S} UTC)" if self.after else ""
            return f"WAL {what} is missing{since}: this host shipped it, the repository no longer holds it"
        when = ""
        if self.after or self.before:
            when = (f" (between {self.after:%Y-%m-%d %H:%M:%S} and " if self.after else " (before ") + \
                   (f"{self.before:%Y-%m-%d %H:%M:%S} UTC)" if self.before else "the newest WAL)")
        return f"WAL {what} is missing{when}"


@dataclass
class PitrView:
    base_backups: int
    newest_wal: datetime | None           # the newest `upto` of any batch
    newest_segment: str | None
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)   # recoverable, oldest first
    gaps: list[Gap] = field(default_factory=list)
    timelines: list[tuple[int, str]] = field(default_factory=list)            # (tli, first segment name)
    missing_history: list[int] = field(default_factory=list)
    foreign_batches: int = 0              # WAL of another cluster (system identifier) under this source

    @property
    def recovery_point(self) -> datetime | None:
        """The newest moment a recovery can reach: the end of the newest window."""
        return max((end for _start, end in self.windows), default=None)

    def to_dict(self) -> dict[str, object]:
        iso = lambda t: t.isoformat() if t else None
        return {"base_backups": self.base_backups, "newest_wal": iso(self.newest_wal),
                "newest_segment": self.newest_segment, "recovery_point": iso(self.recovery_point),
                "windows": [{"from": iso(a), "to": iso(b)} for a, b in self.windows],
                "gaps": [{"from": Segment(g.tli, g.first).name(g.segsize), "to": Segment(g.tli, g.last).name(g.segsize),
                          "after": iso(g.after), "before": iso(g.before), "message": g.describe()}
                         for g in self.gaps],
                "timelines": [{"timeline": t, "from": name} for t, name in self.timelines],
                "missing_history": self.missing_history, "foreign_batches": self.foreign_batches}


def analyse(bases: Sequence[BaseBackup], batches: Sequence[Batch],
            shipped: tuple[str, str] | None = None) -> PitrView:
    """Windows, gaps and timelines of one source, for the cluster of its newest base backup.

    `shipped`: (system identifier, newest complete segment name) this host shipped, read before the
    listing. A repository that lost its newest batches shows no hole (nothing follows them), only
    an earlier end; what this host knows it shipped makes that loss a gap too."""
    sysid = max(bases, key=lambda b: b.stop_time).sysid if bases else None
    archive = Archive(batches, sysid)
    foreign = len(batches) - len(archive.batches)
    newest = archive.newest_segno
    view = PitrView(len(bases), archive.newest_upto,
                    archive.segment(newest).name(archive.segsize) if newest is not None else None,
                    foreign_batches=foreign)
    mine = sorted((b for b in bases if sysid is None or b.sysid in (None, sysid)), key=lambda b: b.stop_time)
    view.windows = merge_windows((b.stop_time, archive.end_time(b) or b.stop_time) for b in mine)
    mine_shipped = _shipped_segno(archive, sysid, shipped)
    if mine and (newest is not None or mine_shipped is not None):
        view.gaps = find_gaps(archive, min(b.next_segno for b in mine), newest, mine_shipped)
    tlis = sorted(archive.first_of_tli)
    view.timelines = [(t, Segment(t, archive.first_of_tli[t]).name(archive.segsize)) for t in tlis]
    view.missing_history = [t for t in tlis[1:] if t not in archive.histories]
    return view


def _shipped_segno(archive: Archive, sysid: str | None, shipped: tuple[str, str] | None) -> int | None:
    """The segment number this host says it shipped complete, when that claim is about this
    cluster and about the timeline that owns the segment; else None (it claims nothing)."""
    if shipped is None or sysid is None or shipped[0] != sysid:
        return None
    try:
        seg = parse_segment(shipped[1], archive.segsize)
    except ValueError:
        return None                       # a damaged spool state proves nothing
    # After a recovery to a new timeline the state names the old one's segments until the first
    # new batch, and those are no loss.
    return seg.segno if archive.segment(seg.segno) == seg else None


def merge_windows(windows: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def find_gaps(archive: Archive, from_segno: int, newest: int | None, shipped: int | None = None) -> list[Gap]:
    """Missing segments in [from_segno, newest]; the newest one may be a partial copy only.
    Up to `shipped` (this host shipped it complete) every segment must be complete."""
    last = max(n for n in (newest, shipped) if n is not None)
    complete_upto = shipped if shipped is not None else last - 1

    def present(n: int) -> bool:
        seg = archive.segment(n)
        return seg in archive.complete or (n == last and n > complete_upto and seg in archive.partials)

    gaps: list[Gap] = []
    n = from_segno
    while n <= last:
        if present(n):
            n += 1
            continue
        start, tli = n, archive.segment(n).tli
        while n <= last and not present(n):
            n += 1
        # A gap that reaches `last` has nothing after it in the repository: only `shipped` shows it.
        gaps.append(Gap(tli, start, n - 1, _time_before(archive, start), _time_after(archive, n - 1),
                        archive.segsize, shipped=n - 1 == last))
    return gaps


def _time_before(archive: Archive, segno: int) -> datetime | None:
    times = [b.upto for b in archive.batches if b.upto and b.newest and b.newest.segno < segno]
    return max(times) if times else None


def _time_after(archive: Archive, segno: int) -> datetime | None:
    times = [b.time for b in archive.batches if b.newest and any(s.segno > segno for s in b.complete)]
    return min(times) if times else None


# ------------------------------------------------------------------ restore plan

class OutsideWindow(ValueError):
    """The requested moment cannot be recovered from what the repository holds."""


@dataclass
class RestorePlan:
    base: BaseBackup
    target: datetime | None               # None: the newest moment (latest)
    recovery_point: datetime              # where the recovery will end (the target, or the chain's end)
    files: dict[str, FileRef]             # WAL file name -> where it is
    newest: Segment | None                # the last segment of the chain
    segsize: int

    @property
    def snapshots(self) -> list[str]:
        return sorted({ref.snapshot_id for ref in self.files.values()})


def describe_windows(windows: Sequence[tuple[datetime, datetime]]) -> str:
    if not windows:
        return "nothing (no base backup with WAL)"
    return ", ".join(f"{a:%Y-%m-%d %H:%M:%S}..{b:%Y-%m-%d %H:%M:%S} UTC" for a, b in windows)


def plan_restore(bases: Sequence[BaseBackup], batches: Sequence[Batch], at: datetime | None) -> RestorePlan:
    """The base backup and WAL files that recover `at` (None: as late as possible)."""
    if not bases:
        raise OutsideWindow("the repository holds no base backup of this source; run `drtool backup POLICY` first")
    sysid = max(bases, key=lambda b: b.stop_time).sysid
    archive = Archive(batches, sysid)
    mine = [b for b in bases if sysid is None or b.sysid in (None, sysid)]
    ends = {b.snapshot_id: archive.end_time(b) or b.stop_time for b in mine}
    if at is None:
        best_end = max(ends.values())
        base = max((b for b in mine if ends[b.snapshot_id] == best_end), key=lambda b: b.stop_time)
        point = best_end
    else:
        fits = [b for b in mine if b.stop_time <= at <= ends[b.snapshot_id]]
        if not fits:
            windows = merge_windows((b.stop_time, ends[b.snapshot_id]) for b in mine)
            raise OutsideWindow(f"{at:%Y-%m-%d %H:%M:%S.%f} UTC is outside the recoverable window: "
                                f"{describe_windows(windows)}")
        base = max(fits, key=lambda b: b.stop_time)
        point = at
    return RestorePlan(base, at, point, wal_files(archive, base), _chain_end(archive, base), archive.segsize)


def _chain_end(archive: Archive, base: BaseBackup) -> Segment | None:
    reach = archive.reach(base.next_segno)
    nxt = archive.segment(reach + 1)
    if nxt in archive.partials:
        return nxt
    return archive.segment(reach) if reach >= base.next_segno else None


def wal_files(archive: Archive, base: BaseBackup) -> dict[str, FileRef]:
    """Every WAL file recovery from `base` may ask for, from its start segment to the chain's end."""
    segsize = archive.segsize
    files: dict[str, FileRef] = {}
    reach = archive.reach(base.next_segno)
    for segno in range(base.start_segno, reach + 1):
        seg = archive.segment(segno)
        batch = archive.complete.get(seg)
        if batch is not None:       # before the stop segment the base's own pg_wal copy also has it
            files[seg.name(segsize)] = FileRef(batch.snapshot_id, seg.name(segsize))
    nxt = archive.segment(reach + 1)
    if nxt in archive.partials:
        batch, size = archive.partials[nxt]
        files[nxt.name(segsize)] = FileRef(batch.snapshot_id, nxt.name(segsize) + PARTIAL_SUFFIX, size)
    for tli, batch in archive.histories.items():
        files[history_name(tli)] = FileRef(batch.snapshot_id, history_name(tli))
    return files

