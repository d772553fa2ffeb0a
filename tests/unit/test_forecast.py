"""The restore-time forecast on synthetic histories: linear growth, step change, noise, too little."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from drtool.fitting import fit_line, last_regime
from drtool.forecast import (
    MIN_DRILLS, DrillPoint, SizePoint, drill_point, fit_growth, fit_restore, forecast, phase_category, size_series,
)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
GIB = 2**30


def drill(days_ago: float, gib: float, fixed_s: float = 60.0, s_per_gib: float = 120.0, noise: float = 0.0,
          rng: random.Random | None = None) -> DrillPoint:
    transfer = s_per_gib * gib * 0.6
    index = s_per_gib * gib * 0.4
    extra = rng.gauss(0, noise) if rng else 0.0
    phases = {"startup": fixed_s, "transfer": transfer + extra, "index": index}
    return DrillPoint(NOW - timedelta(days=days_ago), fixed_s + transfer + index + extra, int(gib * GIB), phases)


def sizes_linear(gib_now: float, gib_per_day: float, days: int = 60) -> list[SizePoint]:
    return [SizePoint(NOW - timedelta(days=d), int((gib_now - gib_per_day * d) * GIB)) for d in range(days, -1, -1)]


def test_fit_line_exact_on_a_line():
    line = fit_line([0, 1, 2, 3], [1, 3, 5, 7])
    assert line.slope == pytest.approx(2) and line.intercept == pytest.approx(1) and line.resid_sd == pytest.approx(0)


def test_phase_category_names_used_by_restore_steps():
    assert phase_category("download+decrypt+write+verify (restic restore --verify)") == "transfer"
    assert phase_category("download+decrypt") == "transfer"
    assert phase_category("download+load+index build (streamed)") == "index"
    assert phase_category("index build") == "index"
    assert phase_category("load") == "load" and phase_category("load siak") == "load"
    assert phase_category("start scratch instance") == "startup"
    assert phase_category("read fingerprint") == "startup" and phase_category("globals") == "startup"
    assert phase_category("integrity check") == "verify"


def test_too_few_drills_is_honest():
    result = forecast("siak", 600, [drill(10, 1), drill(5, 1)], sizes_linear(1, 0.01), NOW)
    assert result.status == "insufficient" and result.predictions == []
    assert f"needs >= {MIN_DRILLS} drills" in result.message and "have 2" in result.message
    assert result.breach_at is None


def test_linear_growth_predicts_breach_date():
    # 60 s fixed + 120 s/GiB; data 10 GiB now growing 0.05 GiB/day; target 29 min.
    drills = [drill(d, 10 - 0.05 * d) for d in (60, 40, 20, 0)]
    result = forecast("siak", 1740, drills, sizes_linear(10, 0.05), NOW)
    now = result.prediction(0)
    assert now.rto_s == pytest.approx(60 + 120 * 10, rel=0.02)
    assert result.prediction(365).rto_s == pytest.approx(60 + 120 * (10 + 0.05 * 365), rel=0.02)
    # 60 + 120 * (10 + 0.05 d) = 1740  ->  d = 80
    assert result.breach_at is not None
    assert abs((result.breach_at - NOW).days - 80) <= 2
    assert result.status == "breach-forecast"          # 80 days is within the default 90-day horizon
    assert forecast("siak", 1740, drills, sizes_linear(10, 0.05), NOW, alert_days=30).status == "ok"
    assert result.breach_at_pessimistic is not None and result.breach_at_pessimistic <= result.breach_at
    assert result.dominant_phase == "transfer" and "bucket" in result.advice


def test_no_growth_no_breach_and_regression_on_varied_sizes():
    drills = [drill(30, 4), drill(20, 8), drill(10, 2), drill(0, 6)]
    result = forecast("siak", 3600, drills, [SizePoint(NOW - timedelta(days=d), 6 * GIB) for d in (20, 10, 0)], NOW)
    assert result.model.method == "regression"
    assert result.model.fixed_s == pytest.approx(60, abs=1) and result.model.s_per_byte * GIB == pytest.approx(120)
    assert result.breach_at is None and result.status == "ok"
    assert result.prediction(365).rto_s == pytest.approx(result.prediction(0).rto_s)


def test_step_change_in_restore_time_uses_drills_after_it():
    # Same data size; the repository moved to a farther bucket 30 days ago: transfer took 3x.
    before = [drill(d, 5) for d in (90, 80, 70, 60)]
    after = [drill(d, 5, s_per_gib=360) for d in (30, 20, 10, 0)]
    result = forecast("siak", 3600, before + after, [], NOW)
    assert result.model.since == after[0].at and result.model.n == 4
    assert result.prediction(0).rto_s == pytest.approx(60 + 360 * 5, rel=0.01)
    assert any("step change in restore time" in n for n in result.notes)


def test_step_change_in_data_size_fits_growth_after_it():
    # A bulk import tripled the data 20 days ago; flat before and after.
    sizes = [SizePoint(NOW - timedelta(days=d), (2 if d > 20 else 6) * GIB) for d in range(60, -1, -1)]
    growth = fit_growth(sizes, NOW, 1.0)
    assert growth.since is not None and growth.bytes_now == pytest.approx(6 * GIB, rel=0.01)
    assert abs(growth.bytes_per_day) < 0.001 * GIB
    assert last_regime([float(i) for i in range(10)], [1.0] * 10) == 0


def test_noisy_history_widens_the_band_and_keeps_the_centre():
    rng = random.Random(7)
    clean = forecast("siak", 10_000, [drill(d, 10 - 0.02 * d) for d in range(0, 100, 10)], sizes_linear(10, 0.02), NOW)
    noisy = forecast("siak", 10_000, [drill(d, 10 - 0.02 * d, noise=120, rng=rng) for d in range(0, 100, 10)],
                     sizes_linear(10, 0.02), NOW)
    c90, n90 = clean.prediction(90), noisy.prediction(90)
    assert n90.rto_s == pytest.approx(c90.rto_s, rel=0.15)
    assert (n90.high_s - n90.low_s) > 5 * max(1.0, c90.high_s - c90.low_s)
    assert n90.low_s <= n90.rto_s <= n90.high_s
    # The band grows with the horizon.
    assert (noisy.prediction(365).high_s - noisy.prediction(365).low_s) >= (n90.high_s - n90.low_s)


def test_already_breached_now():
    result = forecast("siak", 300, [drill(d, 10) for d in (20, 10, 0)], [], NOW)
    assert result.status == "breached" and result.breach_at == NOW


def test_drill_point_and_size_series_read_real_report_shapes():
    report = {
        "started_at": "2026-11-30T02:00:00+00:00", "playbook": "siak-drill", "rto": {"achieved_s": 100.0},
        "snapshot": {"sources": {"siak-db": {}, "scans": {}}},
        "steps": [
            {"kind": "kit", "status": "passed", "duration_s": 3.0},
            {"kind": "restore", "status": "passed", "bytes": 1000, "phases": [
                {"name": "read fingerprint", "duration_s": 1.0, "bytes": None},
                {"name": "start scratch instance", "duration_s": 4.0, "bytes": None},
                {"name": "download+decrypt", "duration_s": 30.0, "bytes": 1000},
                {"name": "load", "duration_s": 20.0, "bytes": 1000},
                {"name": "index build", "duration_s": 25.0, "bytes": None}]},
            {"kind": "restore", "status": "passed", "files": 3, "bytes": 500, "phases": [
                {"name": "download+decrypt+write+verify (restic restore --verify)", "duration_s": 10.0, "bytes": 500}]},
        ]}
    point = drill_point(report)
    assert point.restored_bytes == 1500 and point.rto_s == 100.0 and point.sources == ("scans", "siak-db")
    assert point.phases["transfer"] == 40.0 and point.phases["index"] == 25.0 and point.phases["startup"] == 5.0
    assert point.phases["other"] == pytest.approx(10.0)            # 100 - 90 s of restore phases
    failed = {**report, "steps": [{**report["steps"][1], "status": "failed"}]}
    assert drill_point(failed) is None
    runs = [
        {"status": "success", "started_at": "2026-11-29T02:00:00+00:00", "details": {"sources": {
            "siak-db": {"status": "success", "streams": {"siak.pgdump": {"bytes_in": 900}, "globals.sql": {"bytes_in": 10}}},
            "scans": {"status": "success", "bytes": 480}}}},
        {"status": "failed", "started_at": "2026-11-30T02:00:00+00:00", "details": {}},
        {"status": "success", "started_at": "2026-11-28T02:00:00+00:00", "details": {"sources": {
            "scans": {"status": "success", "bytes": 470}}}},
    ]
    series = size_series(runs, ("scans", "siak-db"))
    assert [p.bytes for p in series] == [1390]                      # the run without siak-db is left out
    assert [p.bytes for p in size_series(runs, ("scans",))] == [470, 480]


def test_fit_restore_phase_split_when_size_is_constant():
    model = fit_restore([drill(d, 5) for d in (20, 10, 0)])
    assert model.method == "phase split"
    assert model.fixed_s == pytest.approx(60) and model.s_per_byte * GIB == pytest.approx(120)
    assert model.breakdown(5 * GIB)["transfer"] == pytest.approx(360)


def test_alert_for_names_the_breach_and_what_would_help():
    from drtool.actions.forecast import alert_for

    drills = [drill(d, 10 - 0.05 * d) for d in (60, 40, 20, 0)]
    alert = alert_for(forecast("siak", 1740, drills, sizes_linear(10, 0.05), NOW))
    assert alert is not None and alert.status == "breach-forecast" and alert.policy == "siak"
    assert alert.breach_at is not None and alert.dominant_phase == "transfer"
    assert alert.message.startswith("siak: RTO forecast to exceed the target on ") and "bucket" in alert.message
    assert alert.to_dict()["breach_at"] == alert.breach_at.isoformat()
    assert alert_for(forecast("siak", 1740, drills, sizes_linear(10, 0.05), NOW, alert_days=30)) is None
    assert alert_for(forecast("siak", 1740, drills[:2], [], NOW)) is None          # insufficient: no alert
