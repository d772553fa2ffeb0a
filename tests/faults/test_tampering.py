"""Tampered artefacts: a recovery kit with one byte changed, a signed drill report edited in the
bucket. Each is refused with one clear error and nothing is written; the genuine one still works."""

from __future__ import annotations

import json

import pytest

from tests.faults.conftest import assert_no_leak, assert_one_clear_error, files_site, next_run_succeeds

pytestmark = pytest.mark.integration
PASSPHRASE = "correct horse battery staple 7"


def test_tampered_recovery_kit(make_site, tmp_path) -> None:  # noqa: ANN001
    site = files_site(make_site)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    kit = tmp_path / "docs.age"
    made = site.drtool_secret("kit", "create", "docs", "--out", str(kit), secret=PASSPHRASE)
    assert made.returncode == 0, made.stderr
    good = kit.read_bytes()
    assert site.drtool_secret("kit", "verify", str(kit), secret=PASSPHRASE).returncode == 0

    tampered = tmp_path / "tampered.age"
    tampered.write_bytes(good[:-40] + bytes([good[-40] ^ 1]) + good[-39:])
    tampered.chmod(0o600)
    proc = site.drtool_secret("kit", "verify", str(tampered), secret=PASSPHRASE)
    assert_one_clear_error(proc, r"wrong passphrase, or the kit was altered")
    cut = tmp_path / "cut.age"
    cut.write_bytes(good[: len(good) // 2])
    cut.chmod(0o600)
    assert_one_clear_error(site.drtool_secret("kit", "verify", str(cut), secret=PASSPHRASE), r"truncated")
    assert site.drtool_secret("kit", "verify", str(kit), secret=PASSPHRASE).returncode == 0     # the genuine one
    assert_no_leak(site)


def test_tampered_drill_report(make_site, tmp_path) -> None:  # noqa: ANN001
    site = files_site(make_site)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    site.playbook("docs-drill", {"policy": "docs", "targets": {"rto": "1h"}, "steps": [
        {"name": "restore", "restore": {"source": "scans"}}]})
    assert site.drtool("drill", "docs-drill").returncode == 0
    run = site.last_run("docs", "drill")
    path = site.records_dir / "drills" / f"{run['id']}.json"
    genuine = site.drtool("verify-report", str(path))
    assert genuine.returncode == 0 and "signature valid" in genuine.stdout, genuine.stderr

    record = json.loads(path.read_text())
    record["rto"]["achieved_s"] = 1.0                     # someone makes the recovery look faster
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(record))
    proc = site.drtool("verify-report", str(forged), "--html", str(tmp_path / "forged.html"))
    assert_one_clear_error(proc, r"signature", code=1)
    assert "signature valid" not in proc.stdout
    html = (tmp_path / "forged.html").read_text() if (tmp_path / "forged.html").exists() else ""
    assert not html or "signature" in html.lower()        # rendered, then only with the failed check shown
    assert site.drtool("verify-report", str(path)).returncode == 0
    assert_no_leak(site)
