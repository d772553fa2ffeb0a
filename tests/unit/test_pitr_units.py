"""Timers-mode sites ship WAL too: one long-running `drtool wal-ship POLICY` service per policy with
PITR sources, enabled with the timers, disabled when the daemon (which ships itself) is installed,
reported by the failure unit as wal_ship_failed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from drtool.actions.schedule import drtool_executable
from drtool.actions.schedule_install import plan_install
from drtool.actions.systemd import all_units, export_systemd
from drtool.actions.unit_failure import parse_unit
from drtool.config import load_settings

UNIT = "drtool-wal-ship-siak.service"


@pytest.fixture()
def settings(tmp_path: Path):  # noqa: ANN201
    (tmp_path / "policies").mkdir()
    (tmp_path / "drtool.yaml").write_text(f"state_dir: {tmp_path / 'state'}\ntimezone: UTC\nrepositories:\n"
                                          "  offsite: {url: /srv/offsite, password: {env: DRTOOL_TEST_PW}}\n")
    (tmp_path / "policies" / "siak.yaml").write_text(
        "name: siak\nrepository: offsite\nschedule: daily 02:00\nsources:\n  - name: db\n"
        f"    postgres: {{database: siak, pitr: {{wal_ship: 30s, spool_dir: {tmp_path / 'spool'}}}}}\n")
    return load_settings(str(tmp_path / "drtool.yaml"))


def test_a_pitr_policy_gets_a_wal_ship_service(settings, tmp_path: Path) -> None:  # noqa: ANN001
    units = all_units(settings, program="/usr/local/bin/drtool")
    text = units[UNIT]
    assert re.search(r"^ExecStart=/usr/local/bin/drtool --config \S+ wal-ship siak$", text, re.M), text
    assert "Restart=always" in text and "KillSignal=SIGTERM" in text and "OnFailure=drtool-failure@%n.service" in text
    assert re.search(rf'^ReadWritePaths="?-{tmp_path / "spool"}"?$', text, re.M)   # a spool outside state_dir
    timers = plan_install(units, [], Path("/etc/systemd/system"))
    assert any(s.argv[:3] == ("systemctl", "enable", "--now") and UNIT in s.argv for s in timers)
    daemon = plan_install(units, [], Path("/etc/systemd/system"), daemon=True)
    assert any(s.argv[:3] == ("systemctl", "disable", "--now") and UNIT in s.argv for s in daemon)
    assert not any(s.argv[:2] == ("systemctl", "enable") and UNIT in s.argv for s in daemon)
    failed = parse_unit(UNIT)
    assert (failed.kind, failed.name, failed.event_kind) == ("wal-ship", "siak", "wal_ship_failed")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_wal_ship_service_passes_systemd_analyze_verify(settings, tmp_path: Path) -> None:  # noqa: ANN001
    files = export_systemd(settings, tmp_path / "units", program=drtool_executable())
    unit = next(f for f in files if f.name == UNIT)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and str(tmp_path / "units") not in proc.stderr, proc.stderr
