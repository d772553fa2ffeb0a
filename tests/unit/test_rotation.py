"""Check rotation kept in state_dir: n/N parts in turn, advanced only after a successful check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drtool.actions.rotate import check_with_rotation
from drtool.config import load_settings
from drtool.rotation import RotationState, next_subset
from tests.unit.test_daemon_logic import write_setup


@pytest.mark.parametrize("configured, last, expected", [
    ("1/3", 0, ("1/3", 1)), ("1/3", 1, ("2/3", 2)), ("1/3", 3, ("1/3", 1)), (" 2 / 4 ", 4, ("1/4", 1)),
    ("5%", 7, ("5%", 7)), ("500M", 0, ("500M", 0)), (None, 2, (None, 2)), ("1/0", 0, ("1/0", 0)),
])
def test_next_subset(configured: str | None, last: int, expected: tuple) -> None:
    assert next_subset(configured, last) == expected


def test_state_is_private_atomic_and_survives_corruption(tmp_path: Path) -> None:
    state = RotationState(tmp_path / "state")
    assert state.next("db", "1/3") == ("1/3", 1)
    state.advance("db", 1)
    state.advance("web", 2)
    path = tmp_path / "state" / "check-rotation.json"
    assert json.loads(path.read_text()) == {"db": 1, "web": 2}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["check-rotation.json"]     # no temp file left
    assert state.next("db", "1/3") == ("2/3", 2)
    path.write_text("{not json")
    assert state.next("db", "1/3") == ("1/3", 1)                                   # start the cycle again


@dataclass
class FakeRun:
    ok: bool


@dataclass
class FakeCheck:
    results: list[bool]
    subsets: list[Any] = field(default_factory=list)

    def __call__(self, settings: Any, policy: Any, *, read_data_subset: str | None, trigger: str) -> FakeRun:
        self.subsets.append(read_data_subset)
        return FakeRun(self.results.pop(0))


def test_check_with_rotation_advances_only_after_success(tmp_path: Path) -> None:
    settings = load_settings(str(write_setup(tmp_path, policies={
        "db": "repository: offsite\ncheck: {schedule: daily 03:00, read_data_subset: 1/3}\n"})))
    check = FakeCheck([True, False, True, True, True])
    for _ in range(5):
        check_with_rotation(settings, settings.policies["db"], check=check)
    assert check.subsets == ["1/3", "2/3", "2/3", "3/3", "1/3"]
    assert RotationState(settings.state_dir).last("db") == 1
