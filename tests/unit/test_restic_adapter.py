"""restic adapter, pure parts: argv building, error mapping, time parsing, the password pipe."""

from __future__ import annotations

import os
from datetime import timezone

import pytest

from drtool.engine.pipeline import backup_args, stdin_backup_args
from drtool.engine.restic import PasswordPipe, Snapshot, classify_failure, parse_restic_time
from drtool.secrets import Secret, redact

URL = "s3:http://127.0.0.1:9000/b/p"


def test_stdin_backup_argv_is_exact():
    assert stdin_backup_args("siak.pgdump", ["drtool", "policy=siak"], "records-01") == [
        "backup", "--json", "--host", "records-01", "--tag", "drtool", "--tag", "policy=siak",
        "--stdin", "--stdin-filename", "siak.pgdump"]
    assert "--stdin" not in backup_args(["drtool"], "h")


@pytest.mark.parametrize("code, stderr, expect", [
    (12, "", "wrong password"),
    (1, "Fatal: wrong password or no key found\n", "wrong password"),
    (10, "", "no restic repository"),
    (1, "Fatal: unable to open config file: Stat: The specified key does not exist.\n"
        "Is there a repository at the following location?\n", "no restic repository"),
    (11, "", "locked"),
    (1, "unable to create lock in backend: repository is already locked by PID 7", "locked"),
    (1, "Fatal: create repository failed: dial tcp 127.0.0.1:1: connect: connection refused", "cannot reach"),
    (1, "The AWS Access Key Id you provided does not exist (InvalidAccessKeyId)", "rejected the credentials"),
])
def test_known_failures_are_mapped(code, stderr, expect):
    err = classify_failure(code, stderr, URL)
    assert err is not None and expect in err.message and URL in err.message
    assert err.hint


def test_unknown_failure_is_not_guessed():
    assert classify_failure(1, "Fatal: something new happened", URL) is None


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
