"""Daemon scheduling logic with fake jobs and an injected clock (real threads, no real restic)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from drtool.actions.daemon import Daemon, JobInfo, JobRequest, build_jobs, conflicts, next_subset
from drtool.actions.daemon.planner import READ_PATIENCE
from drtool.catalog import RunRecord
from drtool.config import load_settings
from drtool.errors import LockError
from drtool.schedule_math import Job, parse_schedule

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def write_setup(root: Path, *, max_jobs: int = 4, extra_config: str = "", policies: dict[str, str] | None = None,
                playbooks: dict[str, str] | None = None) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "playbooks").mkdir(exist_ok=True)
    (root / "drtool.yaml").write_text(f"""
state_dir: {root / 'state'}
timezone: UTC
max_concurrent_jobs: {max_jobs}
repositories:
  offsite: {{url: /srv/offsite, password: {{env: DRTOOL_TEST_PW}}}}
  other: {{url: /srv/other, password: {{env: DRTOOL_TEST_PW}}}}
{extra_config}
""")
    policies = policies if policies is not None else {"db": "repository: offsite\nschedule: every 10s\n"}
    for name, body in policies.items():
        (root / "policies" / f"{name}.yaml").write_text(
            f"name: {name}\n{body}sources:\n  - name: etc\n    files: {{paths: [/etc/hostname]}}\n")
    for name, body in (playbooks or {}).items():
        (root / "playbooks" / f"{name}.yaml").write_text(
            f"name: {name}\n{body}steps:\n  - name: restore\n    restore: {{source: etc}}\n")
    return root / "drtool.yaml"


def fake_record(job_id: str, status: str, error: str | None = None) -> RunRecord:
    kind, policy = job_id.split(":", 1)
    return RunRecord(f"run-{job_id}", policy, kind, "running", T0).finish(status, error)


@dataclass
class Fakes:
    """A dispatch table whose jobs can be held open and made to fail."""

    calls: list[JobRequest] = field(default_factory=list)
    hold: dict[str, threading.Event] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    raise_lock: set[str] = field(default_factory=set)

    def table(self) -> dict[str, Any]:
        return {kind: self._job for kind in ("backup", "forget", "check", "drill")}

    def _job(self, req: JobRequest) -> RunRecord:
        self.calls.append(req)
        job_id = req.info.job.id
        if job_id in self.raise_lock:
            raise LockError(f"policy {req.info.policy!r} is already running")
        gate = self.hold.get(job_id)
        if gate is not None:
            while not gate.wait(0.01):
                if req.cancel.is_set():
                    return fake_record(job_id, "cancelled", "stopped by shutdown")
        status = self.status.get(job_id, "success")
        return fake_record(job_id, status, None if status == "success" else "pg_dump exited with code 1")

    def ids(self) -> list[str]:
        return [c.info.job.id for c in self.calls]


class Events:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, event: Any) -> list:
        self.sent.append(event)
        return []

    def kinds(self) -> list[str]:
        return [e.kind for e in self.sent]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make(tmp_path: Path, fakes: Fakes, **setup: Any) -> tuple[Daemon, Events, Clock]:
    settings = load_settings(str(write_setup(tmp_path, **setup)))
    events, clock = Events(), Clock(T0)
    daemon = Daemon(settings, dispatch=fakes.table(), notifier=events, clock=clock,  # type: ignore[arg-type]
                    snapshot_time=lambda s, p: None, grace=0.2, cancel_grace=2)
    return daemon, events, clock


def settle(daemon: Daemon, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.running():
        assert time.monotonic() < deadline, f"jobs still running: {daemon.running()}"
        time.sleep(0.01)


def info(job_id: str, policy: str, repo: str) -> JobInfo:
    return JobInfo(Job(job_id, parse_schedule("hourly")), policy, repo)


def test_build_jobs_covers_policies_and_playbooks(tmp_path: Path) -> None:
    path = write_setup(tmp_path, policies={"db": "repository: offsite\nschedule: daily 02:00\n"
                                                  "forget_schedule: weekly sun 04:00\ncheck: {schedule: hourly}\n",
                                           "quiet": "repository: other\n"},
                       playbooks={"nightly": "policy: db\nschedule: daily 05:00\n"})
    jobs = build_jobs(load_settings(str(path)))
    assert sorted(j.job.id for j in jobs) == ["backup:db", "check:db", "drill:nightly", "forget:db"]
    assert {j.repository for j in jobs} == {"offsite"}


def test_conflict_rules() -> None:
    backup_a, drill_a = info("backup:a", "a", "r1"), info("drill:pa", "a", "r1")
    backup_b, forget_b, check_b = info("backup:b", "b", "r1"), info("forget:b", "b", "r1"), info("check:b", "b", "r1")
    backup_c = info("backup:c", "c", "r2")
    assert conflicts(backup_a, backup_a)
    assert conflicts(drill_a, backup_a) and conflicts(backup_a, drill_a)
    assert not conflicts(backup_a, backup_b)                 # two policies may back up to one repo at once
    assert conflicts(forget_b, backup_a) and conflicts(check_b, backup_a) and conflicts(forget_b, check_b)
    assert not conflicts(forget_b, backup_c) and not conflicts(drill_a, backup_b)


def test_next_subset_rotates_through_the_cycle() -> None:
    seen, last = [], 0
    for _ in range(4):
        subset, last = next_subset("1/3", last)
        seen.append(subset)
    assert seen == ["1/3", "2/3", "3/3", "1/3"]
    assert next_subset("5%", 7) == ("5%", 7) and next_subset(None, 0) == (None, 0)


def test_first_start_waits_for_slot_then_runs_once(tmp_path: Path) -> None:
    fakes = Fakes()
    daemon, events, clock = make(tmp_path, fakes)
    assert daemon.tick() == []                              # never ran: first sight, wait for the slot
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == ["backup:db"]
    settle(daemon)
    assert daemon.tick() == []                              # same slot: not again
    clock.now = T0 + timedelta(seconds=20)
    assert daemon.tick() == ["backup:db"]
    settle(daemon)
    assert fakes.ids() == ["backup:db", "backup:db"]
    assert fakes.calls[0].cancel is not fakes.calls[1].cancel


def test_missed_slots_catch_up_once_after_restart(tmp_path: Path) -> None:
    fakes = Fakes()
    daemon, _events, clock = make(tmp_path, fakes, policies={"db": "repository: offsite\nschedule: daily 02:00\n"})
    daemon.state.set("attempts", "backup:db", T0 - timedelta(days=3))   # down for three nights
    restarted = Daemon(daemon.settings, dispatch=fakes.table(), notifier=Events(), clock=clock,  # type: ignore[arg-type]
                       snapshot_time=lambda s, p: None)
    assert restarted.tick() == ["backup:db"]
    settle(restarted)
    clock.now = T0 + timedelta(hours=1)
    assert restarted.tick() == []
    assert fakes.ids() == ["backup:db"]


def test_concurrency_limit_and_deferred_job_runs_later(tmp_path: Path) -> None:
    fakes = Fakes(hold={"backup:a": threading.Event()})
    daemon, _e, clock = make(tmp_path, fakes, max_jobs=1, policies={
        "a": "repository: offsite\nschedule: every 10s\n", "b": "repository: other\nschedule: every 10s\n"})
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == ["backup:a"]
    assert daemon.tick() == []                              # limit 1: b waits
    fakes.hold["backup:a"].set()
    settle(daemon)
    assert daemon.tick() == ["backup:b"]                    # still due for its slot
    settle(daemon)


def test_drill_never_overlaps_its_policys_backup(tmp_path: Path) -> None:
    fakes = Fakes(hold={"backup:db": threading.Event()})
    daemon, _e, clock = make(tmp_path, fakes, playbooks={"pb": "policy: db\nschedule: every 10s\n"},
                             policies={"db": "repository: offsite\nschedule: every 10s\nforget_schedule: every 10s\n"})
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == ["backup:db"]                   # backups go first in a slot
    assert daemon.tick() == []                              # drill and forget wait for the backup
    fakes.hold["backup:db"].set()
    settle(daemon)
    started = daemon.tick()
    assert started == ["forget:db"]                         # forget excludes the drill on the same repository
    settle(daemon)
    assert daemon.tick() == ["drill:pb"]
    settle(daemon)
    spans = {job: (start, end) for job, start, end, _s in daemon.history}
    assert len(spans) == 3


def test_a_recorded_failure_is_logged_not_notified_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The run lifecycle inside the action already notified it (tests/integration/test_lifecycle.py);
    # the daemon adds one log line with the outcome and never a second alert.
    fakes = Fakes(status={"backup:db": "failed"})
    daemon, events, clock = make(tmp_path, fakes)
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    with caplog.at_level("INFO", logger="drtool.actions.daemon.loop"):
        daemon.tick()
        settle(daemon)
    for _ in range(3):
        daemon.tick()
    assert events.kinds() == []
    lines = [r.getMessage() for r in caplog.records if "backup:db failed in" in r.getMessage()]
    assert len(lines) == 1 and "pg_dump exited with code 1" in lines[0] and "run run-backup:db" in lines[0]


def test_crashing_job_is_recorded_as_failure_and_scheduler_survives(tmp_path: Path) -> None:
    fakes = Fakes()
    daemon, events, clock = make(tmp_path, fakes)
    daemon.dispatch = {"backup": lambda req: 1 / 0}
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    daemon.tick()
    settle(daemon)
    assert events.kinds()[-1] == "backup_failed" and "ZeroDivisionError" in events.sent[-1].message


def test_locked_policy_is_not_an_attempt_and_is_retried_later(tmp_path: Path) -> None:
    fakes = Fakes(raise_lock={"backup:db"})
    daemon, events, clock = make(tmp_path, fakes)
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == ["backup:db"]
    settle(daemon)
    assert daemon.tick() == []                              # backing off
    fakes.raise_lock.clear()
    clock.now = T0 + timedelta(seconds=75)
    assert daemon.tick() == ["backup:db"]
    settle(daemon)
    assert "backup_failed" not in events.kinds()


def test_shutdown_waits_grace_then_cancels(tmp_path: Path) -> None:
    fakes = Fakes(hold={"backup:db": threading.Event()})
    daemon, events, clock = make(tmp_path, fakes)
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    daemon.tick()
    daemon.shutdown()                                       # grace 0.2s: the held job is cancelled
    assert daemon.running() == [] and fakes.calls[0].cancel.is_set()
    assert daemon.history[-1][0] == "backup:db" and daemon.history[-1][3] == "cancelled"
    assert events.kinds() == []                             # the job's own lifecycle reports it
    clock.now = T0 + timedelta(seconds=30)
    assert daemon.tick() == []                              # stopped: nothing new starts


def test_shutdown_lets_quick_jobs_finish(tmp_path: Path) -> None:
    fakes = Fakes(hold={"backup:db": threading.Event()})
    daemon, events, clock = make(tmp_path, fakes)
    daemon.grace = 5
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    daemon.tick()
    threading.Timer(0.1, fakes.hold["backup:db"].set).start()
    daemon.shutdown()
    assert not fakes.calls[0].cancel.is_set() and daemon.history[-1][3] == "success"


def test_check_rotation_is_persisted_and_advances_on_success(tmp_path: Path) -> None:
    fakes = Fakes()
    daemon, _e, clock = make(tmp_path, fakes, policies={
        "db": "repository: offsite\ncheck: {schedule: every 10s, read_data_subset: 1/2}\n"})
    subsets = []
    daemon.tick()
    for i in range(1, 4):
        clock.now = T0 + timedelta(seconds=10 * i)
        daemon.tick()
        settle(daemon)
        subsets.append(fakes.calls[-1].read_data_subset)
        if i == 1:   # a restarted daemon continues the cycle
            daemon = Daemon(daemon.settings, dispatch=fakes.table(), notifier=Events(), clock=clock,  # type: ignore[arg-type]
                            snapshot_time=lambda s, p: None)
    assert subsets == ["1/2", "2/2", "1/2"]
    fakes.status["check:db"] = "failed"
    clock.now = T0 + timedelta(seconds=40)
    daemon.tick()
    settle(daemon)
    clock.now = T0 + timedelta(seconds=50)
    daemon.tick()
    settle(daemon)
    assert [c.read_data_subset for c in fakes.calls[-2:]] == ["2/2", "2/2"]   # failed part is read again


def test_watchdog_raises_rpo_breach_once_then_recovers(tmp_path: Path) -> None:
    fakes = Fakes()
    daemon, events, clock = make(tmp_path, fakes, extra_config="notifications: {on_success: true}",
                                 policies={"db": "repository: offsite\ntargets: {rpo: 24h}\n",
                                           "new": "repository: offsite\ntargets: {rpo: 1h}\n"})
    newest = {"db": T0 - timedelta(hours=30), "new": None}
    daemon.snapshot_time = lambda s, p: newest[p.name]
    assert sorted(daemon.watchdog()) == ["db", "new"]       # no job is scheduled: the watchdog still sees it
    daemon.watchdog()
    assert events.kinds() == ["rpo_breach", "rpo_breach"]
    newest["db"] = T0 - timedelta(hours=1)
    assert daemon.watchdog() == ["new"]
    assert events.kinds()[-1] == "rpo_recovered" and events.sent[-1].policy == "db"


def test_watchdog_survives_unreachable_repository(tmp_path: Path) -> None:
    daemon, events, _c = make(tmp_path, Fakes(), policies={"db": "repository: offsite\ntargets: {rpo: 1h}\n"})

    def broken(settings: Any, policy: Any) -> None:
        raise OSError("connection refused")

    daemon.snapshot_time = broken
    assert daemon.watchdog() == [] and events.kinds() == []


def test_reload_keeps_old_settings_when_new_config_is_invalid(tmp_path: Path) -> None:
    fakes = Fakes()
    daemon, _e, _c = make(tmp_path, fakes)
    path = tmp_path / "policies" / "db.yaml"
    path.write_text(path.read_text().replace("every 10s", "every fortnight"))
    daemon.loader = lambda: load_settings(str(tmp_path / "drtool.yaml"))
    assert daemon.reload() is False and [j.job.id for j in daemon.jobs] == ["backup:db"]
    path.write_text(path.read_text().replace("schedule: every fortnight", "forget_schedule: daily 01:00"))
    assert daemon.reload() is True and [j.job.id for j in daemon.jobs] == ["forget:db"]


def test_metrics_textfile_written_after_a_job(tmp_path: Path) -> None:
    metrics = tmp_path / "textfile" / "drtool.prom"
    fakes = Fakes()
    daemon, _e, clock = make(tmp_path, fakes, extra_config=f"metrics: {{textfile: {metrics}}}",
                             policies={"db": "repository: offsite\nschedule: every 10s\ntargets: {rpo: 1h}\n"})
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    daemon.tick()
    settle(daemon)
    text = metrics.read_text()
    assert 'drtool_rpo_target_seconds{policy="db",repository="offsite"} 3600' in text
    assert not list(metrics.parent.glob(".*.tmp"))


@pytest.fixture()
def release():
    """Holds to open at the end, also when an assertion fails (else pytest waits on the job threads)."""
    fakes_seen: list[Fakes] = []
    yield fakes_seen.append
    for fakes in fakes_seen:
        for gate in fakes.hold.values():
            gate.set()


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_waiting_maintenance_is_not_starved_by_backups_of_its_repository(tmp_path: Path, release: Any) -> None:
    fakes = Fakes(hold={"backup:a": threading.Event(), "backup:b": threading.Event()})
    release(fakes)
    daemon, _e, clock = make(tmp_path, fakes, max_jobs=2, policies={
        "a": "repository: offsite\nschedule: every 10s\nforget_schedule: every 10s\n",
        "b": "repository: offsite\nschedule: every 10s\n"})
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == ["backup:a", "backup:b"]        # forget:a waits (limit 2, same repository)
    fakes.hold["backup:a"].set()
    wait_for(lambda: daemon.running() == ["backup:b"])
    fakes.hold["backup:a"].clear()
    clock.now = T0 + timedelta(seconds=20)
    # backup:a is due again and would fit, but it would keep forget:a waiting: it queues behind it.
    assert daemon.tick() == []
    fakes.hold["backup:b"].set()
    settle(daemon)
    assert daemon.tick() == ["forget:a"]
    settle(daemon)
    fakes.hold["backup:a"].set()
    assert daemon.tick() == ["backup:a", "backup:b"]
    settle(daemon)


def test_watchdog_and_maintenance_of_one_repository_never_overlap(tmp_path: Path, release: Any) -> None:
    fakes = Fakes(hold={"forget:db": threading.Event()})
    release(fakes)
    daemon, _e, clock = make(tmp_path, fakes, policies={
        "db": "repository: offsite\nforget_schedule: every 10s\ntargets: {rpo: 1h}\n"})
    reads: list[str] = []
    daemon.snapshot_time = lambda s, p: reads.append(p.name) or T0
    daemon.tick()
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == ["forget:db"]
    assert daemon.watchdog() == [] and reads == []          # prune holds the repository: no restic read now
    fakes.hold["forget:db"].set()
    settle(daemon)
    fakes.hold["forget:db"].clear()
    clock.now = T0 + timedelta(seconds=20)
    started_during_read: list[str] = []

    def reading(settings: Any, policy: Any) -> datetime:
        started_during_read.extend(daemon.tick())             # the scheduler ticks while restic reads
        return T0

    daemon.snapshot_time = reading
    assert daemon.watchdog() == [] and started_during_read == []
    assert daemon.tick() == ["forget:db"]                    # after the read
    fakes.hold["forget:db"].set()
    settle(daemon)


def test_a_reader_that_never_pauses_cannot_keep_maintenance_out(tmp_path: Path, release: Any) -> None:
    """WAL batches read the repository back to back (overlapping, under load): once a forget has
    waited READ_PATIENCE for them, new reads are refused, the running one ends, and the forget starts."""
    fakes = Fakes(hold={"forget:db": threading.Event()})
    release(fakes)
    daemon, _e, clock = make(tmp_path, fakes, policies={"db": "repository: offsite\nforget_schedule: every 10s\n"})
    daemon.tick()
    assert daemon._begin_read("offsite")                     # batch 1 reads
    clock.now = T0 + timedelta(seconds=10)
    assert daemon.tick() == []                               # the forget is due and waits for batch 1
    assert daemon._begin_read("offsite")                     # for a while batches still go (WAL first) ...
    daemon._end_read("offsite")
    clock.now = T0 + timedelta(seconds=10) + READ_PATIENCE
    assert daemon.tick() == []
    assert not daemon._begin_read("offsite")                 # ... then batch 2 is postponed, not overlapped
    assert daemon._begin_read("other")                       # another repository's reads go on
    daemon._end_read("other")
    daemon._end_read("offsite")                              # batch 1 ends
    assert daemon.tick() == ["forget:db"]
    assert not daemon._begin_read("offsite")                 # and no batch runs beside the prune
    fakes.hold["forget:db"].set()
    settle(daemon)
    assert daemon._begin_read("offsite")                     # reads resume after it
    daemon._end_read("offsite")


def test_real_dispatch_passes_cancel_and_schedule_trigger(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from drtool.actions import backup, drill, immutable, maintenance
    from drtool.actions.daemon import default_dispatch

    got: dict[str, dict[str, Any]] = {}

    def fake(kind: str) -> Any:
        def call(settings: Any, target: Any, **kw: Any) -> Any:
            got.setdefault(kind, {"target": target.name, **kw})
            record = fake_record(f"{kind}:{target.name}", "success")
            return type("Report", (), {"record": record})() if kind == "drill" else record
        return call

    monkeypatch.setattr(backup, "backup_policy", fake("backup"))
    monkeypatch.setattr(maintenance, "forget_policy", fake("forget"))
    monkeypatch.setattr(maintenance, "check_repository", fake("check"))
    monkeypatch.setattr(drill, "run_drill", fake("drill"))
    monkeypatch.setattr(immutable, "extend_locks", lambda settings, repo, **kw: got.setdefault(
        "lock-extend", {"target": repo, **kw}) and fake_record(f"lock-extend:{repo}", "success"))
    settings = load_settings(str(write_setup(
        tmp_path, policies={"db": "repository: offsite\nschedule: hourly\nforget_schedule: hourly\n"
                                  "check: {schedule: hourly}\n"},
        playbooks={"pb": "policy: db\nschedule: hourly\n"})))
    table = default_dispatch()
    locked = JobInfo(Job("lock-extend:offsite", parse_schedule("daily 04:30")), "db", "offsite")
    for job in [*build_jobs(settings), locked]:
        cancel = threading.Event()
        table[job.kind](JobRequest(job, settings, cancel, "1/5" if job.kind == "check" else None))
        assert got[job.kind]["trigger"] == "schedule"
        assert got[job.kind]["cancel"] is cancel             # every job kind can be stopped on SIGTERM
    assert got["check"]["read_data_subset"] == "1/5" and got["drill"]["target"] == "pb"
    # the scheduled lock extension reads every object's retention, not drtool's memory of it
    assert got["lock-extend"]["target"] == "offsite" and got["lock-extend"]["verify"] is True
    assert got["lock-extend"]["policy"] == "db"


def test_build_jobs_has_one_lock_extension_per_object_lock_repository_in_use(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "drtool.yaml").write_text(f"""
state_dir: {tmp_path / 'state'}
repositories:
  locked: {{url: "s3:http://127.0.0.1:9/b/r", password: {{env: X}}, immutable: {{mode: compliance, days: 30,
           schedule: daily 03:15}}}}
  copy: {{url: "s3:http://127.0.0.1:9/b/c", password: {{env: X}}, immutable: {{mode: governance, days: 7}}}}
  unused: {{url: "s3:http://127.0.0.1:9/b/u", password: {{env: X}}, immutable: {{mode: compliance, days: 1}}}}
  plain: {{url: /srv/plain, password: {{env: X}}}}
""")
    for name, body in {"b": "repository: locked\ncopies: [copy]\n", "a": "repository: plain\ncopies: [locked]\n"}.items():
        (tmp_path / "policies" / f"{name}.yaml").write_text(
            f"name: {name}\n{body}sources:\n  - name: etc\n    files: {{paths: [/etc/hostname]}}\n")
    jobs = {j.job.id: j for j in build_jobs(load_settings(str(tmp_path / "drtool.yaml")))}
    assert sorted(jobs) == ["lock-extend:copy", "lock-extend:locked"]      # none for an unused repository
    assert (jobs["lock-extend:locked"].policy, jobs["lock-extend:locked"].repository) == ("a", "locked")
    assert jobs["lock-extend:copy"].policy == "b"
    assert (jobs["lock-extend:locked"].job.schedule.expr, jobs["lock-extend:copy"].job.schedule.expr) == \
        ("daily 03:15", "daily 04:30")


def test_drill_metrics_come_from_the_catalog_after_a_restart(tmp_path: Path) -> None:
    from drtool.catalog import Catalog, RunRecord

    daemon, _e, _c = make(tmp_path, Fakes(), policies={"db": "repository: offsite\n"},
                          playbooks={"pb": "policy: db\nschedule: daily 05:00\n"})
    record = RunRecord("drill-1", "db", "drill", "running", T0, trigger="schedule",
                       details={"playbook": "pb", "passed": True, "rto": {"achieved_s": 12.5, "target_s": 3600}})
    Catalog(daemon.settings.state_dir).record(record.finish("success"))
    text = daemon.metrics_text()
    assert 'drtool_drill_passed{playbook="pb",policy="db"} 1' in text
    assert 'drtool_drill_rto_achieved_seconds{playbook="pb",policy="db"} 12.5' in text
    assert 'drtool_drill_rto_target_seconds{playbook="pb",policy="db"} 3600' in text


def test_catalog_grouped_read_matches_per_job_queries(tmp_path: Path) -> None:
    from drtool.catalog import Catalog, RunRecord

    catalog = Catalog(tmp_path / "state")
    for i, (policy, kind, playbook) in enumerate([("db", "backup", None), ("db", "backup", None), ("db", "forget", None),
                                                  ("web", "check", None), ("db", "drill", "pb"), ("db", "drill", "pb2"),
                                                  ("db", "drill", "pb")]):
        details = {"playbook": playbook} if playbook else {}
        catalog.record(RunRecord(f"r{i}", policy, kind, "success", T0 + timedelta(minutes=i), details=details))
    for n in range(3):                          # pb2's drill drops out of the newest-2 window
        catalog.record(RunRecord(f"x{n}", "db", "drill", "success", T0 + timedelta(hours=1 + n),
                                 details={"playbook": "pb"}))
    got = catalog.last_started_by_job(drill_window=2)
    assert got[("db", "backup", None)] == catalog.last_run("db", "backup").started_at == T0 + timedelta(minutes=1)
    assert got[("db", "forget", None)] == T0 + timedelta(minutes=2)
    assert got[("web", "check", None)] == T0 + timedelta(minutes=3)
    assert got[("db", "drill", "pb")] == T0 + timedelta(hours=3)
    assert ("db", "drill", "pb2") not in got and ("db", "drill", None) not in got


def test_quiet_ticks_do_no_schedule_math_or_catalog_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = Fakes()
    daemon, _e, clock = make(tmp_path, fakes, policies={"db": "repository: offsite\nschedule: daily 02:00\n"})
    reads: list[int] = []
    real = daemon.catalog.last_started_by_job
    monkeypatch.setattr(daemon.catalog, "last_started_by_job", lambda: reads.append(1) or real())
    assert daemon.tick() == [] and reads == [1]            # first sight
    for minutes in range(1, 600, 7):                        # T0 is 12:00 UTC: nothing due until 02:00
        clock.now = T0 + timedelta(minutes=minutes)
        assert daemon.tick() == []
    assert reads == [1]
    clock.now = T0 + timedelta(hours=14)                    # 02:00 next day
    assert daemon.tick() == ["backup:db"] and reads == [1, 1]
    settle(daemon)
    clock.now = T0 + timedelta(hours=15)
    assert daemon.tick() == [] and len(reads) == 3          # re-read once after the job finished
    clock.now = T0 + timedelta(hours=16)
    assert daemon.tick() == [] and len(reads) == 3


def test_forecast_breach_is_alerted_once_per_policy_and_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.actions import forecast
    from drtool.actions.forecast import ForecastAlert

    alert = ForecastAlert("db", "breach-forecast", T0 + timedelta(days=40), 3600.0, 3000.0, "load",
                          "more cores for the index build", "policy db: RTO forecast 3700s by 2024-06-10")
    monkeypatch.setattr(forecast, "forecast_alerts", lambda settings, catalog, now=None: [alert])
    daemon, events, clock = make(tmp_path, Fakes())
    assert daemon.forecast_alerts() == ["db"] and daemon.forecast_alerts() == []
    clock.now = T0 + timedelta(days=1)
    assert daemon.forecast_alerts() == ["db"]
    assert events.kinds() == ["forecast_breach", "forecast_breach"]
    assert events.sent[0].details["dominant_phase"] == "load"
