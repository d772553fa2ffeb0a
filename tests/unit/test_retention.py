"""Retention math (pure): the same rules as restic forget --keep-*, over snapshot sets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from drtool.config.models import Retention
from drtool.retention import keep_indices

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def nightly(days: int) -> list[datetime]:
    return [NOW - timedelta(days=d, hours=10) for d in range(days)][::-1]   # oldest first


def test_no_rule_keeps_everything():
    times = nightly(10)
    assert keep_indices(times, Retention(), NOW) == set(range(10))


def test_daily_keeps_newest_per_day():
    times = nightly(10) + [NOW - timedelta(hours=1)]   # two backups today
    kept = keep_indices(times, Retention(daily=3), NOW)
    assert [times[i] for i in sorted(kept, key=lambda i: times[i])] == [times[-4], times[-3], times[-1]]


def test_last_and_monthly_combine():
    times = nightly(70)
    kept = keep_indices(times, Retention(last=2, monthly=3), NOW)
    months = {(times[i].year, times[i].month) for i in kept}
    assert len(months) == 3 and len(kept) == 4      # 2 newest (same month as a monthly pick) + 2 older months


def test_within_keeps_recent():
    times = nightly(10)
    kept = keep_indices(times, Retention(within=3 * 86400), NOW)
    assert kept == {i for i, t in enumerate(times) if NOW - t <= timedelta(days=3)}


def test_weekly_uses_iso_weeks():
    times = nightly(30)
    kept = keep_indices(times, Retention(weekly=2), NOW)
    assert len(kept) == 2
    weeks = {tuple(times[i].isocalendar()[:2]) for i in kept}
    assert len(weeks) == 2
