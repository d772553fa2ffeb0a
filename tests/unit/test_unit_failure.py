"""`schedule on-failure UNIT`: which job failed, and the cause from the catalog when one was recorded."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from drtool.actions.unit_failure import FailedUnit, _last_error, parse_unit, report_failure
from drtool.catalog import Catalog, RunRecord
from drtool.cli import main
from drtool.config import load_settings
from drtool.errors import UsageError
from tests.unit.test_daemon_logic import write_setup


@pytest.mark.parametrize("text, expected", [
    ("drtool-backup-siak.service", FailedUnit("drtool-backup-siak.service", "backup", "siak")),
    ("drtool-drill-siak-drill.service", FailedUnit("drtool-drill-siak-drill.service", "drill", "siak-drill")),
    ("drtool-daemon.service", FailedUnit("drtool-daemon.service", "daemon", None)),
    ("check:db.v2", FailedUnit("check:db.v2", "check", "db.v2")),
    ("drtool-lock-extend-offsite.service", FailedUnit("drtool-lock-extend-offsite.service", "lock-extend", "offsite")),
    ("lock-extend:offsite", FailedUnit("lock-extend:offsite", "lock-extend", "offsite")),
])
def test_parse_unit(text: str, expected: FailedUnit) -> None:
    assert parse_unit(text) == expected


def test_parse_unit_refuses_others() -> None:
    with pytest.raises(UsageError, match="not a drtool unit"):
        parse_unit("sshd.service")


def test_cause_comes_from_the_last_failed_run(tmp_path: Path) -> None:
    settings = load_settings(str(write_setup(tmp_path)))
    failed = parse_unit("drtool-backup-db.service")
    assert _last_error(settings, failed) is None
    run = RunRecord("r1", "db", "backup", "running", datetime(2024, 5, 1, tzinfo=timezone.utc))
    Catalog(settings.state_dir).record(run.finish("failed", "pg_dump exited with code 1:\n    connection refused"))
    assert _last_error(settings, failed) == "pg_dump exited with code 1:"


def test_no_channel_configured_is_said_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_setup(tmp_path)
    code, line = report_failure(str(path), "drtool-daemon.service")
    assert code == 1 and "no notification channel is configured for unit_failed" in line
    assert main(["-c", str(path), "schedule", "on-failure", "backup:db"]) == 1
    assert "drtool: backup:db failed" in capsys.readouterr().err


def test_a_failure_its_run_already_alerted_is_not_alerted_twice(tmp_path: Path) -> None:
    from drtool.catalog import utcnow

    path = write_setup(tmp_path)
    settings = load_settings(str(path))
    run = RunRecord("r2", "db", "backup", "running", utcnow()).finish("failed", "S3 unreachable")
    run.details["notifications"] = [{"event": "backup_failed", "channel": "webhook", "ok": True}]
    Catalog(settings.state_dir).record(run)
    code, line = report_failure(str(path), "drtool-backup-db.service")
    assert code == 0 and "run r2 already recorded and notified it" in line
    # an alert that did not go out is sent again by the unit
    run.details["notifications"][0]["ok"] = False
    Catalog(settings.state_dir).record(run)
    code, line = report_failure(str(path), "drtool-backup-db.service")
    assert code == 1 and "no notification channel is configured" in line
