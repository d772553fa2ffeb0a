"""restic adapter, pure parts: argv building, error mapping, time parsing, the password pipe."""

from __future__ import annotations

import os
from datetime import timezone

import pytest

from drtool.engine.pipeline import backup_args, stdin_backup_args
from drtool.engine.restic import (PasswordPipe, Snapshot, backoff_delays, classify_failure, parse_restic_time,
                                 restic_error, summary_snapshot_id)
from drtool.engine.restic_errors import cause_line, clean_stderr
from drtool.errors import (AccessDenied, RepositoryLocked, RepositoryMissing, StorageThrottled, StorageUnreachable,
                           WrongPassword)
from drtool.secrets import Secret, redact

URL = "s3:http://127.0.0.1:9000/b/p"


def test_stdin_backup_argv_is_exact():
    assert stdin_backup_args("siak.pgdump", ["drtool", "policy=siak"], "records-01") == [
        "backup", "--json", "--host", "records-01", "--tag", "drtool", "--tag", "policy=siak",
        "--stdin", "--stdin-filename", "siak.pgdump"]
    assert "--stdin" not in backup_args(["drtool"], "h")


GO_TRACE = """config file has zero size, invalid repository?
main.open
	github.com/restic/restic/cmd/restic/global.go:760
main.OpenRepository
	github.com/restic/restic/cmd/restic/global.go:432
github.com/spf13/cobra.(*Command).ExecuteC
	github.com/spf13/cobra/command.go:1044
runtime.main
	runtime/proc.go:250
"""
QUESTION = "\nIs there a repository at the following location?\n" + URL + "\n"


# What restic 0.14 really printed, measured against rclone S3 through tests/support/faultproxy.py.
@pytest.mark.parametrize("code, stderr, kind", [
    (12, "", WrongPassword),
    (1, "Fatal: wrong password or no key found\n", WrongPassword),
    (10, "", RepositoryMissing),
    (1, "Fatal: unable to open config file: Stat: The specified key does not exist." + QUESTION, RepositoryMissing),
    (1, "Fatal: unable to open config file: stat /srv/repo/config: no such file or directory" + QUESTION,
     RepositoryMissing),
    (11, "", RepositoryLocked),
    (1, "unable to create lock in backend: repository is already locked by PID 7", RepositoryLocked),
    (1, "Fatal: unable to open config file: Stat: Get \"http://127.0.0.1:1/bkt/?location=\": dial tcp "
        "127.0.0.1:1: connect: connection refused" + QUESTION, StorageUnreachable),
    (1, "Fatal: unable to open config file: Stat: Get \"http://127.0.0.1:9/bkt/?location=\": Connection closed "
        "by foreign host http://127.0.0.1:9/bkt/?location=. Retry again." + QUESTION, StorageUnreachable),
    (1, "Fatal: unable to open config file: Stat: unexpected EOF" + QUESTION, StorageUnreachable),
    (1, "Fatal: unable to open config file: Stat: Please reduce your request rate." + QUESTION, StorageThrottled),
    (1, "Fatal: unable to open config file: Stat: We encountered an internal error. Please try again." + QUESTION,
     StorageThrottled),
    (1, "Fatal: unable to open config file: Stat: The request signature we calculated does not match the "
        "signature you provided. Check your key and signing method." + QUESTION, AccessDenied),
    (1, "The AWS Access Key Id you provided does not exist (InvalidAccessKeyId)", AccessDenied),
    # Seen under load: an object id holding "503" made a dead server read as a throttling one.
    (1, "Fatal: client.PutObject: Put \"http://127.0.0.1:38857/gone-9b786ce0/repo/data/e2/e259beebdf10586b7638fd5d6e"
        "46afaf2ddaac9b5b446b9f9a25034141de9691\": dial tcp 127.0.0.1:38857: connect: connection refused",
     StorageUnreachable),
    (1, "Fatal: Get \"http://127.0.0.1:4030/forbidden-files/repo/index/403a\": connection reset by peer",
     StorageUnreachable),
    (1, "Fatal: client.PutObject: 503 Service Unavailable", StorageThrottled),
])
def test_known_failures_are_typed_by_their_cause_not_by_the_repository_question(code, stderr, kind):
    err = classify_failure(code, stderr, URL)
    assert type(err) is kind, err
    assert URL in err.message and err.hint
    assert "Is there a repository" not in str(err)
    assert err.transient == kind.transient


def test_transient_causes_are_marked():
    assert StorageThrottled.transient and StorageUnreachable.transient and RepositoryLocked.transient
    assert not WrongPassword.transient and not RepositoryMissing.transient and not AccessDenied.transient


def test_unknown_failure_is_not_guessed_and_keeps_restics_lines_without_go_frames():
    assert classify_failure(1, "Fatal: something new happened", URL) is None
    assert classify_failure(1, GO_TRACE, URL) is None
    err = restic_error(1, GO_TRACE, args=["cat", "config"], argv=["restic", "cat", "config"], url=URL)
    assert "config file has zero size, invalid repository?" in err.message
    assert "global.go" not in err.message and "main.open" not in err.message and "cobra" not in err.message
    assert err.message.startswith("restic cat exited with code 1")


def test_clean_stderr_drops_the_question_and_its_url():
    assert clean_stderr("Fatal: x" + QUESTION) == "Fatal: x"
    assert cause_line("warning: a\nFatal: the cause\n") == "the cause"


def test_backoff_adds_up_to_the_wait_and_is_capped():
    assert backoff_delays(0) == []
    assert backoff_delays(30) == [2, 4, 8, 16]
    delays = backoff_delays(300)
    assert sum(delays) <= 300 and max(delays) == 30 and delays[:4] == [2, 4, 8, 16]


def test_summary_snapshot_id_reads_the_summary_message_only():
    out = '{"message_type":"status","percent_done":1}\n{"message_type":"summary","snapshot_id":"abc"}\n'
    assert summary_snapshot_id(out) == "abc"
    assert summary_snapshot_id('{"message_type":"status","summary":"no"}\n') is None


def test_restic_time_with_nanoseconds():
    t = parse_restic_time("2026-11-28T02:00:01.123456789+07:00")
    assert t.microsecond == 123456 and t.utcoffset().total_seconds() == 7 * 3600
    assert parse_restic_time("2026-11-28T02:00:01Z").tzinfo == timezone.utc


def test_password_pipe_delivers_once_and_closes():
    pipe = PasswordPipe(Secret("pipe-secret-42"))
    assert pipe.env == {"RESTIC_PASSWORD_FILE": f"/dev/fd/{pipe.read_fd}"}
    assert os.read(pipe.read_fd, 100) == b"pipe-secret-42\n"
    pipe.close()
    assert pipe.read_fd == -1


def test_secrets_are_redacted_once_resolved():
    Secret("redact-me-please")
    assert redact("error: redact-me-please in url") == "error: *** in url"


def test_snapshot_tags():
    snap = Snapshot.from_json({"id": "a" * 64, "time": "2026-11-28T02:00:00Z",
                               "tags": ["drtool", "policy=siak", "run=r1"], "paths": ["/siak.pgdump"]})
    assert snap.tag("policy") == "siak" and snap.tag("stream") is None and snap.short_id == "a" * 8


def _locked_restic(locked: int, lock_wait: float):  # noqa: ANN202
    """Restic's retry loop alone (pure logic): `_run_once` fails with a live lock `locked` times.
    Returns (restic, calls made, sleeps)."""
    from drtool.engine.restic import RepoAccess, Restic

    slept: list[float] = []
    restic = Restic(RepoAccess(URL, Secret("pw")), lock_wait=lock_wait, sleep=slept.append)
    calls = {"run": 0, "unlock": 0}

    def run_once(args, **_kw):  # noqa: ANN001, ANN202
        calls["run"] += 1
        if calls["run"] <= locked:
            raise RepositoryLocked(f"repository {URL} is locked by another restic process (pid 7 on h)")
        return "done"

    restic._run_once = run_once
    restic.unlock_stale = lambda: calls.__setitem__("unlock", calls["unlock"] + 1)
    return restic, calls, slept


def test_a_live_lock_is_waited_for_with_backoff_after_stale_locks_are_removed():
    restic, calls, slept = _locked_restic(locked=4, lock_wait=60)
    assert restic.run(["forget", "x"]) == "done"
    assert calls == {"run": 5, "unlock": 1}          # stale locks removed once, at the first meeting
    assert slept == [1.0, 2.0, 4.0] and restic.lock_waited == 7.0


def test_a_lock_that_outlasts_lock_wait_fails_and_zero_means_no_wait():
    restic, calls, slept = _locked_restic(locked=100, lock_wait=10)
    with pytest.raises(RepositoryLocked):
        restic.run(["check"])
    assert sum(slept) <= 10 and slept == [1.0, 2.0, 4.0]
    restic, calls, slept = _locked_restic(locked=100, lock_wait=0)
    with pytest.raises(RepositoryLocked):
        restic.run(["check"])
    assert slept == [] and calls == {"run": 2, "unlock": 1}


def test_a_cancel_ends_the_wait_for_a_lock():
    import threading

    from drtool.errors import Cancelled

    restic, _calls, slept = _locked_restic(locked=100, lock_wait=600)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        restic.run(["forget"], cancel=cancel)
    assert slept == []
