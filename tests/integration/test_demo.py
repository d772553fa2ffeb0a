"""`drtool demo`, the README's first command, works end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_passes_and_leaves_nothing_running(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "drtool", "demo", "--dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERDICT: PASSED" in proc.stdout + proc.stderr
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "demo left processes running"
