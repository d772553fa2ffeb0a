"""Rendering results for people (rich, on a TTY) and machines (--json)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, default=str, sort_keys=False))


class ProgressPrinter:
    """Progress events -> a rich progress line on a TTY, JSON lines with --json, quiet otherwise."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stderr.isatty() and not as_json
        self._progress = None
        self._task = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            if event.get("event") != "progress" or event.get("message_type") != "status":
                emit_json(event)
            else:
                emit_json({k: event.get(k) for k in ("event", "source", "stream", "percent_done",
                                                      "bytes_done", "files_done", "total_bytes")})
            return
        kind = event.get("event")
        if kind == "progress" and self.tty and event.get("message_type") == "status":
            self._show(event)
        elif kind in ("source_start",):
            self._stop()
            click.echo(f"  {event['source']} ({event.get('kind')}) ...", err=True)
        elif kind == "source_failed":
            self._stop()
            click.echo(f"  {event['source']}: FAILED", err=True)
        elif kind == "notice":
            self._stop()
            click.echo(f"  note: {event['message']}", err=True)
        elif kind == "source_done":
            self._stop()

    def _show(self, event: dict[str, Any]) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        if self._progress is None:
            self._progress = Progress(TextColumn("    {task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(event.get("stream") or event.get("source") or "", total=None)
        total = event.get("total_bytes") or None
        self._progress.update(self._task, completed=event.get("bytes_done", 0), total=total)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self._stop()


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"
