"""Give up on a restic whose storage stopped answering, after the repository's `wait_unavailable`.

restic retries every request on its own (about ten times, with backoff) and then every
other request the same way, so a backup whose S3 server died mid-run kept going for 348 s
(measured: rclone SIGKILLed under a 6 MB `restic backup --stdin`, restic 0.14) before it
failed, and much longer with more data. drtool waits out an unavailable storage for
`wait_unavailable` (default 5 minutes) before a run; this gives the same budget to a run
in progress: while restic keeps printing "... returned error, retrying after ..." lines
(each new one means it is still failing), for longer than the budget, drtool stops it.

A storage that answers again ends the streak (restic prints no retry line for
`QUIET_S`), so a blip of a few seconds costs nothing. What this cannot see: the minio
client's own silent retries under restic's (about 12 s per request on a refused
connection), so a dead storage is given up on after wait_unavailable plus those.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from drtool.engine.restic_errors import classify
from drtool.errors import DrtoolError, RepositoryError, StorageThrottled, StorageUnreachable
from drtool.execute import Process

RETRY_LINE = re.compile(r"^.*returned error, retrying after \S+: (?P<cause>.*)$", re.MULTILINE)   # a Go duration
QUIET_S = 60.0                 # restic's longest wait between two retries is ~20 s
POLL_S = 0.5


MISSING_S = 20.0               # an object that is not there will not appear by asking again
REPOSITORY_OBJECTS = ("data", "index", "snapshot", "key")   # not "lock": those come and go


def last_retry_line(stderr: str, kind: str = "unavailable") -> str | None:
    """restic's most recent "retrying" line of `kind` (pure): "unavailable" (a refused or reset
    connection, a timeout, a 5xx/SlowDown answer) or "missing" (the object does not exist).

    restic 0.14 retries a missing object too, about ten times per object with backoff (later
    versions do not): a deleted pack made a restore wait ~50 s per blob it needed. A lock
    that is not there is no damage (another restic removed it after the listing was read):
    restic retries that for up to a minute too, and must be let finish."""
    for match in reversed(list(RETRY_LINE.finditer(stderr))):
        if retry_kind(match.group(0), match.group("cause")) == kind:
            return match.group(0)
    return None


def retry_kind(line: str, cause: str) -> str | None:
    known = classify(None, f"Fatal: {cause}", "-")
    if isinstance(known, (StorageUnreachable, StorageThrottled)):
        return "unavailable"
    low = cause.lower()
    missing = "specified key does not exist" in low or "nosuchkey" in low or "not found" in low
    if missing and any(f"<{kind}/" in line for kind in REPOSITORY_OBJECTS):
        return "missing"
    return None


class StreakClock:
    """Pure: from the successive last retry lines seen at successive times, how long restic has
    been failing without a pause of `quiet` seconds."""

    def __init__(self, quiet: float = QUIET_S) -> None:
        self.quiet = quiet
        self._last_line: str | None = None
        self._last_new = 0.0
        self._start: float | None = None

    def see(self, line: str | None, now: float) -> float:
        """The length of the current failure streak at `now` (0 when there is none)."""
        if line is not None and line != self._last_line:
            self._last_line, self._last_new = line, now
            if self._start is None:
                self._start = now
        elif self._start is not None and now - self._last_new > self.quiet:
            self._start = None
        return 0.0 if self._start is None else now - self._start


class RetryWatch:
    """Watches one restic process; after `limit` seconds of unbroken storage retries (or
    MISSING_S of retries of a missing object) it calls `give_up` (which kills restic) and
    remembers why (`error()`)."""

    def __init__(self, proc: Process, limit: float | None, give_up: Callable[[], None], *, url: str) -> None:
        self.gave_up_after: float | None = None
        self.kind = ""                   # "unavailable" | "missing", once given up
        self.cause = ""
        self._proc, self._limit, self._give_up, self._url = proc, limit, give_up, url
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if limit:
            self._thread = threading.Thread(target=self._watch, name="restic-retry-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        assert self._limit
        limits = {"unavailable": self._limit, "missing": min(self._limit, MISSING_S)}
        clocks = {kind: StreakClock() for kind in limits}
        while not self._done.wait(POLL_S):
            tail, now = self._proc.stderr_tail(), time.monotonic()
            for kind, clock in clocks.items():
                line = last_retry_line(tail, kind)
                streak = clock.see(line, now)
                if streak >= limits[kind]:
                    self.gave_up_after, self.kind = streak, kind
                    match = RETRY_LINE.search(line or "")
                    self.cause = match.group("cause")[:300] if match else ""
                    self._give_up()
                    return

    @property
    def storage_down(self) -> bool:
        """Given up because the storage is unavailable (not because one object is missing)."""
        return self.gave_up_after is not None and self.kind == "unavailable"

    def error(self) -> DrtoolError:
        """Throttled (5xx, SlowDown), unreachable or an object missing, as restic's last retry line says."""
        after = f"drtool stopped restic after {self.gave_up_after:.0f}s of failed retries ({self.cause})"
        if self.kind == "missing":
            return RepositoryError(f"an object of repository {self._url} is missing; {after}",
                                   hint="the repository is damaged: run `drtool check POLICY --read-data-subset "
                                        "100%`, restore from another snapshot, or repair it with restic")
        hint = ("nothing of this stream was kept; check the S3 server, then run again "
                "(the repository's wait_unavailable sets how long drtool waits)")
        if isinstance(classify(None, f"Fatal: {self.cause}", self._url), StorageThrottled):
            return StorageThrottled(f"the storage of repository {self._url} kept failing requests while restic "
                                    f"was working; {after}", hint=hint)
        return StorageUnreachable(f"the storage of repository {self._url} stopped answering while restic was "
                                  f"working; {after}", hint=hint)

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(5)
