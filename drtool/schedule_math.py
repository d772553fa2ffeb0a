"""Schedule math: when is a job due? Pure logic, no I/O, the clock is always passed in.

Accepted schedules (optionally followed by `jitter DURATION`):

    daily 02:00          every day at 02:00 wall-clock time in the configured timezone
    weekly sun 03:00     once a week
    hourly               at minute 0 of every hour
    every 6h / 30m / 10s elapsed-time intervals, anchored at the Unix epoch (UTC),
                         so `every 6h` fires at 00, 06, 12, 18 UTC whatever the DST
    M H DOM MON DOW      a 5-field cron expression (croniter), wall-clock time

Instants are compared by timestamp, never with `<` on aware datetimes: Python
compares two datetimes sharing a tzinfo by wall time, which is wrong in a
repeated (fall-back) hour.

Calendar schedules (daily, weekly, hourly, cron) are all evaluated as cron
expressions on the local wall clock, then mapped to instants with fold=0:
- a wall time skipped by a spring-forward change runs right after the gap
  (02:30 in a 02:00->03:00 gap becomes 03:30 local), like cron and systemd;
- a wall time repeated by a fall-back change runs once, on its first pass.

Catch-up: a job is due when the latest slot is not later than `now` and the
job's last run started before that slot. However many slots were missed, the
job is due once: the reference moves past all of them when it runs.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from drtool.config.durations import format_duration, parse_duration

DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FULL_DAYS = {name: n for n, name in enumerate(
    ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"])}
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# Safety bound when walking cron slots; DST can skip or repeat a few, never hundreds.
_MAX_STEPS = 1000
# The order jobs start in when several are due for the same slot.
KIND_ORDER = {"backup": 0, "forget": 1, "check": 2, "drill": 3, "lock-extend": 4}

EXAMPLES = "daily 02:00, weekly sun 03:00, hourly, every 6h, or a cron expression like '30 2 * * *'"


@dataclass(frozen=True)
class Schedule:
    expr: str                     # as the admin wrote it
    cron: str | None = None       # calendar schedules, as a 5-field cron on the wall clock
    interval: float | None = None  # elapsed-time schedules, seconds
    jitter: float = 0.0           # upper bound of the per-job delay, seconds
    # Memo of previous_slot answers (tz -> [(from_ts, until_ts, slot)]): not part of the value.
    _windows: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def next_after(self, dt: datetime, tz: ZoneInfo) -> datetime:
        """The first slot strictly after `dt` (aware), expressed in `tz`."""
        _require_aware(dt)
        if self.interval is not None:
            k = math.floor(dt.timestamp() / self.interval) + 1
            return _from_ts(k * self.interval, tz)
        return self._cron_next_after(dt, tz)

    def _cron_next_after(self, dt: datetime, tz: ZoneInfo) -> datetime:
        from croniter import croniter

        wall = dt.astimezone(tz).replace(tzinfo=None)
        it = croniter(self.cron, wall)
        for _ in range(_MAX_STEPS):
            slot = _instant(it.get_next(datetime), tz)
            if slot.timestamp() > dt.timestamp():     # in a repeated hour, earlier wall times map to the first pass
                return slot
        raise ValueError(f"schedule {self.expr!r} has no slot after {dt.isoformat()}")

    def previous_slot(self, dt: datetime, tz: ZoneInfo) -> datetime:
        """The latest slot at or before `dt` (aware), expressed in `tz`."""
        return self.previous_window(dt, tz)[0]

    def previous_window(self, dt: datetime, tz: ZoneInfo) -> tuple[datetime, float]:
        """(previous_slot(dt), until): previous_slot(t) is the same slot for every t in [dt, until)."""
        _require_aware(dt)
        ts = dt.timestamp()
        if self.interval is not None:
            k = math.floor(ts / self.interval)
            return _from_ts(k * self.interval, tz), (k + 1) * self.interval
        windows = self._windows.get(tz, ())
        for lo, hi, slot in windows:
            if lo <= ts < hi:
                return slot, hi
        slot = self._cron_previous_slot(dt, tz)
        hi = self._stable_until(dt, tz)
        if hi > ts:
            # a few windows: jobs sharing this schedule have different jitter delays
            self._windows[tz] = [*windows[-(_MAX_WINDOWS - 1):], (ts, hi, slot)]
        return slot, hi

    def _stable_until(self, dt: datetime, tz: ZoneInfo) -> float:
        # The latest slot only changes at the next slot, as long as the UTC offset is constant:
        # near a DST change (gap slots mapped after the gap, a repeated hour) nothing is promised.
        ts = dt.timestamp()
        offset = _offset(ts, tz)
        if _offset(ts - _DST_MARGIN, tz) != offset:
            return ts                                     # just after a change: no promise, recompute
        nxt = self._cron_next_after(dt, tz).timestamp()
        probe = ts
        while probe < nxt:
            probe = min(probe + _DST_PROBE, nxt)
            if _offset(probe, tz) != offset:
                return _first_change(ts, probe, offset, tz)
        return nxt

    def _cron_previous_slot(self, dt: datetime, tz: ZoneInfo) -> datetime:
        from croniter import croniter

        wall = dt.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
        it = croniter(self.cron, wall)   # get_prev is strictly before its start: +1 min includes dt's minute
        for _ in range(_MAX_STEPS):
            slot = _instant(it.get_prev(datetime), tz)
            if slot.timestamp() <= dt.timestamp():    # a wall time in a DST gap maps to after the gap: maybe not yet
                return slot
        raise ValueError(f"schedule {self.expr!r} has no slot before {dt.isoformat()}")


_MAX_WINDOWS = 8
_DST_MARGIN = 3 * 3600 + 120      # longer than any DST jump: a gap slot is served at most this late
_DST_PROBE = 86400.0              # offset changes are days apart


def _offset(ts: float, tz: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(ts, tz).utcoffset()


def _first_change(lo: float, hi: float, offset: timedelta | None, tz: ZoneInfo) -> float:
    """A timestamp at or before the first offset change in (lo, hi] (offset at lo is `offset`)."""
    while hi - lo > 1:
        mid = (lo + hi) / 2
        if _offset(mid, tz) == offset:
            lo = mid
        else:
            hi = mid
    return lo


def _require_aware(dt: datetime) -> None:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"schedule math needs an aware datetime, got naive {dt.isoformat()}")


def _from_ts(ts: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc).astimezone(tz)


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """Wall-clock time -> instant; fold=0 puts gap times after the gap, repeated times on the first pass."""
    local = wall.replace(tzinfo=tz, fold=0)
    return local.astimezone(timezone.utc).astimezone(tz)


# ---------------------------------------------------------------- parsing

def parse_schedule(expr: str) -> Schedule:
    """Parse a schedule expression; ValueError says what is accepted.

    Memoised by the expression string (a Schedule is immutable): config validation, job building
    and every reload share one parse, and jobs with the same schedule share its slot memo."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"empty schedule; expected {EXAMPLES}")
    return _parse_schedule(expr)


@functools.lru_cache(maxsize=4096)
def _parse_schedule(expr: str) -> Schedule:
    text = " ".join(expr.split())
    body, jitter = _split_jitter(text)
    words = body.lower().split(" ")
    if words[0] == "daily":
        return Schedule(expr, cron=_daily(words, expr), jitter=_bounded(jitter, 86400, expr))
    if words[0] == "weekly":
        return Schedule(expr, cron=_weekly(words, expr), jitter=_bounded(jitter, 7 * 86400, expr))
    if words == ["hourly"]:
        return Schedule(expr, cron="0 * * * *", jitter=_bounded(jitter, 3600, expr))
    if words[0] == "every":
        interval = _interval(words, expr)
        return Schedule(expr, interval=interval, jitter=_bounded(jitter, interval, expr))
    if len(words) == 5:
        cron = _cron(body, expr)
        return Schedule(expr, cron=cron, jitter=_bounded(jitter, _min_cron_gap(cron), expr) if jitter else 0.0)
    raise ValueError(f"unknown schedule {expr!r}; expected {EXAMPLES}")


def _split_jitter(text: str) -> tuple[str, float]:
    body, sep, rest = text.partition(" jitter ")
    if not sep:
        return text, 0.0
    try:
        return body, parse_duration(rest)
    except ValueError:
        raise ValueError(f"bad jitter in {text!r}: expected e.g. 'daily 02:00 jitter 10m'") from None


def _bounded(jitter: float, period: float, expr: str) -> float:
    # A jitter as long as the period would push a run into the next slot.
    if jitter >= period:
        raise ValueError(f"jitter in {expr!r} must be shorter than the schedule's period ({format_duration(period)})")
    return jitter


def _hhmm(word: str, expr: str) -> tuple[int, int]:
    match = _TIME.match(word)
    if not match:
        raise ValueError(f"bad time {word!r} in {expr!r}: expected HH:MM (24-hour), e.g. 02:00")
    return int(match.group(1)), int(match.group(2))


def _daily(words: list[str], expr: str) -> str:
    if len(words) != 2:
        raise ValueError(f"bad schedule {expr!r}: expected 'daily HH:MM', e.g. daily 02:00")
    hour, minute = _hhmm(words[1], expr)
    return f"{minute} {hour} * * *"


def _weekly(words: list[str], expr: str) -> str:
    if len(words) != 3:
        raise ValueError(f"bad schedule {expr!r}: expected 'weekly DAY HH:MM', e.g. weekly sun 03:00")
    day = _FULL_DAYS.get(words[1], DAYS.get(words[1]))
    if day is None:
        raise ValueError(f"bad day {words[1]!r} in {expr!r}: expected one of {', '.join(DAYS)}")
    hour, minute = _hhmm(words[2], expr)
    return f"{minute} {hour} * * {day}"


def _interval(words: list[str], expr: str) -> float:
    if len(words) != 2:
        raise ValueError(f"bad schedule {expr!r}: expected 'every DURATION', e.g. every 6h, every 30m")
    try:
        seconds = parse_duration(words[1])
    except ValueError:
        raise ValueError(f"bad interval {words[1]!r} in {expr!r}: expected e.g. 6h, 30m, 10s") from None
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"interval in {expr!r} must be a whole number of seconds, at least 1s")
    return float(seconds)


def _cron(body: str, expr: str) -> str:
    from croniter import CroniterError, croniter

    if not croniter.is_valid(body):
        raise ValueError(f"bad cron expression {expr!r}: expected 'MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK', "
                         "e.g. '30 2 * * *'")
    try:
        croniter(body, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError:
        raise ValueError(f"cron expression {expr!r} never matches a real date") from None
    return body


@functools.lru_cache(maxsize=1024)
def _min_cron_gap(cron: str) -> float:
    # Smallest gap between consecutive slots over a sample year: the jitter bound.
    from croniter import croniter

    it = croniter(cron, datetime(2001, 1, 1))
    prev = it.get_next(datetime)
    gap = float("inf")
    for _ in range(200):
        nxt = it.get_next(datetime)
        gap = min(gap, (nxt - prev).total_seconds())
        prev = nxt
    return gap


# ---------------------------------------------------------------- jobs and catch-up

@dataclass(frozen=True)
class Job:
    id: str                        # "<kind>:<name>", e.g. backup:siak
    schedule: Schedule

    @property
    def kind(self) -> str:
        return self.id.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.id.split(":", 1)[1]


@dataclass(frozen=True)
class Due:
    job: Job
    slot: datetime                 # the (latest) slot being served


@functools.lru_cache(maxsize=8192)
def jitter_offset(job_id: str, max_jitter: float) -> float:
    """A stable delay in [0, max_jitter) for this job: same job, same delay, every run and restart."""
    if max_jitter <= 0:
        return 0.0
    digest = hashlib.sha256(job_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * max_jitter


def next_run(job: Job, now: datetime, tz: ZoneInfo) -> datetime:
    """When the job will next start (slot plus its jitter), strictly after `now`."""
    delay = timedelta(seconds=jitter_offset(job.id, job.schedule.jitter))
    return job.schedule.next_after(now - delay, tz) + delay


def due_slot(job: Job, last_run: datetime | None, now: datetime, tz: ZoneInfo) -> datetime | None:
    """The slot the job should serve now, or None.

    `last_run` is when the job last started (any outcome: a failed run is not
    retried every tick) or, for a job that never ran, when the scheduler first
    saw it. None means "no reference yet": not due, wait for the next slot.
    """
    return due_window(job, last_run, now, tz)[0]


def due_window(job: Job, last_run: datetime | None, now: datetime, tz: ZoneInfo) -> tuple[datetime | None, float]:
    """(due_slot(...), until): with the same `last_run`, the answer holds for every instant in [now, until).

    A scheduler keeps `until` and skips the job until then: one comparison per job per tick."""
    if last_run is None:
        return None, now.timestamp()
    delay = jitter_offset(job.id, job.schedule.jitter)
    slot, until = job.schedule.previous_window(now - timedelta(seconds=delay), tz)
    return (slot if last_run.timestamp() < slot.timestamp() else None), until + delay


def due_jobs(jobs: Iterable[Job], last_runs: Mapping[str, datetime | None], now: datetime,
             tz: ZoneInfo) -> list[Due]:
    """Jobs due at `now`, each once, oldest slot first (backups before maintenance before drills)."""
    due = []
    for job in jobs:
        slot = due_slot(job, last_runs.get(job.id), now, tz)
        if slot is not None:
            due.append(Due(job, slot))
    due.sort(key=lambda d: (d.slot.timestamp(), KIND_ORDER.get(d.job.kind, 9), d.job.id))
    return due


# ---------------------------------------------------------------- export translations

def to_oncalendar(schedule: Schedule, tz_name: str | None) -> str:
    """A systemd OnCalendar= value for the schedule (ValueError when it has no exact equivalent)."""
    if schedule.interval is not None:
        return _interval_oncalendar(schedule)
    from croniter import croniter

    minute, hour, dom, month, dow = croniter(schedule.cron, datetime(2000, 1, 1)).expanded
    if dom != ["*"] and dow != ["*"]:
        raise ValueError(f"schedule {schedule.expr!r} restricts both day of month and day of week; cron means "
                         "either, systemd means both: split it into two schedules")
    days = "" if dow == ["*"] else ",".join(_SYSTEMD_DAYS[d % 7] for d in sorted(set(d % 7 for d in dow))) + " "
    text = f"{days}*-{_field(month)}-{_field(dom)} {_field(hour)}:{_field(minute)}:00"
    return f"{text} {tz_name}" if tz_name else text


def _field(values: list) -> str:
    return "*" if values == ["*"] else ",".join(f"{v:02d}" for v in values)


def _interval_oncalendar(schedule: Schedule) -> str:
    # Epoch-anchored intervals that divide a day are exact UTC calendar events.
    n = int(schedule.interval or 0)
    if n == 86400:
        return "*-*-* 00:00:00 UTC"
    if n % 3600 == 0 and 86400 % n == 0:
        return f"*-*-* 00/{n // 3600}:00:00 UTC"
    if n % 60 == 0 and 3600 % n == 0:
        return f"*-*-* *:00/{n // 60}:00 UTC"
    if n < 60 and 60 % n == 0:
        return f"*-*-* *:*:00/{n} UTC"
    raise ValueError(f"schedule {schedule.expr!r} cannot be a systemd calendar event: "
                     "use an interval that divides a day (e.g. every 6h, every 15m) or a daily/cron schedule")


def to_cron_fields(schedule: Schedule) -> str:
    """The five crontab time fields (ValueError when cron cannot express the schedule)."""
    if schedule.cron is not None:
        return schedule.cron
    n = int(schedule.interval or 0)
    # cron runs on the local clock: intervals keep their length, their phase may differ from the daemon's (UTC).
    if n == 86400:
        return "0 0 * * *"
    if n % 3600 == 0 and 86400 % n == 0:
        return f"0 */{n // 3600} * * *"
    if n % 60 == 0 and 3600 % n == 0:
        return f"*/{n // 60} * * * *"
    raise ValueError(f"schedule {schedule.expr!r} cannot be written as a crontab line (cron counts whole minutes "
                     "and intervals must divide an hour or a day); use the daemon or systemd timers")
