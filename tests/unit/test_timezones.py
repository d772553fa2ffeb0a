"""One effective time zone for show, daemon and exports; bad zones are clear errors, never tracebacks."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from drtool.actions.daemon import Daemon
from drtool.actions.schedule import crontab, show
from drtool.actions.systemd import all_units
from drtool.cli import main
from drtool.config import load_settings
from drtool.errors import ConfigError, UsageError
from drtool.timezones import ZoneError, effective_zone
from tests.unit.test_daemon_logic import Events, Fakes, write_setup

POLICY = {"db": "repository: offsite\nschedule: daily 02:00\n"}
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def setup_without_zone(root: Path, zone_line: str = "") -> Path:
    path = write_setup(root, policies=POLICY)
    path.write_text(path.read_text().replace("timezone: UTC\n", zone_line))
    return path


@pytest.mark.parametrize("tz, name, export", [
    ("Asia/Jakarta", "Asia/Jakarta", "Asia/Jakarta"),
    (":Asia/Jakarta", "Asia/Jakarta", "Asia/Jakarta"),
    (":/usr/share/zoneinfo/Asia/Jakarta", "Asia/Jakarta", "Asia/Jakarta"),
    ("WIB-7", "WIB-7", "Etc/GMT-7"),
    ("UTC0", "UTC0", "UTC"),
    ("", "UTC", "UTC"),                                  # glibc: set but empty is UTC
    ("EST5EDT,M3.2.0,M11.1.0", "EST5EDT,M3.2.0,M11.1.0", None),
])
def test_tz_variable_forms(tz: str, name: str, export: str | None) -> None:
    zone = effective_zone(None, {"TZ": tz})
    assert (zone.name, zone.export_name) == (name, export)
    assert zone.source.startswith("TZ")


def test_posix_rules_keep_their_offsets_and_daylight_saving() -> None:
    wib = effective_zone(None, {"TZ": "WIB-7"}).tz
    assert NOW.astimezone(wib).utcoffset().total_seconds() == 7 * 3600
    us = effective_zone(None, {"TZ": "EST5EDT,M3.2.0,M11.1.0"}).tz
    assert datetime(2024, 7, 1, tzinfo=timezone.utc).astimezone(us).utcoffset().total_seconds() == -4 * 3600
    assert datetime(2024, 1, 1, tzinfo=timezone.utc).astimezone(us).utcoffset().total_seconds() == -5 * 3600


@pytest.mark.parametrize("tz", ["Asia/Jakartaa", "garbage!", ":/etc/passwd", "../../etc/shadow", "WIB-99x"])
def test_bad_tz_values_are_zone_errors(tz: str) -> None:
    with pytest.raises(ZoneError):
        effective_zone(None, {"TZ": tz})


def test_order_config_then_tz_then_system(tmp_path: Path) -> None:
    assert effective_zone("Asia/Makassar", {"TZ": "Asia/Jakarta"}).source == "drtool.yaml timezone:"
    assert effective_zone(None, {"TZ": "Asia/Jakarta"}).source == "TZ=Asia/Jakarta"
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Asia/Jayapura")
    zone = effective_zone(None, {}, localtime=str(link))
    assert (zone.name, zone.source) == ("Asia/Jayapura", str(link))
    assert effective_zone(None, {}, localtime=str(tmp_path / "none")).name == "UTC"


def test_show_and_every_export_use_tz_when_config_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TZ", "Asia/Jakarta")
    settings = load_settings(str(setup_without_zone(tmp_path)))
    [planned] = show(settings, NOW)
    assert planned.next_utc == datetime(2024, 5, 1, 19, 0, tzinfo=timezone.utc)       # 02:00 WIB
    assert (planned.zone, planned.zone_source) == ("Asia/Jakarta", "TZ=Asia/Jakarta")
    timer = all_units(settings, program="/bin/true")["drtool-backup-db.timer"]
    assert "OnCalendar=*-*-* 02:00:00 Asia/Jakarta\n" in timer
    assert "CRON_TZ=Asia/Jakarta\n" in crontab(settings, program="/bin/true")
    assert main(["-c", str(settings.path), "schedule", "show"]) == 0
    assert "times in Asia/Jakarta (from TZ=Asia/Jakarta)" in capsys.readouterr().out


def test_posix_tz_exports_as_etc_name_or_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "WIB-7")
    settings = load_settings(str(setup_without_zone(tmp_path)))
    assert "OnCalendar=*-*-* 02:00:00 Etc/GMT-7\n" in all_units(settings, program="/bin/true")["drtool-backup-db.timer"]
    assert "CRON_TZ=Etc/GMT-7\n" in crontab(settings, program="/bin/true")
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    assert show(settings, NOW)[0].next_utc == datetime(2024, 5, 2, 6, 0, tzinfo=timezone.utc)   # 02:00 EDT
    with pytest.raises(UsageError, match="POSIX rule.*timezone: Area/City"):
        all_units(settings, program="/bin/true")
    with pytest.raises(UsageError, match="POSIX rule"):
        crontab(settings, program="/bin/true")


def test_unknown_config_zone_rejected_with_position_and_suggestion(tmp_path: Path) -> None:
    path = setup_without_zone(tmp_path, "timezone: Asia/Jakartaa\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("timezone:"))
    assert f"drtool.yaml:{line}:1: at 'timezone': unknown time zone 'Asia/Jakartaa'; did you mean Asia/Jakarta" \
        in str(info.value)


@pytest.mark.parametrize("tz", ["Asia/Jakartaa", ":Nowhere/City", "WIB-7x"])
def test_cli_never_tracebacks_on_bad_tz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], tz: str) -> None:
    monkeypatch.setenv("TZ", tz)
    path = setup_without_zone(tmp_path)
    for args in (["schedule", "show"], ["schedule", "export", "--cron"]):
        assert main(["-c", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert "TZ=" in err and "Traceback" not in err


def test_daemon_reload_with_bad_zone_keeps_the_old_configuration(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    path = setup_without_zone(tmp_path, "timezone: Asia/Jakarta\n")
    daemon = Daemon(load_settings(str(path)), dispatch=Fakes().table(), notifier=Events(),  # type: ignore[arg-type]
                    clock=lambda: NOW, snapshot_time=lambda s, p: None, loader=lambda: load_settings(str(path)))
    path.write_text(path.read_text().replace("timezone: Asia/Jakarta", "timezone: Asia/Jakartaa"))
    assert daemon.reload() is False
    assert daemon.tz.key == "Asia/Jakarta"
    # A bad TZ with no timezone: in the file is refused the same way (it used to escape as a KeyError).
    path.write_text(path.read_text().replace("timezone: Asia/Jakartaa\n", ""))
    monkeypatch.setenv("TZ", "Asia/Jakartaa")
    assert daemon.reload() is False
    assert daemon.tz.key == "Asia/Jakarta"
    monkeypatch.setenv("TZ", "Asia/Makassar")
    assert daemon.reload() is True and daemon.tz.key == "Asia/Makassar"

