"""Real drills -> HTML drill report and dashboard, opened in headless Chromium (no network but loopback).

One module-scoped setup: a files policy on rclone S3, three real drills (the forecast needs three),
then each test reads what those drills left: the catalog, the signed records offsite, the pages.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.support.browser import open_page, outside_requests
from tests.support.drtool_env import data_root, make_env

DRILLS = 3


class Elements(HTMLParser):
    """Every element's tag, attributes and direct text, in document order (enough for DOM asserts)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[dict] = []
        self._stack: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        node = {"tag": tag, "attrs": dict(attrs), "text": "", "path": [n["tag"] for n in self._stack]}
        self.found.append(node)
        self._stack.append(node)

    def handle_endtag(self, tag):  # noqa: ANN001
        while self._stack and self._stack.pop()["tag"] != tag:
            pass

    def handle_data(self, data):  # noqa: ANN001
        if self._stack:
            self._stack[-1]["text"] += data

    def select(self, tag: str, **attrs: str) -> list[dict]:
        return [n for n in self.found if n["tag"] == tag and all(n["attrs"].get(k) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def drilled(s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    bucket = f"dashboard-{uuid.uuid4().hex[:8]}"
    (s3_server.root / bucket).mkdir(parents=True)
    env = make_env(root / "setup", s3_server, bucket)
    with data_root() as prod:
        data = prod / "scans"
        data.mkdir()
        queue = sqlite3.connect(prod / "queue.sqlite")
        queue.execute("create table antrian (id integer primary key, nik text)")
        env.policy("arsip", [{"name": "scans", "files": {"paths": [str(data)]}},
                             {"name": "queue", "sqlite": {"path": str(prod / "queue.sqlite")}}],
                   targets={"rpo": "1h", "rto": "10m"})
        env.playbook("arsip-drill", {"policy": "arsip", "steps": [
            {"name": "restore scans", "restore": {"source": "scans", "into": "scratch"}},
            {"name": "scans match backup", "verify": {"source": "scans"}},
            {"name": "restore queue", "restore": {"source": "queue"}},
            {"name": "queue has rows", "sql": {"source": "queue", "query": "select count(*) from antrian",
                                               "expect": {"min": 1}}},
        ]})
        # A quick check with its own, tighter RTO target: its drills never count as the policy's RTO.
        env.playbook("arsip-quick", {"policy": "arsip", "targets": {"rto": "5m"}, "steps": [
            {"name": "restore queue", "restore": {"source": "queue"}}]})
        reports = []
        for n in range(DRILLS):
            (data / f"scan-{n}.bin").write_bytes(bytes([n]) * (60_000 * (n + 1)))   # the data grows
            queue.executemany("insert into antrian (nik) values (?)", [(f"1671{i:08d}",) for i in range(500)])
            queue.commit()
            env.backup("arsip")
            html = root / "html" / f"drill-{n}.html"
            code, report, err = env.run_json("drill", "arsip-drill", "--html", str(html),
                                             "--report-dir", str(root / "reports"))
            assert code == 0, err
            reports.append((report, html))
        queue.close()
        code, quick, err = env.run_json("drill", "arsip-quick")        # the newest drill, of another playbook
        assert code == 0, err
        yield env, reports, root


def test_drill_html_report_in_browser(drilled, tmp_path):
    env, reports, root = drilled
    report, html = reports[-1]
    assert sorted(p.name for p in (root / "reports").iterdir() if report["id"] in p.name) == [
        f"{report['id']}.html", f"{report['id']}.json", f"{report['id']}.junit.xml"]
    page = open_page(html, tmp_path / "shots" / "drill.png")
    assert page.console == [], page.console
    assert outside_requests(page.page_requests) == [] and page.page_requests == []
    dom = Elements(page.dom)
    assert dom.select("span", **{"data-passed": "true"})[0]["text"] == "PASSED"
    assert dom.select("div", **{"data-signature": "valid"}), "the signature status is missing"
    rto = dom.select("td", **{"data-achieved-s": str(report["rto"]["achieved_s"])})
    assert rto and rto[0]["path"][-1] == "tr"
    steps = [n["attrs"]["data-step"] for n in dom.select("tr") if "data-step" in n["attrs"]]
    assert steps == ["restore scans", "scans match backup", "restore queue", "queue has rows"]
    assert "start scratch instance" in page.dom and "integrity check" in page.dom     # SQLite restore phases
    assert "content hashes" in page.dom and "What was verified" in page.dom
    assert "download+decrypt+write+verify" in page.dom          # the restore phase on the timeline


def test_dashboard_in_browser_has_charts_with_the_drill_values(drilled, tmp_path):
    env, reports, root = drilled
    out = tmp_path / "site"
    code, summary, err = env.run_json("dashboard", "--out", str(out))
    assert code == 0, err
    assert summary["policies"]["arsip"]["invalid_records"] == 0
    index = open_page(out / "index.html", tmp_path / "shots" / "index.png")
    assert index.console == [] and outside_requests(index.page_requests) == []
    card = Elements(index.dom).select("section", **{"data-policy": "arsip"})
    assert card, "no card for the policy on the index page"
    policy = open_page(out / "policy-arsip.html", tmp_path / "shots" / "policy.png")
    assert policy.console == [], policy.console
    assert policy.page_requests == []
    dom = Elements(policy.dom)
    svgs = [n for n in dom.select("svg") if "figure" in n["path"]]
    assert len(svgs) == 2, "the RTO and the data-size charts"
    dots = {n["attrs"]["data-drill"]: n["attrs"]["data-rto-s"] for n in dom.select("circle")
            if "data-rto-s" in n["attrs"] and "svg" in n["path"]}
    for report, _html in reports:                       # every drill's RTO is a point of the RTO chart
        assert dots.get(report["id"]) == str(report["rto"]["achieved_s"]), dots
    units = [n["text"] for n in dom.select("desc", **{"class": "value"})]
    assert units and all(re.search(r"\d (s|min|h|B|KiB|MiB|GiB)$", u) for u in units), units[:10]
    table = [n["attrs"]["data-rto-s"] for n in dom.select("td") if "data-rto-s" in n["attrs"] and "tr" in n["path"]]
    for report, _html in reports:
        assert str(report["rto"]["achieved_s"]) in table
    assert dom.select("table", **{"data-forecast": "ok"}), "3 drills give a forecast"
    assert dom.select("strong", **{"data-target-s": "600.0"})[0]["text"] == "10m00s"
    assert "RTO (s)" in policy.dom or "RTO (min)" in policy.dom          # the axis says its unit
    assert dom.select("table", **{"data-table": "calendar"})
    # Each drill has its own report page, linked from the table.
    links = [n["attrs"]["href"] for n in dom.select("a") if n["attrs"].get("href", "").startswith("drills/")]
    assert len(links) == DRILLS + 1 and all((out / link).is_file() for link in links)   # + the quick check
    phone = open_page(out / "policy-arsip.html", tmp_path / "shots" / "policy-phone.png", width=390, height=1600)
    assert phone.console == []


def test_fresh_machine_reads_offsite_and_flags_a_tampered_record(drilled, tmp_path):
    env, reports, root = drilled
    newest = reports[-1][0]
    offsite = next((env.s3.root / env.bucket).rglob(f"drills/{newest['id']}.json"))
    original = offsite.read_text()
    try:
        tampered = json.loads(original)
        tampered["rto"]["achieved_s"] = 1.0                      # a nicer number, signature unchanged
        offsite.write_text(json.dumps(tampered))
        fresh = _fresh_machine(env, tmp_path)
        code, rows, err = fresh.run_json("status")
        row = rows[0]
        assert "offsite" in row["history"]
        assert row["last_drill"]["id"] == reports[-2][0]["id"]        # the tampered drill is not used
        assert any(w["code"] == "invalid-signature" for w in row["warnings"])
        out = tmp_path / "site"
        code, summary, err = fresh.run_json("dashboard", "--out", str(out))
        assert code == 0, err
        assert summary["policies"]["arsip"]["invalid_records"] == 1
        page = open_page(out / "policy-arsip.html", tmp_path / "shots" / "tampered.png")
        banner = Elements(page.dom).select("div", **{"data-signature": "invalid"})
        assert banner and "SIGNATURE INVALID" in banner[0]["text"] and newest["id"] in page.dom
        assert page.console == [] and page.page_requests == []
        index = open_page(out / "index.html")
        assert Elements(index.dom).select("div", **{"data-signature": "invalid"})
        # The drill report page of the tampered record says so too, and verify-report fails on it.
        drill_page = open_page(out / "drills" / f"{newest['id']}.html")
        assert Elements(drill_page.dom).select("div", **{"data-signature": "invalid"})
        html = tmp_path / "tampered.html"
        code, out_text, err = fresh.run("verify-report", str(offsite), "--html", str(html))
        assert code == 1 and "altered after it was signed" in err
        assert 'data-signature="invalid"' in html.read_text()
    finally:
        offsite.write_text(original)


def test_status_exit_codes_nagios_and_pipes(drilled, tmp_path):
    env, reports, root = drilled
    code, rows, _ = env.run_json("status")
    assert code == 0 and rows[0]["problems"] == [] and rows[0]["forecast"]["status"] == "ok"
    # "last drill" is the last drill of the playbook that measures the policy's RTO, not the quick check.
    assert rows[0]["last_drill"]["id"] == reports[-1][0]["id"] and rows[0]["last_drill"]["playbook"] == "arsip-drill"
    assert rows[0]["forecast"]["drills_used"] == DRILLS
    from drtool.actions.forecast import forecast_alerts
    assert forecast_alerts(env.settings()) == []            # 3 quick drills, a 10 min target: no alert
    long_name = "records-of-the-civil-registry-office-palembang-" + "x" * 14
    with data_root() as prod:
        (prod / "f.txt").write_text("never backed up")
        env.policy(long_name, [{"name": "docs", "files": {"paths": [str(prod)]}}], targets={"rpo": "1d"})
        try:
            code, rows, _ = env.run_json("status")
            assert code == 1
            bad = next(r for r in rows if r["policy"] == long_name)
            assert bad["problems"] == ["rpo-breach", "never-drilled"] and bad["verdict"] == "rpo-breach"
            proc = env.run_subprocess("status", "--nagios")
            assert proc.returncode == 2 and proc.stdout.startswith("DRTOOL CRITICAL - ")
            assert f"{long_name} rpo-breach,never-drilled" in proc.stdout and "'arsip_rto'=" in proc.stdout
            proc = env.run_subprocess("status")                     # stdout is a pipe here
            assert proc.returncode == 1
            lines = proc.stdout.splitlines()
            row = next(line for line in lines if line.startswith(long_name))
            assert len(row) > 100 and "…" not in proc.stdout and "rpo-breach never-drilled" in row
            assert "forecast arsip: RTO now" in proc.stdout
        finally:
            (env.root / "policies" / f"{long_name}.yaml").unlink()


def test_json_errors_and_json_logs(drilled):
    env, _reports, _root = drilled
    code, doc, err = env.run_json("status", "--horizon", "soon")
    assert code == 2 and doc["error"]["type"] == "UsageError" and "--horizon" in doc["error"]["message"]
    code, doc, err = env.run_json("drill", "no-such-playbook")
    assert code == 2 and doc["error"]["type"] in ("UsageError", "ConfigError") and "no-such-playbook" in doc["error"]["message"]
    assert "drtool: error:" in err
    proc = env.run_subprocess("--log-format", "json", "-vv", "status")   # logs each restic command
    logged = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 0 and any("restic" in line for line in logged), proc.stderr
    for line in logged:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(entry)


def _fresh_machine(env, tmp_path: Path):  # noqa: ANN001, ANN202
    """The same configuration with an empty state dir: the server burned, only the bucket is left."""
    from tests.support.drtool_env import DrtoolEnv

    root = tmp_path / "fresh"
    shutil.copytree(env.root, root, ignore=shutil.ignore_patterns("state"))
    config = yaml.safe_load((root / "drtool.yaml").read_text())
    config["state_dir"] = str(root / "state")
    config["repositories"]["offsite"]["password"] = {"file": str(root / "repo.pass")}
    (root / "drtool.yaml").write_text(yaml.safe_dump(config))
    (root / "repo.pass").chmod(0o600)
    return DrtoolEnv(root, root / "drtool.yaml", env.s3, env.bucket, env.prefix, env.env)


def test_piped_drill_report_is_not_folded(drilled):
    env, reports, _root = drilled
    proc = env.run_subprocess("drill", "arsip-drill")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "restore scans" in line)
    assert re.search(r"restore scans.*restore.*passed.*files", line), proc.stdout   # one row, not wrapped
