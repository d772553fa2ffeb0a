"""Which repository locks `drtool unlock` calls stale: restic's own rule (drtool/actions/unlock.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from drtool.actions.unlock import describe_lock

NOW = datetime(2026, 12, 1, 22, 0, tzinfo=timezone.utc)


def _raw(minutes_ago: float, host: str = "records", pid: int = 4242, exclusive: bool = True) -> dict:
    when = NOW - timedelta(minutes=minutes_ago)
    return {"id": "3f2a1b9c" * 8, "time": when.isoformat().replace("+00:00", "Z"), "hostname": host, "pid": pid,
            "exclusive": exclusive, "username": "root"}


def test_a_dead_process_on_this_host_is_stale() -> None:
    lock = describe_lock(_raw(2), this_host="records", now=NOW, alive=lambda pid: False)
    assert lock.stale and lock.why == "process 4242 on this machine is gone"
    assert lock.exclusive and lock.hostname == "records" and lock.time == NOW - timedelta(minutes=2)


def test_a_live_process_on_this_host_is_kept() -> None:
    lock = describe_lock(_raw(2), this_host="records", now=NOW, alive=lambda pid: True)
    assert not lock.stale and lock.why == "held by process 4242, running on this machine"


def test_another_hosts_recent_lock_is_kept_whatever_its_pid() -> None:
    lock = describe_lock(_raw(12, host="records-old"), this_host="records", now=NOW, alive=lambda pid: False)
    assert not lock.stale
    assert lock.why == "another host's lock, refreshed 12 min ago: it may be a backup running there"


def test_any_lock_not_refreshed_for_30_minutes_is_stale() -> None:
    for host in ("records", "records-old"):
        lock = describe_lock(_raw(31, host=host), this_host="records", now=NOW, alive=lambda pid: True)
        assert lock.stale and lock.why == "not refreshed for 31 min (stale after 30 min)"
    assert describe_lock(_raw(300), this_host="x", now=NOW).why == "not refreshed for 5 h (stale after 30 min)"


def test_restic_nanosecond_times_are_read() -> None:
    raw = {**_raw(0), "time": "2026-12-01T21:58:00.123456789+00:00"}
    assert describe_lock(raw, this_host="records", now=NOW, alive=lambda pid: True).time.minute == 58
