"""The give-up rule for a restic whose storage stopped answering (drtool/engine/retry_watch.py),
on restic 0.14's own retry lines."""

from __future__ import annotations

from drtool.engine.retry_watch import QUIET_S, StreakClock, last_retry_line

LINES = [
    'Save(<data/0b83fd851f>) returned error, retrying after 552.330144ms: client.PutObject: Put "http://127.0.0.1:1/b/r/'
    'data/0b/0b83": dial tcp 127.0.0.1:1: connect: connection refused',
    "Remove(<lock/e595a717c6>) returned error, retrying after 1m2.200112976s: client.RemoveObject: We encountered an "
    "internal error. Please try again.",
]


def test_last_retry_line_is_the_newest() -> None:
    tail = "repository 3a1b opened\n" + LINES[0] + "\nsome progress\n" + LINES[1] + "\n"
    assert last_retry_line(tail) == LINES[1]
    assert last_retry_line("no trouble at all\n") is None


def test_streak_grows_while_new_retry_lines_keep_coming() -> None:
    clock = StreakClock()
    assert clock.see(None, 0.0) == 0.0
    assert clock.see(LINES[0], 10.0) == 0.0                  # the first failure starts the streak
    assert clock.see(LINES[0], 15.0) == 5.0                  # still the same line: still failing
    assert clock.see(LINES[1], 30.0) == 20.0


def test_streak_ends_when_restic_stops_retrying() -> None:
    clock = StreakClock()
    clock.see(LINES[0], 0.0)
    assert clock.see(LINES[0], QUIET_S + 1) == 0.0           # no new retry for a while: it answered again
    assert clock.see(LINES[1], QUIET_S + 5) == 0.0           # a new failure starts a new streak
    assert clock.see(LINES[1], QUIET_S + 9) == 4.0


def test_a_missing_key_is_not_an_unavailable_storage() -> None:
    """restic retries a 404 too (a lock another restic just removed, a deleted pack): no outage,
    a streak of its own."""
    missing = 'Load(<data/47c0fe8201>) returned error, retrying after 720ms: The specified key does not exist.'
    assert last_retry_line(missing + "\n") is None
    assert last_retry_line(LINES[0] + "\n" + missing + "\n") == LINES[0]
    assert last_retry_line(LINES[0] + "\n" + missing + "\n", "missing") == missing
    assert last_retry_line(LINES[1] + "\n", "missing") is None
    lock = 'Load(<lock/47c0fe8201>, 0, 0) returned error, retrying after 1.2s: The specified key does not exist.'
    assert last_retry_line(lock + "\n", "missing") is None and last_retry_line(lock + "\n") is None
