"""Object Lock rules (pure): what to lock until when, the lifecycle rule, the rollback plan."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drtool.storage.attempts import Attempt, AttackReport
from drtool.storage.lock_rules import (Known, LockSettings, ObjectInfo, Version, folder_of, lifecycle_rules,
                                       lock_prefixes, merge_lifecycle, missing_rules, needs_lock, plan_extension,
                                       plan_rollback)
from drtool.storage.s3_url import parse_s3_url

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
LOC = parse_s3_url("s3:http://127.0.0.1:9000/bucket/hosts/db1")


@pytest.mark.parametrize(("days", "renew"), [(1, 1), (5, 1), (7, 2), (30, 6), (365, 73)])
def test_renew_days_is_a_fifth_of_days_at_least_one(days: int, renew: int) -> None:
    s = LockSettings("COMPLIANCE", days)
    assert s.renew_days == renew
    assert s.target(NOW) - s.minimum(NOW) == timedelta(days=renew)
    assert s.noncurrent_days == days + renew + 1


def test_prefixes_cover_the_repository_and_its_records_but_not_locks() -> None:
    assert lock_prefixes(LOC) == ["hosts/db1/", "hosts/db1.drtool/"]
    assert lock_prefixes(parse_s3_url("s3:http://h/bucket")) == [""]
    assert not needs_lock(LOC, "hosts/db1/locks/abc")
    assert needs_lock(LOC, "hosts/db1/data/ab/abc") and needs_lock(LOC, "hosts/db1.drtool/runs/x.json")
    assert folder_of(LOC, "hosts/db1/data/ab/abc") == "data"
    assert folder_of(LOC, "hosts/db1/config") == "config"
    assert folder_of(LOC, "hosts/db1.drtool/runs/x.json") == "drtool records"


def _obj(key: str, etag: str = "e1") -> ObjectInfo:
    return ObjectInfo(key, etag, 10, NOW - timedelta(hours=1))


def test_plan_extension_locks_new_changed_expiring_and_wrong_mode_objects_only() -> None:
    s = LockSettings("COMPLIANCE", 10)
    fresh, new, changed, expiring, governance = (_obj(k) for k in ("fresh", "new", "changed", "expiring", "gov"))
    changed_now = _obj("changed", "e2")      # overwritten since drtool locked it
    known = {"fresh": Known(fresh.stamp, NOW + timedelta(days=11), "COMPLIANCE"),
             "changed": Known(changed.stamp, NOW + timedelta(days=11), "COMPLIANCE"),
             "expiring": Known(expiring.stamp, NOW + timedelta(days=9), "COMPLIANCE"),
             "gov": Known(governance.stamp, NOW + timedelta(days=11), "GOVERNANCE")}
    due, fine = plan_extension([fresh, new, changed_now, expiring, governance], known, s, NOW)
    assert [o.key for o in due] == ["new", "changed", "expiring", "gov"]
    assert [o.key for o in fine] == ["fresh"]


def test_lifecycle_rules_expire_noncurrent_versions_after_the_lock_and_keep_other_rules() -> None:
    s = LockSettings("GOVERNANCE", 30)
    wanted = lifecycle_rules(LOC, s)
    assert [r["Filter"]["Prefix"] for r in wanted] == ["hosts/db1/", "hosts/db1.drtool/"]
    assert all(r["NoncurrentVersionExpiration"]["NoncurrentDays"] == 37 for r in wanted)
    other = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 7}}
    assert missing_rules([other], wanted) == wanted
    merged = merge_lifecycle([other, {**wanted[0], "NoncurrentVersionExpiration": {"NoncurrentDays": 3}}], wanted)
    assert merged[0] == other and merged[1:] == wanted
    assert missing_rules(merged, wanted) == []
    too_short = [{**wanted[0], "NoncurrentVersionExpiration": {"NoncurrentDays": 5}}, wanted[1]]
    assert missing_rules(too_short, wanted) == [wanted[0]]


def _v(key: str, vid: str, minutes: int, *, latest: bool = False, marker: bool = False, etag: str = "") -> Version:
    return Version(key, vid, NOW + timedelta(minutes=minutes), latest, marker, 0, etag or f"etag-{vid}")


def test_plan_rollback_per_key() -> None:
    to = NOW
    entries = [
        _v("r/data/ok", "a1", -10, latest=True),                                   # untouched
        _v("r/data/del", "b1", -10), _v("r/data/del", "b2", 5, latest=True, marker=True),  # deleted after
        _v("r/data/over", "c1", -10), _v("r/data/over", "c2", 5, latest=True),    # overwritten after
        _v("r/data/both", "d1", -10), _v("r/data/both", "d2", 3), _v("r/data/both", "d3", 5, latest=True, marker=True),
        _v("r/data/new", "e1", 5, latest=True),                                     # did not exist then
        _v("r/locks/gone", "f1", -20), _v("r/locks/gone", "f2", -19, latest=True, marker=True),   # gone already
        _v("r.drtool/runs/x.json", "g1", 5, latest=True),                           # a record written since
        _v("r/data/copied", "h1", -10, etag="same"), _v("r/data/copied", "h2", 5, etag="X"),
        _v("r/data/copied", "h3", 6, latest=True, etag="same"),                     # an earlier rollback copied it back
    ]
    steps = {s.key: s for s in plan_rollback(entries, to, never_hide=("r.drtool/",))}
    assert set(steps) == {"r/data/del", "r/data/over", "r/data/both", "r/data/new"}
    assert (steps["r/data/del"].action, steps["r/data/del"].version_id, steps["r/data/del"].markers) == \
        ("remove-markers", "b1", ["b2"])
    assert (steps["r/data/over"].action, steps["r/data/over"].version_id) == ("restore-version", "c1")
    assert (steps["r/data/both"].action, steps["r/data/both"].version_id) == ("restore-version", "d1")
    assert steps["r/data/new"].action == "hide"


def test_plan_rollback_same_second_marker_is_later_than_its_version() -> None:
    same = NOW - timedelta(minutes=1)
    entries = [Version("r/locks/l", "v", same, False, False), Version("r/locks/l", "m", same, True, True)]
    assert plan_rollback(entries, NOW) == []       # written and removed within a second, before `to`


def test_attack_report_passes_only_when_every_attempt_held() -> None:
    held = [Attempt("a", "X", "refused"), Attempt("b", "Y", "intact")]
    assert AttackReport("s", "t", held).passed
    report = AttackReport("s", "t", [*held, Attempt("c", "Z", "got-through")])
    assert not report.passed and [a.name for a in report.through] == ["c"]
    assert report.summary() == "3 attempts on t: 1 refused, 1 intact, 1 got through"
    assert not AttackReport("s", "t", []).passed
    assert not AttackReport("s", "t", [Attempt("d", "W", "unknown")]).passed
