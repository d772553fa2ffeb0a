"""Pure parts of status and its output: problem codes, check overdue, Nagios, plain tables, pages."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from drtool.actions.status import is_check_overdue, nagios_state, problems
from drtool.cli.render import plain_table
from drtool.report.html import timeline
from drtool.report.pages import backup_calendar

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
GOOD_DRILL = {"passed": True, "rto_met": True}


def test_problems_in_order_and_every_breach_kind():
    assert problems(backup_age_s=10, rpo_s=3600, repo_error=False, drill=GOOD_DRILL) == []
    assert problems(backup_age_s=7200, rpo_s=3600, repo_error=False, drill=None) == ["rpo-breach", "never-drilled"]
    assert problems(backup_age_s=10, rpo_s=None, repo_error=True, drill=GOOD_DRILL) == ["rpo-breach"]
    assert problems(backup_age_s=10, rpo_s=3600, repo_error=False, drill={"passed": False, "rto_met": False}) == \
        ["rto-breach"]
    assert problems(backup_age_s=10, rpo_s=3600, repo_error=False, drill={"passed": False, "rto_met": True}) == \
        ["drill-failed"]
    runs = {"backup": {"status": "failed"}, "check": {"status": "failed"}, "forget": {"status": "failed"}}
    assert problems(backup_age_s=10, rpo_s=3600, repo_error=False, drill=GOOD_DRILL, last_runs=runs,
                    check_overdue=True) == ["backup-failed", "check-failed", "check-overdue", "forget-failed"]
    ok_runs = {"backup": {"status": "success"}, "check": None}
    assert problems(backup_age_s=10, rpo_s=3600, repo_error=False, drill=GOOD_DRILL, last_runs=ok_runs) == []


def test_check_overdue_after_two_missed_slots_only():
    weekly = "weekly sun 03:00"                       # 2026-11-29 was a Sunday
    last_sunday = datetime(2026, 11, 29, 3, 1, tzinfo=timezone.utc)
    assert not is_check_overdue(weekly, last_sunday, None, NOW, UTC)
    week_before = last_sunday - timedelta(days=7)
    assert not is_check_overdue(weekly, week_before, None, NOW, UTC)          # one missed slot: late, not overdue
    assert is_check_overdue(weekly, week_before - timedelta(days=1), None, NOW, UTC)
    assert is_check_overdue(weekly, None, NOW - timedelta(days=30), NOW, UTC)  # never checked, history is old
    assert not is_check_overdue(weekly, None, NOW - timedelta(days=2), NOW, UTC)
    assert not is_check_overdue(None, None, NOW - timedelta(days=300), NOW, UTC)


def test_nagios_state():
    assert nagios_state([{"problems": [], "warnings": []}]) == 0
    assert nagios_state([{"problems": [], "warnings": [{"code": "forecast-breach"}]}]) == 1
    assert nagios_state([{"problems": ["never-drilled"], "warnings": []}]) == 1
    assert nagios_state([{"problems": ["never-drilled"], "warnings": []}, {"problems": ["rpo-breach"]}]) == 2


def test_plain_table_never_truncates():
    long = "x" * 300
    text = plain_table(["a", "bb"], [["1", long], ["22", "y"]], right=frozenset({0}))
    lines = text.splitlines()
    assert lines[0] == " a  bb" and lines[1] == f" 1  {long}" and lines[2] == "22  y"


def test_backup_calendar_marks_each_day():
    runs = [{"kind": "backup", "status": "success", "started_at": "2026-11-30T02:00:00+00:00"},
            {"kind": "backup", "status": "failed", "started_at": "2026-11-29T02:00:00+00:00"},
            {"kind": "backup", "status": "failed", "started_at": "2026-11-28T02:00:00+00:00"},
            {"kind": "backup", "status": "success", "started_at": "2026-11-28T03:00:00+00:00"},
            {"kind": "check", "status": "failed", "started_at": "2026-11-27T02:00:00+00:00"}]
    grid = backup_calendar(runs, date(2026, 12, 1), weeks=2)
    cells = {c.day: c for week in grid for c in week}
    assert len(grid) == 2 and all(len(w) == 7 for w in grid) and grid[0][0].day.weekday() == 0
    assert cells[date(2026, 11, 30)].state == "ok" and cells[date(2026, 11, 29)].state == "failed"
    assert cells[date(2026, 11, 28)].state == "mixed" and cells[date(2026, 11, 27)].state == "none"
    assert cells[date(2026, 12, 2)].state == "future"
    assert cells[date(2026, 11, 28)].label == "2026-11-28: 1 ok, 1 failed"


def test_timeline_places_steps_and_phases():
    report = {"steps": [
        {"name": "restore", "kind": "restore", "status": "passed", "started_at": "2026-12-01T00:00:00+00:00",
         "duration_s": 8.0, "phases": [{"name": "download", "duration_s": 6.0, "bytes": 10},
                                       {"name": "load", "duration_s": 2.0, "bytes": 10}]},
        {"name": "check", "kind": "sql", "status": "failed", "started_at": "2026-12-01T00:00:08+00:00",
         "duration_s": 2.0},
        {"name": "never", "kind": "verify", "status": "skipped", "started_at": None, "duration_s": 0}]}
    data = timeline(report)
    rows = {r["name"]: r for r in data["rows"]}
    assert data["span_s"] == 10.0
    assert rows["restore"]["left"] == 0 and rows["restore"]["width"] == 80
    assert rows["load"]["phase"] and rows["load"]["left"] == 60 and rows["load"]["width"] == 20
    assert rows["check"]["left"] == 80 and rows["check"]["width"] == 20
    assert rows["never"]["duration_s"] is None


def test_a_failed_or_unverified_copy_is_a_problem() -> None:
    from drtool.actions.status import problems
    ok = {"rpo_s": None, "repo_error": False, "backup_age_s": 10.0, "drill": {"passed": True, "rto_met": True}}
    assert problems(**ok, copies={"b": {"status": "success", "verified": True}}) == []
    assert problems(**ok, copies={"b": {"status": "failed", "verified": False}}) == ["copy-failed"]
    assert problems(**ok, copies={"b": {"status": "success", "verified": False}}) == ["copy-failed"]
    assert problems(**ok, copies={"b": None}) == []        # never copied yet: 3-2-1-1-0 says so, not a failure
