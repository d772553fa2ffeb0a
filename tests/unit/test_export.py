"""Exports: systemd units (checked by systemd-analyze when present), crontab, schedule show, Prometheus text."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drtool.actions.daemon import build_jobs
from drtool.actions.schedule import crontab, drtool_executable, show
from drtool.actions.systemd import export_systemd
from drtool.cli import main
from drtool.config import load_settings
from drtool.errors import UsageError
from tests.unit.test_daemon_logic import write_setup

POLICY = ("repository: offsite\nschedule: daily 02:00 jitter 10m\nforget_schedule: weekly sun 04:00\n"
          "check: {schedule: every 6h, read_data_subset: 1/4}\n")
PLAYBOOK = "policy: db\nschedule: '30 5 * * 1-5'\n"


@pytest.fixture()
def settings(tmp_path: Path):  # noqa: ANN201
    return load_settings(str(write_setup(tmp_path / "cfg dir", policies={"db": POLICY},
                                         playbooks={"pb": PLAYBOOK})))


def unit_value(text: str, key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", text, re.M)
    assert match, f"{key}= missing in\n{text}"
    return match.group(1)


def test_export_systemd_writes_service_and_timer_per_job(settings, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "units"
    files = export_systemd(settings, out, program="/usr/local/bin/drtool")
    assert sorted(p.name for p in files) == sorted(
        [f"drtool-{job}.{ext}" for job in ("backup-db", "forget-db", "check-db", "drill-pb") for ext in ("service", "timer")]
        + ["drtool-daemon.service", "drtool-failure@.service"])
    timer = (out / "drtool-backup-db.timer").read_text()
    assert unit_value(timer, "OnCalendar") == "*-*-* 02:00:00 UTC"
    assert unit_value(timer, "Persistent") == "true" and unit_value(timer, "RandomizedDelaySec") == "600"
    service = (out / "drtool-check-db.service").read_text()
    # 1/4 stays a rotation: the unit asks for the next quarter, the position is kept in state_dir.
    assert unit_value(service, "ExecStart") == (
        f'/usr/local/bin/drtool --config "{settings.path.resolve()}" check db --rotate')
    assert unit_value(service, "OnFailure") == "drtool-failure@%n.service"
    assert unit_value((out / "drtool-drill-pb.timer").read_text(), "OnCalendar") == "Mon,Tue,Wed,Thu,Fri *-*-* 05:30:00 UTC"


def test_export_refuses_untranslatable_schedule_and_writes_nothing(tmp_path: Path) -> None:
    settings = load_settings(str(write_setup(tmp_path, policies={
        "db": "repository: offsite\nschedule: every 7h\n"})))
    with pytest.raises(UsageError, match="backup:db.*divides a day"):
        export_systemd(settings, tmp_path / "units", program="/bin/true")
    assert not (tmp_path / "units").exists()
    with pytest.raises(UsageError, match="nothing to export"):
        export_systemd(load_settings(str(write_setup(tmp_path / "none", policies={"db": "repository: offsite\n"}))),
                       tmp_path / "units", program="/bin/true")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_exported_units_pass_systemd_analyze_verify(settings, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "units"
    files = export_systemd(settings, out, program=drtool_executable())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on ignored settings (a relative ReadWritePaths=, an unknown key): warnings count too.
    assert proc.returncode == 0 and str(out) not in proc.stderr, proc.stderr
    # The check can fail: a broken calendar spec is refused.
    bad = out / "drtool-backup-db.timer"
    bad.write_text(bad.read_text().replace("*-*-* 02:00:00 UTC", "every full moon"))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("expr", ["daily 02:00", "weekly sun 03:00", "every 6h", "every 15m", "*/20 2 1 * *"])
def test_systemd_agrees_with_schedule_math_on_next_elapse(expr: str) -> None:
    from zoneinfo import ZoneInfo

    from drtool.schedule_math import parse_schedule, to_oncalendar

    schedule = parse_schedule(expr)
    proc = subprocess.run(["systemd-analyze", "calendar", "--iterations=3", to_oncalendar(schedule, "UTC")],
                          capture_output=True, text=True, timeout=30, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    theirs = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
              for m in re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", proc.stdout.split("Next elapse:", 1)[1])][:3]
    now = theirs[0] - timedelta(seconds=1)
    ours = [schedule.next_after(now, ZoneInfo("UTC"))]
    for _ in range(2):
        ours.append(schedule.next_after(ours[-1], ZoneInfo("UTC")))
    assert [o.timestamp() for o in ours] == [t.timestamp() for t in theirs]


def test_crontab_quotes_commands(settings) -> None:  # noqa: ANN001
    text = crontab(settings, program="/opt/dr tool/bin/drtool")
    lines = [line for line in text.splitlines() if not line.startswith(("#", "CRON_TZ"))]
    assert len(lines) == 4
    backup = next(line for line in lines if line.endswith("# backup:db"))
    env_file = shlex.quote(str(settings.path.parent / "drtool.env"))
    assert backup.startswith(f"0 2 * * * set -a && . {env_file} && set +a && '/opt/dr tool/bin/drtool' --config ")
    assert backup.endswith(" || '/opt/dr tool/bin/drtool' --config "
                           f"{shlex.quote(str(settings.path))} schedule on-failure backup:db  # backup:db")
    assert "check db --rotate" in text and "%" not in text.replace("\\%", "")
    with pytest.raises(UsageError, match="crontab"):
        crontab(load_settings(str(write_setup(settings.path.parent.parent / "s",
                                              policies={"db": "repository: offsite\nschedule: every 10s\n"}))),
                program="/bin/drtool")


def test_show_lists_next_runs_soonest_first(settings) -> None:  # noqa: ANN001
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)   # a Wednesday
    planned = show(settings, now)
    assert [p.job for p in planned] == ["check:db", "backup:db", "drill:pb", "forget:db"]
    assert planned[0].next_utc == datetime(2024, 5, 1, 18, 0, tzinfo=timezone.utc)
    assert timedelta(0) <= planned[1].next_utc - datetime(2024, 5, 2, 2, 0, tzinfo=timezone.utc) < timedelta(minutes=10)
    assert len(build_jobs(settings)) == 4


def test_cli_export_needs_exactly_one_target(settings, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    assert main(["--config", str(settings.path), "schedule", "export"]) == 2
    assert "exactly one of --systemd DIR, --cron or --kubernetes DIR" in capsys.readouterr().err
    assert main(["--config", str(settings.path), "schedule", "show"]) == 0
    assert "backup:db" in capsys.readouterr().out


def test_services_carry_secrets_hardening_and_failure_alerts(settings, tmp_path: Path) -> None:  # noqa: ANN001
    env_file = tmp_path / "secrets" / "drtool.env"
    out = tmp_path / "units"
    export_systemd(settings, out, program="/usr/local/bin/drtool", env_file=env_file)
    backup = (out / "drtool-backup-db.service").read_text()
    assert unit_value(backup, "EnvironmentFile") == str(env_file)
    for line in ("ProtectSystem=full", "PrivateTmp=true", "UMask=0077", "Nice=10", "IOSchedulingClass=best-effort",
                 "KillSignal=SIGINT", "Type=oneshot"):
        assert f"\n{line}\n" in backup
    assert f'ReadWritePaths="-{settings.state_dir.resolve()}"\n' in backup        # quoted: "cfg dir" has a space
    daemon = (out / "drtool-daemon.service").read_text()
    assert unit_value(daemon, "ExecStart") == f'/usr/local/bin/drtool --config "{settings.path.resolve()}" daemon'
    assert unit_value(daemon, "ExecReload") == "/bin/kill -HUP $MAINPID" and "WantedBy=multi-user.target" in daemon
    failure = (out / "drtool-failure@.service").read_text()
    assert unit_value(failure, "ExecStart").endswith(" schedule on-failure %i")
    assert "OnFailure" not in failure                                   # never a loop of failure units
    assert unit_value(daemon, "OnFailure") == "drtool-failure@%n.service"


def test_no_env_file_when_no_env_secrets(tmp_path: Path) -> None:
    path = write_setup(tmp_path, policies={"db": "repository: offsite\nschedule: daily 02:00\n"})
    (tmp_path / "pw").write_text("x")
    path.write_text(path.read_text().replace("{env: DRTOOL_TEST_PW}", f"{{file: {tmp_path / 'pw'}}}"))
    files = export_systemd(load_settings(str(path)), tmp_path / "units", program="/bin/true")
    assert not any("EnvironmentFile=" in p.read_text() for p in files)


def test_object_lock_repository_exports_a_verifying_lock_extension_unit(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "drtool.yaml").write_text(f"""
state_dir: {tmp_path / 'state'}
timezone: UTC
repositories:
  vault: {{url: "s3:http://127.0.0.1:9/b/r", password: {{env: X}}, immutable: {{mode: compliance, days: 30}}}}
""")
    (tmp_path / "policies" / "db.yaml").write_text("name: db\nrepository: vault\nsources:\n"
                                                   "  - name: etc\n    files: {paths: [/etc/hostname]}\n")
    settings = load_settings(str(tmp_path / "drtool.yaml"))
    out = tmp_path / "units"
    export_systemd(settings, out, program="/usr/local/bin/drtool")
    service = (out / "drtool-lock-extend-vault.service").read_text()
    assert unit_value(service, "ExecStart") == (
        f"/usr/local/bin/drtool --config {settings.path.resolve()} repo lock-extend vault --verify")
    assert "verify and extend the Object Lock of repository vault" in service
    assert unit_value((out / "drtool-lock-extend-vault.timer").read_text(), "OnCalendar") == "*-*-* 04:30:00 UTC"
