"""The shipped examples (drtool.yaml, policies/, playbooks/) and init's templates are valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from drtool.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_repository_examples_validate():
    settings = load_settings(str(ROOT / "drtool.yaml"))
    assert {"siak", "arsip", "kiosk"} <= set(settings.policies)
    kinds = {s.kind for p in settings.policies.values() for s in p.sources}
    assert kinds == {"postgres", "mariadb", "sqlite", "files"}
    for playbook in settings.playbooks.values():
        assert playbook.policy in settings.policies


def test_validate_command_on_examples_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "drtool", "-c", str(ROOT / "drtool.yaml"), "validate", "--static"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "3 policies" in proc.stdout


def test_init_writes_a_valid_setup(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "drtool", "init", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert load_settings(str(tmp_path / "drtool.yaml")).policies["siak"].targets.rto == 4 * 3600
    again = subprocess.run([sys.executable, "-m", "drtool", "init", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
