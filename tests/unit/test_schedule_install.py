"""`schedule install` / `uninstall`: the exact steps planned, carried out with a recording systemctl.

systemd cannot run as PID 1 here, so `--systemctl` points at a script that records its
argv; the unit files are real files in a temp unit directory, checked by systemd-analyze
in test_export.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from drtool.actions.schedule_install import install, plan_install, uninstall
from drtool.cli import main
from drtool.config import load_settings
from drtool.errors import UsageError
from tests.unit.test_daemon_logic import write_setup

POLICIES = {"db": "repository: offsite\nschedule: daily 02:00\n", "web": "repository: offsite\nschedule: hourly\n"}
UNITS = ["drtool-backup-db.service", "drtool-backup-db.timer", "drtool-backup-web.service", "drtool-backup-web.timer",
         "drtool-daemon.service", "drtool-failure@.service"]


@pytest.fixture()
def systemctl(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "systemctl.log"
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\necho \"$*\" >> {shlex.quote(str(log))}\n")
    script.chmod(0o755)
    return str(script), log


def ready(tmp_path: Path, policies: dict[str, str] = POLICIES):  # noqa: ANN201
    settings = load_settings(str(write_setup(tmp_path / "cfg", policies=policies)))
    env_file = tmp_path / "drtool.env"
    env_file.write_text("DRTOOL_TEST_PW='...'\n")
    env_file.chmod(0o600)
    return settings, env_file


def test_plan_of_a_fresh_install_is_exact(tmp_path: Path) -> None:
    units = {name: "text" for name in UNITS}
    steps = plan_install(units, [], Path("/etc/systemd/system"))
    assert [s.describe() for s in steps] == [f"write  /etc/systemd/system/{u}" for u in sorted(UNITS)] + [
        "run    systemctl daemon-reload",
        "run    systemctl disable --now drtool-daemon.service",
        "run    systemctl enable --now drtool-backup-db.timer drtool-backup-web.timer"]


def test_plan_removes_stale_units_and_daemon_mode_disables_timers() -> None:
    units = {name: "text" for name in UNITS if "web" not in name}
    steps = plan_install(units, UNITS, Path("/u"), daemon=True)
    assert [s.describe() for s in steps] == [
        "run    systemctl disable --now drtool-backup-web.timer",
        "remove /u/drtool-backup-web.service", "remove /u/drtool-backup-web.timer",
        *[f"write  /u/{u}" for u in sorted(units)],
        "run    systemctl daemon-reload",
        "run    systemctl disable --now drtool-backup-db.timer",
        "run    systemctl enable --now drtool-daemon.service"]


def test_install_then_uninstall_with_a_recording_systemctl(tmp_path: Path, systemctl: tuple[str, Path]) -> None:
    program, log = systemctl
    settings, env_file = ready(tmp_path)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / "drtool-backup-mine.service").write_text("[Service]\nExecStart=/bin/true\n")   # not ours: kept
    install(settings, unit_dir=unit_dir, systemctl=program, program="/bin/true", env_file=env_file)
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted([*UNITS, "drtool-backup-mine.service"])
    assert log.read_text().splitlines() == ["daemon-reload", "disable --now drtool-daemon.service",
                                            "enable --now drtool-backup-db.timer drtool-backup-web.timer"]
    # The policy `web` goes away: a new install removes its units.
    (tmp_path / "cfg" / "policies" / "web.yaml").unlink()
    settings, env_file = ready(tmp_path, {"db": POLICIES["db"]})
    install(settings, unit_dir=unit_dir, systemctl=program, program="/bin/true", env_file=env_file)
    assert not (unit_dir / "drtool-backup-web.timer").exists()
    assert log.read_text().splitlines()[3] == "disable --now drtool-backup-web.timer"
    log.unlink()
    uninstall(unit_dir=unit_dir, systemctl=program)
    assert [p.name for p in unit_dir.iterdir()] == ["drtool-backup-mine.service"]
    assert log.read_text().splitlines() == ["disable --now drtool-backup-db.timer drtool-daemon.service",
                                            "daemon-reload"]


def test_install_refuses_when_the_env_file_is_not_ready_and_touches_nothing(tmp_path: Path,
                                                                            systemctl: tuple[str, Path]) -> None:
    program, log = systemctl
    settings, env_file = ready(tmp_path)
    unit_dir = tmp_path / "units"
    for text, mode, expected in (("DRTOOL_TEST_PW='...'\n", 0o644, "readable by others (mode 0644)"),
                                 ("OTHER=1\n", 0o600, "does not define DRTOOL_TEST_PW")):
        env_file.write_text(text)
        env_file.chmod(mode)
        with pytest.raises(UsageError, match=r"nothing was installed") as info:
            install(settings, unit_dir=unit_dir, systemctl=program, program="/bin/true", env_file=env_file)
        assert expected in str(info.value) and "install -m 600" in str(info.value)
    env_file.unlink()
    with pytest.raises(UsageError, match="cannot be read"):
        install(settings, unit_dir=unit_dir, systemctl=program, program="/bin/true", env_file=env_file)
    assert not unit_dir.exists() and not log.exists()


def test_cli_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, systemctl: tuple[str, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    program, log = systemctl
    settings, env_file = ready(tmp_path)
    unit_dir = tmp_path / "units"
    assert main(["-c", str(settings.path), "schedule", "install", "--unit-dir", str(unit_dir), "--systemctl", program,
                 "--env-file", str(env_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would write  {unit_dir}/drtool-backup-db.timer" in out
    assert f"would run    {program} enable --now drtool-backup-db.timer drtool-backup-web.timer" in out
    assert not unit_dir.exists() and not log.exists()
    assert main(["schedule", "uninstall", "--unit-dir", str(unit_dir), "--dry-run"]) == 0
    assert f"no drtool units in {unit_dir}" in capsys.readouterr().out


def test_check_env_names_missing_variables_without_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings, env_file = ready(tmp_path)
    assert main(["-c", str(settings.path), "schedule", "check-env", "--env-file", str(env_file)]) == 0
    assert "ok (DRTOOL_TEST_PW)" in capsys.readouterr().out
    env_file.write_text("# nothing yet\n")
    assert main(["-c", str(settings.path), "schedule", "check-env", "--env-file", str(env_file)]) == 2
    assert "does not define DRTOOL_TEST_PW" in capsys.readouterr().err


def test_unwritable_unit_dir_is_one_clear_error(tmp_path: Path, systemctl: tuple[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    program, _log = systemctl
    settings, env_file = ready(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["-c", str(settings.path), "schedule", "install", "--unit-dir", str(blocker / "units"),
                 "--systemctl", program, "--env-file", str(env_file)]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
