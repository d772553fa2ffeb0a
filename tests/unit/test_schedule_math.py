"""Schedule math with injected clocks: DST, missed nights, intervals, cron, jitter. No sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from drtool.schedule_math import (
    Job,
    due_jobs,
    jitter_offset,
    next_run,
    parse_schedule,
    to_cron_fields,
    to_oncalendar,
)

BERLIN = ZoneInfo("Europe/Berlin")
JAKARTA = ZoneInfo("Asia/Jakarta")     # Palembang's zone: no DST
UTC = ZoneInfo("UTC")


def at(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold)


@pytest.mark.parametrize("expr, cron, interval, jitter", [
    ("daily 02:00", "0 2 * * *", None, 0.0),
    ("daily 2:05", "5 2 * * *", None, 0.0),
    ("weekly sun 03:00", "0 3 * * 0", None, 0.0),
    ("weekly Monday 23:59", "59 23 * * 1", None, 0.0),
    ("hourly", "0 * * * *", None, 0.0),
    ("every 6h", None, 6 * 3600.0, 0.0),
    ("every 30m", None, 1800.0, 0.0),
    ("every 10s", None, 10.0, 0.0),
    ("every 1h30m", None, 5400.0, 0.0),
    ("30 2 * * *", "30 2 * * *", None, 0.0),
    ("*/15 * * * 1-5", "*/15 * * * 1-5", None, 0.0),
    ("daily 02:00 jitter 10m", "0 2 * * *", None, 600.0),
])
def test_parse_schedule_understands_each_documented_form(expr: str, cron: str | None, interval: float | None,
                                                         jitter: float) -> None:
    schedule = parse_schedule(expr)
    assert (schedule.expr, schedule.cron, schedule.interval, schedule.jitter) == (expr, cron, interval, jitter)


@pytest.mark.parametrize("expr, after, expected", [
    ("daily 02:00", "2026-12-01T02:00:00+07:00", "2026-12-02T02:00:00+07:00"),
    ("weekly sun 03:00", "2026-12-01T00:00:00+07:00", "2026-12-06T03:00:00+07:00"),   # a Tuesday
    ("hourly", "2026-12-01T10:59:59+07:00", "2026-12-01T11:00:00+07:00"),
    ("every 6h", "2026-12-01T00:00:00+00:00", "2026-12-01T06:00:00+00:00"),         # epoch-anchored
    ("*/15 * * * 1-5", "2026-12-05T23:50:00+07:00", "2026-12-07T00:00:00+07:00"),    # Saturday -> Monday
])
def test_each_form_fires_when_the_documentation_says(expr: str, after: str, expected: str) -> None:
    tz = ZoneInfo("Asia/Jakarta")
    got = parse_schedule(expr).next_after(datetime.fromisoformat(after), tz)
    assert got == datetime.fromisoformat(expected)


@pytest.mark.parametrize("expr, fragment", [
    ("", "empty schedule"),
    ("nightly", "unknown schedule"),
    ("daily 25:00", "bad time"),
    ("daily", "daily HH:MM"),
    ("weekly funday 03:00", "bad day"),
    ("every 0s", "at least 1s"),
    ("every soon", "bad interval"),
    ("61 * * * *", "bad cron expression"),
    ("0 0 30 2 *", "never matches"),
    ("every 1h jitter 2h", "shorter than"),
    ("daily 02:00 jitter abc", "bad jitter"),
])
def test_parse_schedule_rejects_with_clear_message(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_schedule(expr)


def test_daily_next_after_is_strictly_after_and_in_tz() -> None:
    s = parse_schedule("daily 02:00")
    assert s.next_after(at(JAKARTA, 2024, 5, 1, 1, 59), JAKARTA) == at(JAKARTA, 2024, 5, 1, 2, 0)
    assert s.next_after(at(JAKARTA, 2024, 5, 1, 2, 0), JAKARTA) == at(JAKARTA, 2024, 5, 2, 2, 0)
    # The same instant given in UTC: the answer is still 02:00 Jakarta time.
    utc_dt = at(JAKARTA, 2024, 5, 1, 1, 0).astimezone(timezone.utc)
    assert s.next_after(utc_dt, JAKARTA) == at(JAKARTA, 2024, 5, 1, 2, 0)


def test_weekly_next_after_lands_on_the_named_day() -> None:
    s = parse_schedule("weekly sun 03:00")
    nxt = s.next_after(at(UTC, 2024, 5, 1, 12, 0), UTC)   # a Wednesday
    assert nxt == at(UTC, 2024, 5, 5, 3, 0) and nxt.weekday() == 6


def test_spring_forward_gap_runs_once_right_after_the_gap() -> None:
    s = parse_schedule("daily 02:30")               # 2024-03-31 02:00->03:00 in Berlin
    nxt = s.next_after(at(BERLIN, 2024, 3, 30, 12, 0), BERLIN)
    assert nxt.utcoffset() == timedelta(hours=2) and (nxt.hour, nxt.minute) == (3, 30)
    assert s.next_after(nxt, BERLIN) == at(BERLIN, 2024, 4, 1, 2, 30)
    # At 03:10 local the gap slot has not happened yet (it is at 03:30).
    assert s.previous_slot(at(BERLIN, 2024, 3, 31, 3, 10), BERLIN) == at(BERLIN, 2024, 3, 30, 2, 30)


def test_fall_back_repeated_hour_runs_once() -> None:
    s = parse_schedule("daily 02:30")               # 2024-10-27 03:00->02:00 in Berlin
    first = s.next_after(at(BERLIN, 2024, 10, 26, 12, 0), BERLIN)
    assert first.utcoffset() == timedelta(hours=2)   # first pass (CEST)
    second_pass = at(BERLIN, 2024, 10, 27, 2, 45, fold=1)
    assert s.next_after(first, BERLIN) == at(BERLIN, 2024, 10, 28, 2, 30)
    assert s.next_after(at(BERLIN, 2024, 10, 27, 2, 15, fold=1), BERLIN) == at(BERLIN, 2024, 10, 28, 2, 30)
    assert s.previous_slot(second_pass, BERLIN).timestamp() == first.timestamp()


def test_interval_slots_are_epoch_anchored_and_ignore_dst() -> None:
    s = parse_schedule("every 6h")
    before = at(BERLIN, 2024, 3, 31, 0, 30)          # 23:30 UTC
    slots = [s.next_after(before, BERLIN)]
    for _ in range(3):
        slots.append(s.next_after(slots[-1], BERLIN))
    assert [x.astimezone(timezone.utc).hour for x in slots] == [0, 6, 12, 18]
    assert all(b.timestamp() - a.timestamp() == 6 * 3600 for a, b in zip(slots, slots[1:]))
    assert parse_schedule("every 10s").previous_slot(at(UTC, 2024, 1, 1, 0, 0, 25), UTC) == at(UTC, 2024, 1, 1, 0, 0, 20)


def test_cron_expression_next_and_previous() -> None:
    s = parse_schedule("*/15 2 * * 1-5")
    monday = at(UTC, 2024, 5, 6, 2, 20)
    assert s.next_after(monday, UTC) == at(UTC, 2024, 5, 6, 2, 30)
    assert s.previous_slot(monday, UTC) == at(UTC, 2024, 5, 6, 2, 15)
    assert s.previous_slot(at(UTC, 2024, 5, 6, 2, 15), UTC) == at(UTC, 2024, 5, 6, 2, 15)  # inclusive
    assert s.next_after(at(UTC, 2024, 5, 10, 3, 0), UTC) == at(UTC, 2024, 5, 13, 2, 0)  # Fri -> Mon


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("hourly").next_after(datetime(2024, 1, 1), UTC)


def job(job_id: str, expr: str) -> Job:
    return Job(job_id, parse_schedule(expr))


def test_missed_nights_catch_up_runs_once() -> None:
    backup = job("backup:siak", "daily 02:00")
    last = at(JAKARTA, 2024, 5, 1, 2, 0, 5)          # ran on the 1st, machine down until the 4th
    now = at(JAKARTA, 2024, 5, 4, 9, 0)
    due = due_jobs([backup], {backup.id: last}, now, JAKARTA)
    assert [(d.job.id, d.slot) for d in due] == [("backup:siak", at(JAKARTA, 2024, 5, 4, 2, 0))]
    # After it ran (once), nothing is due until tomorrow 02:00.
    assert due_jobs([backup], {backup.id: now}, now + timedelta(hours=1), JAKARTA) == []
    assert due_jobs([backup], {backup.id: now}, at(JAKARTA, 2024, 5, 5, 2, 0), JAKARTA)


def test_job_without_reference_waits_for_its_slot() -> None:
    assert due_jobs([job("backup:a", "every 10s")], {}, at(UTC, 2024, 1, 1), UTC) == []


def test_due_jobs_order_oldest_slot_then_backup_first() -> None:
    jobs = [job("drill:x", "daily 01:00"), job("check:a", "daily 01:00"), job("backup:a", "daily 01:00"),
            job("forget:a", "daily 00:30")]
    last = {j.id: at(UTC, 2024, 1, 1) for j in jobs}
    due = due_jobs(jobs, last, at(UTC, 2024, 1, 1, 3, 0), UTC)
    assert [d.job.id for d in due] == ["forget:a", "backup:a", "check:a", "drill:x"]


def test_jitter_is_deterministic_bounded_and_per_job() -> None:
    offsets = {jitter_offset(f"backup:p{i}", 600) for i in range(50)}
    assert all(0 <= o < 600 for o in offsets) and len(offsets) == 50
    assert jitter_offset("backup:p1", 600) == jitter_offset("backup:p1", 600)
    assert jitter_offset("backup:p1", 0) == 0


def test_jitter_delays_due_and_next_run() -> None:
    j = job("backup:siak", "daily 02:00 jitter 30m")
    delay = timedelta(seconds=jitter_offset(j.id, 1800))
    slot = at(UTC, 2024, 5, 2, 2, 0)
    last = {j.id: at(UTC, 2024, 5, 1, 2, 10)}
    assert next_run(j, at(UTC, 2024, 5, 1, 12, 0), UTC) == slot + delay
    assert due_jobs([j], last, slot + delay - timedelta(seconds=1), UTC) == []
    assert [d.slot for d in due_jobs([j], last, slot + delay, UTC)] == [slot]


@pytest.mark.parametrize("expr, tz, expected", [
    ("daily 02:00", None, "*-*-* 02:00:00"),
    ("weekly sun 03:00", "Asia/Jakarta", "Sun *-*-* 03:00:00 Asia/Jakarta"),
    ("hourly", None, "*-*-* *:00:00"),
    ("every 6h", "Europe/Berlin", "*-*-* 00/6:00:00 UTC"),
    ("every 15m", None, "*-*-* *:00/15:00 UTC"),
    ("every 10s", None, "*-*-* *:*:00/10 UTC"),
    ("*/20 2 1 * *", None, "*-*-01 02:00,20,40:00"),
])
def test_to_oncalendar(expr: str, tz: str | None, expected: str) -> None:
    assert to_oncalendar(parse_schedule(expr), tz) == expected


@pytest.mark.parametrize("expr", ["every 7h", "0 2 1 * 1"])
def test_to_oncalendar_refuses_what_systemd_cannot_mean(expr: str) -> None:
    with pytest.raises(ValueError, match="systemd|cannot"):
        to_oncalendar(parse_schedule(expr), None)


def test_to_cron_fields() -> None:
    assert to_cron_fields(parse_schedule("daily 02:30")) == "30 2 * * *"
    assert to_cron_fields(parse_schedule("every 6h")) == "0 */6 * * *"
    assert to_cron_fields(parse_schedule("every 30m")) == "*/30 * * * *"
    with pytest.raises(ValueError, match="crontab"):
        to_cron_fields(parse_schedule("every 10s"))


# ---------------------------------------------------------------- memoised slots (scheduler scale)

@pytest.mark.parametrize("expr", ["daily 02:30", "30 2,3 * * *", "*/20 1-3 * * *", "15 3 * * *", "0 0 1 * *",
                                  "hourly"])
@pytest.mark.parametrize("start", [at(BERLIN, 2024, 3, 30, 20, 0), at(BERLIN, 2024, 10, 26, 20, 0)])
def test_memoised_previous_slot_matches_a_fresh_computation_across_dst(expr: str, start: datetime) -> None:
    memo = parse_schedule(expr)
    fresh = memo._cron_previous_slot                 # the walk itself, no memo
    t = start
    while t < start + timedelta(hours=12):
        slot, until = memo.previous_window(t, BERLIN)
        assert slot == fresh(t, BERLIN) and slot.timestamp() <= t.timestamp() and until >= t.timestamp()
        # the promise: the same answer for every instant before `until`
        for probe in (t + timedelta(seconds=1), datetime.fromtimestamp(until - 1, timezone.utc)):
            if t.timestamp() < probe.timestamp() < until:
                assert fresh(probe, BERLIN) == slot
        t += timedelta(minutes=7, seconds=13)


def test_due_window_says_until_when_the_answer_holds() -> None:
    from drtool.schedule_math import due_window

    j = job("backup:db", "daily 02:00 jitter 30m")
    last = at(UTC, 2024, 1, 1, 12, 0)
    slot, until = due_window(j, last, at(UTC, 2024, 1, 1, 13, 0), UTC)
    assert slot is None and until == pytest.approx(next_run(j, at(UTC, 2024, 1, 1, 13, 0), UTC).timestamp(), abs=1e-5)
    assert due_jobs([j], {j.id: last}, datetime.fromtimestamp(until - 0.001, UTC), UTC) == []
    assert due_jobs([j], {j.id: last}, datetime.fromtimestamp(until + 0.001, UTC), UTC) != []


def test_parse_schedule_is_memoised_and_jitterless_cron_skips_the_gap_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    import drtool.schedule_math as sm

    assert parse_schedule("17 4 * * 2") is parse_schedule("17 4 * * 2")
    walked: list[str] = []
    real = sm._min_cron_gap.__wrapped__
    monkeypatch.setattr(sm, "_min_cron_gap", lambda cron: walked.append(cron) or real(cron))
    sm._parse_schedule.cache_clear()
    parse_schedule("18 4 * * 2")
    assert walked == []
    parse_schedule("18 4 * * 2 jitter 10m")
    assert walked == ["18 4 * * 2"]
    with pytest.raises(ValueError, match="shorter than"):
        parse_schedule("*/5 * * * * jitter 10m")
