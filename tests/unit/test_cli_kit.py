"""verify-report and runbook through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from drtool.cli import main
from drtool.crypto.signing import load_or_create_signing_key, public_key_b64, sign_record

ROOT = Path(__file__).resolve().parents[2]


def test_verify_report_accepts_signed_and_rejects_tampered(tmp_path, capsys):
    key = load_or_create_signing_key(tmp_path / "state")
    record = sign_record({"playbook": "siak-drill", "passed": True, "rto": {"achieved_s": 12.5}}, key)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(record))
    assert main(["verify-report", str(good), "--public-key", public_key_b64(key)]) == 0
    record["passed"] = False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(record))
    assert main(["verify-report", str(bad)]) == 1
    assert "signature" in capsys.readouterr().err.lower()


def test_runbook_for_example_policy(tmp_path):
    out = tmp_path / "siak.md"
    assert main(["-c", str(ROOT / "drtool.yaml"), "runbook", "siak", "--out", str(out)]) == 0
    text = out.read_text()
    assert "pg_restore" in text and "restic" in text and "policy=siak" in text
