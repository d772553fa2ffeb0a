"""WAL names, batch tags and the chain rules (pure): windows, gaps, timelines, restore plans."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drtool.sources.wal_chain import (
    Archive,
    BaseBackup,
    OutsideWindow,
    analyse,
    merge_windows,
    plan_restore,
)
from drtool.sources.wal_names import (
    Batch,
    Segment,
    SegRange,
    batch_from_tags,
    batch_tags,
    format_lsn,
    parse_lsn,
    parse_segment,
    ranges,
)

SEG = 16 * 1024 * 1024
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_lsn_round_trip_and_segment_names():
    assert parse_lsn("0/3002758") == 0x3002758
    assert format_lsn(parse_lsn("1A/FF000028")) == "1A/FF000028"
    seg = parse_segment("000000010000000100000002")
    assert seg == Segment(1, 0x100 + 2)
    assert seg.name() == "000000010000000100000002"
    # 64 MiB segments: 0x40 per log id
    assert parse_segment("000000010000000100000002", 64 * 1024 * 1024).segno == 0x40 + 2
    with pytest.raises(ValueError):
        parse_segment("00000001000000010000000")


def test_ranges_split_at_holes_and_timelines():
    segs = [Segment(1, n) for n in (3, 4, 5, 7)] + [Segment(2, 7), Segment(2, 8)]
    assert ranges(segs) == [SegRange(1, 3, 5), SegRange(1, 7, 7), SegRange(2, 7, 8)]


def test_batch_tags_round_trip():
    tags = batch_tags(policy="siak", source="db", batch_id="b1", complete=[Segment(1, 3), Segment(1, 4)],
                      partial=(Segment(1, 5), 8192), histories=[2], upto=at(1), sysid="7312", segsize=SEG)
    assert "segs=000000010000000000000003-000000010000000000000004" in tags
    assert "partial=000000010000000000000005:8192" in tags
    assert not any(t.startswith(("source=", "run=")) for t in tags)   # never mistaken for a snapshot set
    batch = batch_from_tags("snap1", at(1), tags)
    assert batch is not None and batch.complete == [Segment(1, 3), Segment(1, 4)]
    assert batch.partial == (Segment(1, 5), 8192) and batch.histories == (2,) and batch.upto == at(1)
    assert batch.newest == Segment(1, 5)
    assert batch.files() == ["000000010000000000000003", "000000010000000000000004",
                             "000000010000000000000005.partial", "00000002.history"]
    assert batch_from_tags("x", at(1), ["drtool", "policy=siak", "source=db", "run=r1"]) is None
    assert batch_from_tags("x", at(1), ["wal=db", "batch=b", "segs=garbage"]) is None


def batch(sid: str, minute: float, complete=(), partial=None, sysid="42", tli=1) -> Batch:
    segs = tuple(ranges(Segment(tli, n) for n in complete))
    return Batch(sid, at(minute), sid, segs, (Segment(tli, partial[0]), partial[1]) if partial else None,
                 (), at(minute), sysid, SEG)


def base(sid: str, minute: float, start_seg: int, stop_seg: int, sysid="42") -> BaseBackup:
    return BaseBackup(f"run-{sid}", sid, start_seg * SEG + 40, stop_seg * SEG + 0x100, 1, at(minute - 1), at(minute),
                      sysid, SEG, 15)


def test_contiguous_chain_gives_one_window_to_the_newest_wal():
    bases = [base("b1", 0, 2, 2)]
    batches = [batch("w1", 1, partial=(2, 9000)), batch("w2", 2, complete=[2], partial=(3, 100)),
               batch("w3", 3, complete=[3, 4], partial=(5, 5000))]
    view = analyse(bases, batches)
    assert view.windows == [(at(0), at(3))] and view.recovery_point == at(3)
    assert view.gaps == [] and view.newest_segment == "000000010000000000000005"
    assert view.timelines == [(1, "000000010000000000000002")]


def test_a_missing_batch_is_a_gap_and_cuts_the_window():
    bases = [base("b1", 0, 2, 2)]
    batches = [batch("w2", 2, complete=[2], partial=(3, 100)),
               # w3 (segments 3 and 4) was lost
               batch("w4", 4, complete=[5], partial=(6, 10))]
    view = analyse(bases, batches)
    assert [(g.first, g.last) for g in view.gaps] == [(3, 4)]
    assert "000000010000000000000003..000000010000000000000004 is missing" in view.gaps[0].describe()
    assert view.recovery_point == at(2)             # the partial of 3 in w2 is still reachable
    with pytest.raises(OutsideWindow, match="outside the recoverable window"):
        plan_restore(bases, batches, at(3))


def test_a_newer_base_backup_after_the_gap_reopens_recovery_to_latest():
    bases = [base("b1", 0, 2, 2), base("b2", 5, 6, 6)]
    batches = [batch("w2", 2, complete=[2], partial=(3, 100)), batch("w4", 4, complete=[5], partial=(6, 10)),
               batch("w6", 6, complete=[6], partial=(7, 10))]
    view = analyse(bases, batches)
    assert view.windows == [(at(0), at(2)), (at(5), at(6))]
    assert [(g.first, g.last) for g in view.gaps] == [(3, 4)]     # still a breach: 02:02-02:05 is lost
    latest = plan_restore(bases, batches, None)
    assert latest.base.snapshot_id == "b2" and latest.recovery_point == at(6)
    assert set(latest.files) == {"000000010000000000000006", "000000010000000000000007"}
    assert latest.files["000000010000000000000007"].stored_as == "000000010000000000000007.partial"
    assert plan_restore(bases, batches, at(1.5)).base.snapshot_id == "b1"


def test_plan_picks_the_newest_base_before_the_target_and_refuses_before_the_first():
    bases = [base("b1", 0, 2, 2), base("b2", 10, 8, 8)]
    batches = [batch("w1", 5, complete=[2, 3, 4, 5, 6], partial=(7, 10)),
               batch("w2", 12, complete=[7, 8, 9], partial=(10, 10))]
    assert plan_restore(bases, batches, at(6)).base.snapshot_id == "b1"
    assert plan_restore(bases, batches, at(11)).base.snapshot_id == "b2"
    with pytest.raises(OutsideWindow):
        plan_restore(bases, batches, at(-5))
    with pytest.raises(OutsideWindow):
        plan_restore(bases, batches, at(13))


def test_longest_partial_copy_wins_and_complete_beats_partial():
    archive = Archive([batch("a", 1, partial=(3, 100)), batch("b", 2, partial=(3, 900)),
                       batch("c", 3, complete=[3])])
    assert archive.partials[Segment(1, 3)][0].snapshot_id == "b"
    assert archive.has(3)


def test_wal_of_another_cluster_is_ignored_and_counted():
    bases = [base("b1", 0, 2, 2, sysid="42")]
    batches = [batch("w1", 1, complete=[2], partial=(3, 10)), batch("x", 2, complete=[3, 4], sysid="99")]
    view = analyse(bases, batches)
    assert view.foreign_batches == 1 and view.recovery_point == at(1)


def test_timeline_switch_is_shown_and_followed():
    bases = [base("b1", 0, 2, 2)]
    batches = [batch("w1", 1, complete=[2, 3], partial=(4, 10)),
               Batch("w2", at(2), "w2", (SegRange(2, 4, 5),), (Segment(2, 6), 10), (2,), at(2), "42", SEG)]
    view = analyse(bases, batches)
    assert view.timelines == [(1, "000000010000000000000002"), (2, "000000020000000000000004")]
    assert view.gaps == [] and view.missing_history == [] and view.recovery_point == at(2)
    plan = plan_restore(bases, batches, None)
    assert "000000020000000000000005" in plan.files and "00000002.history" in plan.files


def test_merge_windows_joins_overlaps_only():
    assert merge_windows([(at(5), at(6)), (at(0), at(2)), (at(1), at(3))]) == [(at(0), at(3)), (at(5), at(6))]


def test_the_base_backup_holds_its_stop_segment_when_taken_from_a_primary():
    # The shipper started after the backup's segment switch: segment 2 never reached the archive.
    bases = [base("b1", 0, 2, 2)]
    batches = [batch("w1", 1, complete=[3], partial=(4, 100))]
    view = analyse(bases, batches)
    assert view.gaps == [] and view.recovery_point == at(1)
    standby = [BaseBackup("r", "b1", 2 * SEG, 2 * SEG + 100, 1, at(-1), at(0), "42", SEG, 15, from_primary=False)]
    assert [(g.first, g.last) for g in analyse(standby, batches).gaps] == [(2, 2)]


def name(segno: int, tli: int = 1) -> str:
    return Segment(tli, segno).name(SEG)


def test_lost_newest_batches_are_a_gap_only_through_what_this_host_shipped():
    bases = [base("b1", 0, 2, 2)]
    left = [batch("w2", 2, complete=[2], partial=(3, 100))]    # w3 (complete 3 and 4, partial 5) was lost
    assert analyse(bases, left).gaps == []                      # nothing after it: the repository alone cannot tell
    view = analyse(bases, left, shipped=("42", name(4)))
    assert [(g.first, g.last, g.shipped) for g in view.gaps] == [(3, 4, True)]
    assert "this host shipped it, the repository no longer holds it" in view.gaps[0].describe()
    assert view.recovery_point == at(2)


def test_a_lost_complete_copy_is_a_gap_even_when_an_older_partial_of_it_is_left():
    bases = [base("b1", 0, 2, 2)]
    left = [batch("w2", 2, complete=[2], partial=(3, 100))]    # w3 held 3 complete (partial 4), lost
    assert analyse(bases, left).gaps == []
    assert [(g.first, g.last) for g in analyse(bases, left, shipped=("42", name(3))).gaps] == [(3, 3)]


def test_what_this_host_shipped_counts_only_for_its_cluster_and_timeline():
    bases = [base("b1", 0, 2, 2)]
    chain = [batch("w2", 2, complete=[2], partial=(3, 100)), batch("w3", 3, complete=[3, 4], partial=(5, 10))]
    assert analyse(bases, chain, shipped=("42", name(4))).gaps == []          # all there
    assert analyse(bases, chain, shipped=("42", name(3))).gaps == []          # the state is older: no claim
    assert analyse(bases, chain[:1], shipped=("7", name(4))).gaps == []       # another cluster's spool state
    assert analyse(bases, chain[:1], shipped=("42", "garbage")).gaps == []
    # Recovered to timeline 2 from segment 3 on: until its first batch the state names timeline 1's 4.
    switched = chain[:1] + [Batch("t2", at(4), "t2", (SegRange(2, 3, 3),), (Segment(2, 4), 10), (2,), at(4), "42", SEG)]
    assert analyse(bases, switched, shipped=("42", name(4, tli=1))).gaps == []
