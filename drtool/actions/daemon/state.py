"""The daemon's own memory: what the catalog cannot know.

0600 JSON in state_dir: the first sight of each job (so a new job waits for its first
slot instead of running at once) and the last *attempt* of each job (written before the
job runs, so a job that crashed drtool before recording itself is not retried in a loop).
The catalog stays the record of runs; the `n/N` check rotation is drtool/rotation.py,
shared with exported units.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DaemonState:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon-state.json"
        self._lock = threading.Lock()
        self.data: dict[str, dict[str, Any]] = {"first_seen": {}, "attempts": {}}
        try:
            loaded = json.loads(self.path.read_text())
            for key in self.data:
                self.data[key].update(loaded.get(key, {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable daemon state %s (%s); jobs wait for their next slot", self.path, exc)

    def get_time(self, section: str, job_id: str) -> datetime | None:
        value = self.data[section].get(job_id)
        return datetime.fromisoformat(value) if value else None

    def set(self, section: str, key: str, value: Any) -> None:
        with self._lock:
            if value is None:
                self.data[section].pop(key, None)
            else:
                self.data[section][key] = value.isoformat() if isinstance(value, datetime) else value
            self._save()

    def set_many(self, section: str, values: Mapping[str, Any]) -> None:
        """Like set() for several keys, saved once."""
        if not values:
            return
        with self._lock:
            for key, value in values.items():
                self.data[section][key] = value.isoformat() if isinstance(value, datetime) else value
            self._save()

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".daemon-state.", dir=self.path.parent)   # mkstemp: 0600
            with os.fdopen(fd, "w") as handle:
                json.dump(self.data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            # A full state_dir must not stop scheduling; the catalog still orders the jobs.
            log.error("cannot save the daemon state %s: %s", self.path, exc.strerror)
