"""`drtool fleet validate`: the fleet file's secrets resolve, or every problem is named at its position."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CANARY = "fleet-canary-9f3e"     # a secret value: never in any output


def _key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _fleet(tmp_path: Path, refs: list[tuple[dict, dict]]) -> Path:
    lines = [f"state_dir: {tmp_path / 'state'}", "sites:"]
    for i, (access, secret) in enumerate(refs):
        lines += [f"  - name: office-{i}", f"    repository: s3:http://127.0.0.1:9/office-{i}/repo",
                  f"    signing_key: {_key()}", "    s3:",
                  f"      access_key_id: {json.dumps(access)}", f"      secret_access_key: {json.dumps(secret)}"]
    path = tmp_path / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_T_")}
    return subprocess.run([sys.executable, "-m", "drtool", "fleet", "validate", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **env})


def _secret_file(tmp_path: Path, name: str, mode: int) -> str:
    path = tmp_path / name
    path.write_text(CANARY + "\n")
    path.chmod(mode)
    return str(path)


def test_every_unresolvable_secret_is_named_at_its_line(tmp_path: Path) -> None:
    good = _secret_file(tmp_path, "good.secret", 0o600)
    loose = _secret_file(tmp_path, "loose.secret", 0o644)
    path = _fleet(tmp_path, [({"env": "FLEET_T_KEY"}, {"file": good}),
                             ({"env": "FLEET_T_UNSET"}, {"file": loose}),
                             ({"env": "FLEET_T_KEY"}, {"file": str(tmp_path / "missing.secret")})])
    proc = _run("--fleet", str(path), FLEET_T_KEY=CANARY)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert f"{path}:13:" in out and "env:FLEET_T_UNSET is not set" in out          # office-1's access key
    assert f"{path}:14:" in out and "readable by others (mode 0644)" in out         # office-1's secret
    assert f"{path}:20:" in out and "missing.secret does not exist" in out          # office-2's secret
    assert f"{path}:7:" not in out and f"{path}:8:" not in out                      # office-0 resolves
    assert CANARY not in out and "Traceback" not in out


def test_a_fleet_whose_secrets_resolve_is_ok(tmp_path: Path) -> None:
    good = _secret_file(tmp_path, "good.secret", 0o600)
    path = _fleet(tmp_path, [({"env": "FLEET_T_KEY"}, {"file": good})] * 2)
    proc = _run("--fleet", str(path), FLEET_T_KEY=CANARY)
    assert proc.returncode == 0, proc.stderr
    assert "ok — 2 sites (office-0, office-1), 2 secret reference(s) resolved" in proc.stdout
    report = json.loads(_run("--fleet", str(path), "--json", FLEET_T_KEY=CANARY).stdout)
    assert report["valid"] and report["secrets_checked"] == 2 and report["problems"] == []


def test_static_checks_the_file_only(tmp_path: Path) -> None:
    path = _fleet(tmp_path, [({"env": "FLEET_T_UNSET"}, {"env": "FLEET_T_UNSET"})])
    assert _run("--fleet", str(path), "--static").returncode == 0
    report = json.loads(_run("--fleet", str(path), "--json").stdout)
    assert not report["valid"] and len(report["problems"]) == 2


def test_a_broken_file_is_a_usage_error_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"sites:\n  - name: x\n    repository: /srv/repo\n    signing_key: {_key()}\n")
    proc = _run("--fleet", str(path), "--static")
    assert proc.returncode == 2 and f"{path}:3" in proc.stderr and "s3:http" in proc.stderr
