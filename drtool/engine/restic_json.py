"""Reads restic's --json stdout in a thread: progress events, the summary, errors.

Only the last status line and the summary are kept, so memory stays bounded whatever
the number of files.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from drtool.execute import LocalProcess
from drtool.secrets import redact

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


class JsonLineReader:
    """restic's --json stdout, read in a thread: progress events out, summary kept."""

    def __init__(self, proc: LocalProcess, on_progress: ProgressFn | None) -> None:
        self.summary: dict[str, Any] | None = None
        self.errors: list[str] = []
        # When restic last made progress (a new file or byte, an error, the summary): its status
        # lines keep coming at a fixed rate even when it is stuck on a hung file system.
        self.last_change = time.monotonic()
        self._seen: tuple[Any, ...] = ()
        self._on_progress = on_progress
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: LocalProcess) -> None:
        for raw in proc.stdout:
            line = raw.strip()
            if not line.startswith(b"{"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = obj.get("message_type")
            moved = (obj.get("files_done"), obj.get("bytes_done")) if kind == "status" else (kind, id(obj))
            if moved != self._seen:
                self._seen, self.last_change = moved, time.monotonic()
            if kind == "summary":
                self.summary = obj
            elif kind == "error" and len(self.errors) < 50:
                self.errors.append(redact(str(obj.get("error", obj))))
            if self._on_progress is not None:
                try:
                    self._on_progress(obj)
                except Exception:  # noqa: BLE001 - a display problem must not break a backup
                    log.debug("progress callback failed", exc_info=True)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
