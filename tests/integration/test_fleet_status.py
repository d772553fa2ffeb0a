"""`drtool fleet status`: several simulated sites, each with real signed records from real runs.

Each site is its own drtool setup (its own bucket, its own signing key) that really backed up
and drilled through restic and the rclone S3 server. The fleet file lists their buckets with
credentials, their public keys and nothing else. Fleet status must flag the breached site and
the site with an altered record (shown, never trusted), pass the healthy one, read only
(GET/HEAD, checked through a proxy that refuses writes), and reuse its cache.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from drtool.crypto.signing import load_or_create_signing_key, public_key_b64
from tests.support.drtool_env import data_root, make_env
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


class ReadOnlyProxy(FaultProxy):
    """The S3 server through a proxy that refuses every write and remembers every method it saw."""

    def __init__(self, backend_port: int) -> None:
        super().__init__(backend_port)
        self.methods: list[str] = []

    def _current(self, method: str) -> str:
        self.methods.append(method)
        return "refuse" if method in ("PUT", "POST", "DELETE") else "pass"


def _site(root: Path, s3, name: str, data: Path, *, rpo: str, drill_fails: bool = False):  # noqa: ANN001
    bucket = f"site-{name}-{uuid.uuid4().hex[:6]}"
    s3.make_bucket(bucket)
    env = make_env(root / name, s3, bucket)
    env.policy("docs", [{"name": "scans", "files": {"paths": [str(data)]}}], targets={"rpo": rpo, "rto": "1h"})
    steps = [{"name": "restore", "restore": {"source": "scans"}}, {"name": "verify", "verify": {"source": "scans"}}]
    if drill_fails:
        steps.append({"name": "service answers", "command": ["false"]})
    # The drill's own RPO target is a day: at jambi the policy's (1 s) is what breaches, in the fleet view.
    env.playbook("docs-drill", {"policy": "docs", "targets": {"rpo": "24h", "rto": "1h"}, "steps": steps})
    env.backup("docs")
    code, out, err = env.run("drill", "docs-drill")
    assert code == (1 if drill_fails else 0), out + err
    return env


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("fleet")
    with data_root() as prod:
        data = prod / "scans"
        data.mkdir()
        (data / "ktp.txt").write_text("NIK 1671\n" * 100)
        sites = {"palembang": _site(root, s3_server, "palembang", data, rpo="24h"),
                 "jambi": _site(root, s3_server, "jambi", data, rpo="1s"),            # its RPO is long gone
                 "medan": _site(root, s3_server, "medan", data, rpo="24h", drill_fails=True)}
        time.sleep(1.5)
        yield {"root": root, "sites": sites, "s3": s3_server}


def fleet_file(fleet, endpoint_of=None, **extra) -> Path:  # noqa: ANN001
    entries = []
    for name, env in fleet["sites"].items():
        url = env.s3.repo_url(env.bucket, env.prefix)
        if endpoint_of is not None:
            url = endpoint_of.repo_url(env.bucket, env.prefix)
        entries.append({"name": name, "repository": url,
                        "s3": {"access_key_id": {"env": "FLEET_S3_KEY"}, "secret_access_key": {"env": "FLEET_S3_SECRET"}},
                        "signing_key": public_key_b64(load_or_create_signing_key(env.state_dir))})
    path = fleet["root"] / f"fleet-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(fleet["root"] / f"central-{path.stem}"), "sites": entries,
                                    **extra}, sort_keys=False))
    return path


def run_fleet(fleet, path: Path, *args: str) -> tuple[int, dict | None, str]:  # noqa: ANN001
    env = next(iter(fleet["sites"].values()))
    env_vars = {"FLEET_S3_KEY": fleet["s3"].access_key, "FLEET_S3_SECRET": fleet["s3"].secret_key}
    env.env.update(env_vars)
    code, out, err = env.run("fleet", "status", "--fleet", str(path), *args)
    doc = json.loads(out.splitlines()[-1]) if "--json" in args and out.strip() else None
    return code, doc, out + err


def _bucket_file(env, folder: str, predicate) -> Path:  # noqa: ANN001
    files = sorted((env.s3.root / env.bucket).rglob(f"repo.drtool/{folder}/*.json"))
    return next(f for f in reversed(files) if predicate(json.loads(f.read_text())))


def test_fleet_status_flags_breach_and_altered_record_and_trusts_nothing_unsigned(fleet):
    medan, jambi = fleet["sites"]["medan"], fleet["sites"]["jambi"]
    # An attacker at medan turns the failed drill into a pass; at jambi someone drops an unsigned
    # "successful backup" from right now. Neither may change a verdict.
    forged = _bucket_file(medan, "drills", lambda d: d.get("passed") is False)
    report = json.loads(forged.read_text())
    report.update(passed=True, failures=[])
    forged.write_text(json.dumps(report))
    fake = json.loads(_bucket_file(jambi, "runs", lambda d: d.get("kind") == "backup").read_text())
    fake.pop("signature")
    fake.update(id="20991231T000000Z-backup-abcdef", started_at="2099-12-31T00:00:00+00:00",
                finished_at="2099-12-31T00:00:01+00:00")
    (jambi.s3.root / jambi.bucket / "repo.drtool" / "runs" / f"{fake['id']}.json").write_text(json.dumps(fake))

    path = fleet_file(fleet)
    code, doc, text = run_fleet(fleet, path, "--json")
    assert code == 1, text
    sites = {s["site"]: s for s in doc["sites"]}
    assert set(doc["breached"]) == {"jambi", "medan"}
    ok = sites["palembang"]["policies"][0]
    assert ok["verdict"] == "ok" and ok["rpo_target_s"] == 86400 and ok["rto_target_s"] == 3600
    assert ok["last_drill"]["passed"] and ok["last_drill"]["rto_achieved_s"] > 0 and ok["backup_age_s"] > 0
    assert sites["palembang"]["signatures"] == {"valid": 2, "invalid": 0, "unsigned": 0}
    # The backup record carries the site's 3-2-1-1-0 letters as of that backup: one offsite copy on
    # another provider, no second copy, nothing proven immutable, no repository check yet.
    assert ok["rule_32110"]["letters"] == {"3": False, "2": True, "1o": True, "1i": False, "0": False}
    late = sites["jambi"]["policies"][0]
    assert late["verdict"] == "rpo-breach" and late["rpo_target_s"] == 1 and late["last_backup"] < "2099"
    assert [r["signature"] for r in sites["jambi"]["invalid_records"]] == ["unsigned"]
    tampered = sites["medan"]
    assert tampered["invalid_records"][0]["signature"] == "invalid"
    assert "altered" in tampered["invalid_records"][0]["detail"]
    assert "passed" in tampered["invalid_records"][0]["claims"]
    # The forged pass is not believed: the only drill of medan is invalid, so it counts as never drilled.
    assert tampered["policies"][0]["last_drill"] is None and "never-drilled" in tampered["policies"][0]["problems"]

    code, _, text = run_fleet(fleet, path, "--site", "palembang")
    assert code == 0 and "palembang" in text and "1 sites, 0 in breach" in text


def test_fleet_status_only_reads_and_reuses_its_cache(fleet):
    proxy = ReadOnlyProxy(fleet["s3"].port).start()
    try:
        path = fleet_file(fleet, endpoint_of=proxy)
        _, first, _ = run_fleet(fleet, path, "--json")
        _, second, _ = run_fleet(fleet, path, "--json")
    finally:
        proxy.stop()
    assert proxy.methods and set(proxy.methods) <= {"GET", "HEAD"}, set(proxy.methods)
    assert first["summary"]["fetched"] >= 6 and first["summary"]["cached"] == 0
    assert second["summary"]["fetched"] == 0 and second["summary"]["cached"] == first["summary"]["fetched"]
    assert [s["breach"] for s in second["sites"]] == [s["breach"] for s in first["sites"]]
    cache = Path(yaml.safe_load(path.read_text())["state_dir"]) / "fleet-cache"
    assert {p.name for p in cache.iterdir()} == {"palembang.json", "jambi.json", "medan.json"}
    assert all((p.stat().st_mode & 0o077) == 0 for p in cache.iterdir())


def test_unreachable_site_is_a_breach_with_one_clear_line(fleet, tmp_path):
    path = fleet_file(fleet)
    doc = yaml.safe_load(path.read_text())
    doc["sites"][0]["repository"] = "s3:http://127.0.0.1:9/nowhere/repo"       # nothing listens on port 9
    doc["sites"] = doc["sites"][:1]
    path.write_text(yaml.safe_dump(doc))
    code, _, text = run_fleet(fleet, path)
    assert code == 1 and "unreachable" in text and "cannot connect" in text and "Traceback" not in text


def test_bad_fleet_file_is_a_usage_error_with_its_position(fleet, tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("sites:\n  - name: x\n    repository: /srv/repo\n    signing_key: abc\n")
    code, _, text = run_fleet(fleet, path)
    assert code == 2 and f"{path}:3" in text and "s3:http" in text and f"{path}:4" in text


def test_fleet_page_shows_every_site_offline_in_a_browser(fleet, tmp_path):
    from tests.support.browser import open_page, outside_requests

    path = fleet_file(fleet)
    page_file = tmp_path / "fleet.html"
    code, _, text = run_fleet(fleet, path, "--html", str(page_file))
    assert code == 1 and page_file.is_file(), text
    page = open_page(page_file, tmp_path / "shots" / "fleet.png")
    assert page.console == [], page.console
    assert outside_requests(page.page_requests) == [] and page.page_requests == []
    assert 'data-site="palembang" data-policy="docs" data-verdict="ok"' in page.dom
    assert 'data-site="jambi" data-policy="docs" data-verdict="rpo-breach"' in page.dom
    assert 'data-breached="2"' in page.dom


def test_dashboard_of_a_central_site_has_the_fleet_page(fleet, tmp_path):
    path = fleet_file(fleet)
    config = tmp_path / "drtool.yaml"
    (tmp_path / "policies").mkdir()
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "fleet": str(path),
                                      "repositories": {"r": {"url": "/srv/none", "password": {"env": "UNUSED"}}}}))
    env = next(iter(fleet["sites"].values()))
    env.env.update({"FLEET_S3_KEY": fleet["s3"].access_key, "FLEET_S3_SECRET": fleet["s3"].secret_key})
    from drtool.cli import main

    with env._environ():
        code = main(["-c", str(config), "dashboard", "--out", str(tmp_path / "www")])
    assert code == 0
    index = (tmp_path / "www" / "index.html").read_text()
    assert 'href="fleet.html"' in index and 'data-fleet="2"' in index
    assert 'data-site="jambi"' in (tmp_path / "www" / "fleet.html").read_text()
