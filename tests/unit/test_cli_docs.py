"""Shell completion of names, and the shipped man pages are those the CLI generates today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drtool.cli.manpages import MAN_DIR, rendered

ROOT = Path(__file__).resolve().parents[2]


def complete(shell: str, words: str, cword: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drtool"], capture_output=True, text=True, timeout=60, cwd="/",
                          env={**os.environ, "_DRTOOL_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
                               "COMP_CWORD": str(cword), **env})


def test_policy_and_playbook_names_complete_from_the_config() -> None:
    cfg = str(ROOT / "drtool.yaml")
    assert complete("bash", f"drtool -c {cfg} backup s", 4).stdout.split() == ["plain,siak"]
    assert complete("bash", f"drtool -c {cfg} restore ", 4).stdout.split() == ["plain,arsip", "plain,kiosk",
                                                                                "plain,siak"]
    assert complete("bash", "drtool drill k", 2, DRTOOL_CONFIG=cfg).stdout.split() == ["plain,kiosk-drill"]
    assert complete("bash", f"drtool -c {cfg} init-repo ", 4).stdout.split() == ["plain,offsite"]


def test_completion_with_a_broken_config_is_quiet(tmp_path: Path) -> None:
    (tmp_path / "drtool.yaml").write_text("repositories: [unclosed\n")
    proc = complete("zsh", f"drtool -c {tmp_path / 'drtool.yaml'} backup ", 4)
    assert proc.returncode == 0 and "plain" not in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_activation_scripts(shell: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "drtool"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "_DRTOOL_COMPLETE": f"{shell}_source"})
    assert proc.returncode == 0 and "_DRTOOL_COMPLETE" in proc.stdout


def test_shipped_man_pages_are_current() -> None:
    pytest.importorskip("click_man")
    shipped = {p.name: p.read_text() for p in MAN_DIR.glob("*.1")}
    fresh = rendered()
    assert sorted(shipped) == sorted(fresh), "run `python -m drtool.cli.manpages`"
    stale = [name for name in fresh if fresh[name] != shipped[name]]
    assert not stale, f"stale man pages {stale}: run `python -m drtool.cli.manpages`"
    assert "drtool\\-schedule\\-install" in fresh["drtool-schedule-install.1"]
    assert "\\-\\-dry\\-run" in fresh["drtool-schedule-install.1"]
