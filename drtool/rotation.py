"""Check rotation: `read_data_subset: n/N` reads part 1/N, then 2/N, ... so a cycle reads all data.

The position survives between runs in `<state_dir>/check-rotation.json` (0600, written
atomically), so a systemd timer or a cron line that runs `drtool check POLICY --rotate`
rotates exactly like the daemon does. The position advances only after a check that
succeeded: a failed or interrupted check reads the same part again next time.

    subset, position = next_subset("1/3", last=1)   # ("2/3", 2)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

FILENAME = "check-rotation.json"


def next_subset(configured: str | None, last: int) -> tuple[str | None, int]:
    """The read-data subset for the next check and the position it stands for (pure)."""
    if not configured:
        return None, last
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", configured)
    if not match or int(match.group(2)) < 1:
        return configured, last                          # 5%, 500M: restic picks; nothing to rotate
    total = int(match.group(2))
    n = last % total + 1
    return f"{n}/{total}", n


class RotationState:
    """The last position read per policy, in state_dir."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILENAME

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}          # unreadable or corrupt: start the cycle again, which is safe
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and v >= 0}

    def last(self, policy: str) -> int:
        return self.load().get(policy, 0)

    def next(self, policy: str, configured: str | None) -> tuple[str | None, int]:
        return next_subset(configured, self.last(policy))

    def advance(self, policy: str, position: int) -> None:
        data = self.load()
        data[policy] = position
        write_private_json(self.path, data)


def write_private_json(path: Path, data: object) -> None:
    """Write JSON readable only by its owner, atomically (a crash leaves the old file or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
