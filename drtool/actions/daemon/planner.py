"""Which due jobs may start now: the daemon's queue, as rules over plain data.

A job is due when schedule_math says its slot passed since its last run. Among due jobs,
oldest slot first (kind order breaks ties), one may start unless:
- it is backing off (its policy was locked by someone else a moment ago);
- the concurrency limit is reached;
- it conflicts with a running job (`conflicts`);
- it is maintenance and the watchdog (or a WAL batch) is reading its repository. Once it has
  waited so for READ_PATIENCE, the repository is in `Queue.wanted` and new reads of it wait:
  readers never starve maintenance (a WAL shipper reading every second kept a forget out for
  good), and maintenance never starves WAL shipping either (a forget due again as soon as it
  ends would otherwise hold the WAL back for as long as it is scheduled);
- it conflicts with a job that has been waiting longer (no starvation: a forget on a
  repository that several policies back up to often would otherwise wait forever).

`Queue` keeps the two pieces of memory this needs: the slot each waiting job first waited
for, and, per job, until when it is known not to be due (a quiet tick is then one
comparison per job and reads nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from drtool.actions.daemon.jobs import MAINTENANCE, JobInfo, conflicts
from drtool.schedule_math import KIND_ORDER, Due, due_window


READING = "the watchdog or a WAL batch is reading the repository"
READ_PATIENCE = timedelta(seconds=30)       # maintenance waits this long for reads before new reads wait


@dataclass
class Busy:
    """What is going on right now, as the planner needs to see it."""

    running: list[JobInfo]
    limit: int
    reading: Mapping[str, int]                # repository -> watchdog reads in progress
    retry_after: Mapping[str, datetime]       # job id -> backing off until


def blocked(info: JobInfo, now: datetime, busy: Busy, waiting_ahead: list[JobInfo]) -> str | None:
    """Why `info` may not start now (None: it may)."""
    retry = busy.retry_after.get(info.job.id)
    if retry and now < retry:
        return "backing off"
    if len(busy.running) >= busy.limit:
        return "concurrency limit"
    if any(conflicts(info, r) for r in busy.running):
        return "conflicts with a running job"
    if info.kind in MAINTENANCE and busy.reading.get(info.repository):
        return READING
    if any(conflicts(info, w) for w in waiting_ahead):
        return "queued behind a job waiting longer"
    return None


@dataclass
class Queue:
    waiting: dict[str, datetime] = field(default_factory=dict)            # job id -> first slot it waited for
    not_before: dict[str, tuple[float, float]] = field(default_factory=dict)   # job id -> (evaluated at, due at)
    wanted: set[str] = field(default_factory=set)     # repositories whose maintenance waits for reads to end
    read_blocked: dict[str, datetime] = field(default_factory=dict)   # job id -> since when reads block it

    def forget(self, job_id: str) -> None:
        """The job started or finished: its reference time moved, evaluate it again."""
        self.not_before.pop(job_id, None)

    def reset(self) -> None:
        self.not_before = {}

    def due(self, jobs: list[JobInfo], now: datetime, tz: ZoneInfo,
            references: Callable[[list[JobInfo]], dict[str, datetime]]) -> list[Due]:
        """Due jobs, soonest slot first; `references` (a catalog read) only for jobs not known idle."""
        ts = now.timestamp()
        candidates = [i for i in jobs if not ((w := self.not_before.get(i.job.id)) and w[0] <= ts < w[1])]
        if not candidates:
            return []
        refs = references(candidates)
        due = []
        for info in candidates:
            job_id = info.job.id
            slot, until = due_window(info.job, refs.get(job_id), now, tz)
            if slot is None:
                self.not_before[job_id] = (ts, until)
            else:
                self.not_before.pop(job_id, None)
                due.append(Due(info.job, slot))
        due.sort(key=lambda d: (d.slot.timestamp(), KIND_ORDER.get(d.job.kind, 9), d.job.id))
        return due

    def plan(self, due: list[Due], by_id: Mapping[str, JobInfo], now: datetime, busy: Busy) -> list[tuple[JobInfo, Due]]:
        """The due jobs to start now, in order; the others keep (or take) their place in the queue."""
        due_ids = {d.job.id for d in due}
        self.waiting = {job_id: slot for job_id, slot in self.waiting.items() if job_id in due_ids}
        ordered = sorted(due, key=lambda d: self.waiting.get(d.job.id, d.slot).timestamp())   # stable
        start: list[tuple[JobInfo, Due]] = []
        waiting_ahead: list[JobInfo] = []
        self.wanted = set()
        blocked_now: set[str] = set()
        running = list(busy.running)
        for item in ordered:
            info = by_id[item.job.id]
            reason = blocked(info, now, Busy(running, busy.limit, busy.reading, busy.retry_after), waiting_ahead)
            if reason is None:
                self.waiting.pop(info.job.id, None)
                start.append((info, item))
                running.append(info)
            elif reason != "backing off":
                self.waiting.setdefault(info.job.id, item.slot)
                waiting_ahead.append(info)
                if reason == READING:
                    blocked_now.add(info.job.id)
                    if now - self.read_blocked.setdefault(info.job.id, now) >= READ_PATIENCE:
                        self.wanted.add(info.repository)
        self.read_blocked = {job_id: t for job_id, t in self.read_blocked.items() if job_id in blocked_now}
        return start
