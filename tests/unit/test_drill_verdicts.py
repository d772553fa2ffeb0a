"""Pure drill logic: RTO/RPO verdicts, expectations, status words, report shapes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from drtool.actions.status import verdict
from drtool.actions.drill.context import pg_major
from drtool.actions.drill.model import (
    DrillReport,
    StepResult,
    check_expect,
    drill_passed,
    rpo_achieved,
    rto_achieved,
    target_met,
)
from drtool.actions.drill.verify_step import expected_for
from drtool.report.drill import junit_xml

T0 = datetime(2026, 11, 17, 1, 0, 0, tzinfo=timezone.utc)


def step(name: str, kind: str, start_s: float, duration_s: float, status: str = "passed") -> StepResult:
    return StepResult(name, kind, status, T0 + timedelta(seconds=start_s), duration_s, detail=f"{name} detail")


def test_rto_achieved_runs_from_first_step_to_last_restore_end():
    steps = [step("kit", "kit", 0, 2), step("db", "restore", 2, 10), step("verify", "verify", 12, 3),
             step("scans", "restore", 15, 5), step("sql", "sql", 20, 30)]
    assert rto_achieved(steps) == 20.0


def test_rto_achieved_without_restore_step_is_none():
    assert rto_achieved([step("kit", "kit", 0, 2)]) is None
    assert rto_achieved([]) is None


def test_rto_ignores_skipped_restore():
    steps = [step("db", "restore", 0, 4), StepResult("later", "restore", "skipped")]
    assert rto_achieved(steps) == 4.0


def test_target_met_no_target_is_none_and_never_fails():
    assert target_met(999.0, None) is None
    assert drill_passed([step("db", "restore", 0, 1)], None, None) is True


def test_target_met_breach_and_incomplete_recovery():
    assert target_met(10.0, 30.0) is True
    assert target_met(31.0, 30.0) is False
    assert target_met(None, 30.0) is False
    assert target_met(5.0, 30.0, complete=False) is False


def test_rpo_achieved_is_snapshot_age_at_drill_start():
    assert rpo_achieved(T0 - timedelta(hours=2), T0) == 7200.0
    assert rpo_achieved(None, T0) is None


def test_drill_fails_on_any_failed_or_timed_out_step_or_breach():
    ok = step("db", "restore", 0, 1)
    assert not drill_passed([ok, step("v", "verify", 1, 1, "failed")], True, True)
    assert not drill_passed([ok, step("v", "verify", 1, 1, "timed_out")], True, True)
    assert not drill_passed([ok], False, True)
    assert not drill_passed([ok], True, False)
    assert not drill_passed([], None, None)


def test_report_dict_contract_and_failures_name_the_step():
    report = DrillReport("id1", "siak-drill", "siak", T0, rto_target_s=10.0, rpo_target_s=3600.0,
                         snapshot={"id": "abc", "time": (T0 - timedelta(minutes=5)).isoformat()})
    report.steps = [step("restore database", "restore", 0, 12), step("residents present", "sql", 12, 1, "failed"),
                    StepResult("restore scans", "restore", "skipped", detail="skipped: stop")]
    data = json.loads(json.dumps(report.to_dict()))
    assert {"playbook", "policy", "snapshot", "passed", "rto", "rpo", "steps"} <= set(data)
    assert data["passed"] is False
    assert data["rpo"] == {"target_s": 3600.0, "achieved_s": 300.0, "met": True}
    assert data["rto"]["met"] is False      # a restore was skipped: recovery incomplete
    assert set(data["steps"][0]) >= {"name", "kind", "status", "started_at", "duration_s", "detail"}
    assert any("residents present" in f for f in data["failures"])


def test_report_rto_breach_is_explained():
    report = DrillReport("id2", "p", "siak", T0, rto_target_s=5.0)
    report.steps = [step("restore database", "restore", 0, 12)]
    assert report.rto_met is False and not report.passed
    assert any(f.startswith("RTO breached: 12.0s achieved, target 5.0s") for f in report.failures)


def test_check_expect_min_max_equals_regex():
    assert check_expect("5", minimum=1) == []
    assert check_expect("0", minimum=1) == ["got 0, expected at least 1"]
    assert check_expect("12", maximum=10) == ["got 12, expected at most 10"]
    assert check_expect("abc", minimum=1) == ["got 'abc', expected a number"]
    assert check_expect("42", equals=42) == []
    assert check_expect("42.0", equals=42) == []
    assert check_expect("siak", equals="siak") == []
    assert check_expect("t", equals=True) == []
    assert check_expect(None, equals="x") == ["got NULL/no row, expected 'x'"]
    assert check_expect("PLG-001", regex=r"^PLG-\d+$") == []
    assert check_expect("JKT-001", regex=r"^PLG") != []


def test_pg_major_from_server_version_num():
    assert pg_major({"server_version_num": 150004}) == 15
    assert pg_major({"server_version_num": 90624}) == 9
    assert pg_major({}) is None


def test_expected_for_maps_a_renamed_single_database():
    fp = {"databases": {"siak": {"public.penduduk": 3}}}
    assert expected_for(fp, ["siak_copy"]) == {"databases": {"siak_copy": {"public.penduduk": 3}}}
    fp2 = {"databases": {"a": {"t": 1}, "b": {"t": 2}}}
    assert expected_for(fp2, ["a", "b"]) == fp2


def test_status_verdict_order():
    good = {"passed": True, "rto_met": True}
    assert verdict(backup_age_s=10, rpo_s=60, repo_error=False, drill=good) == "ok"
    assert verdict(backup_age_s=100, rpo_s=60, repo_error=False, drill=good) == "rpo-breach"
    assert verdict(backup_age_s=None, rpo_s=60, repo_error=False, drill=good) == "rpo-breach"
    assert verdict(backup_age_s=10, rpo_s=60, repo_error=True, drill=good) == "rpo-breach"
    assert verdict(backup_age_s=10, rpo_s=None, repo_error=False, drill=None) == "never-drilled"
    assert verdict(backup_age_s=10, rpo_s=60, repo_error=False, drill={"passed": False, "rto_met": False}) == "rto-breach"
    assert verdict(backup_age_s=10, rpo_s=60, repo_error=False, drill={"passed": False, "rto_met": True}) == "drill-failed"


def test_junit_has_a_case_per_step_and_target():
    report = DrillReport("id3", "siak-drill", "siak", T0, rto_target_s=5.0)
    report.steps = [step("restore database", "restore", 0, 12), step("check", "sql", 12, 1, "timed_out"),
                    StepResult("after", "sql", "skipped", detail="skipped: stop")]
    root = ET.fromstring(junit_xml(report.to_dict()))
    suite = root.find("testsuite")
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names == ["restore database", "check", "after", "RTO target"]
    assert suite.get("failures") == "2" and suite.get("skipped") == "1"
