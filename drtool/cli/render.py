"""Rendering results for people (rich, on a TTY) and machines (--json)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click


class _Output:
    """Whether this invocation already printed JSON: a command that printed its result (a failed
    drill's report) gets no second object; one that failed before printing gets the error as JSON."""
    json_lines = 0


def emit_json(obj: Any) -> None:
    _Output.json_lines += 1
    click.echo(json.dumps(obj, default=str, sort_keys=False))


def reset_output() -> None:
    _Output.json_lines = 0


def printed_json() -> bool:
    return _Output.json_lines > 0


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


# ---------------------------------------------------------------- tables

def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def print_table(headers: list[str], rows: list[list[Any]], *, styles: list[list[str | None]] | None = None,
                title: str | None = None, right: frozenset[int] = frozenset()) -> None:
    """A table: rich (colour, wrapped to the terminal) on a terminal; otherwise plain aligned text
    that is never truncated or wrapped, so `| grep`, `| mail` and cron mails get every character."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if stdout_is_terminal():
        _rich_table(headers, cells, styles, title, right)
        return
    if title:
        click.echo(title)
    click.echo(plain_table(headers, cells, right))


def plain_table(headers: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Pure: columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        padded = [(c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _rich_table(headers: list[str], rows: list[list[str]], styles: list[list[str | None]] | None,
                title: str | None, right: frozenset[int]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in right else "left", overflow="fold")
    for n, row in enumerate(rows):
        row_styles = styles[n] if styles else [None] * len(row)
        table.add_row(*[Text(c, style=s or "") for c, s in zip(row, row_styles)])
    Console().print(table)


def wide_console():  # noqa: ANN201 - rich.console.Console, imported lazily
    """A rich Console for renderables other than print_table: on a pipe, as wide as the content
    needs (never folded at 80 columns) and without colour codes."""
    from rich.console import Console

    if stdout_is_terminal():
        return Console()
    return Console(width=10_000, no_color=True, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- errors and logs

def error_json(exc: BaseException, exit_code: int) -> dict[str, Any]:
    """An error as the one JSON object a --json caller reads from stdout."""
    message = getattr(exc, "message", None) or str(exc)
    return {"error": {"type": type(exc).__name__, "message": message, "hint": getattr(exc, "hint", None),
                      "exit_code": exit_code}}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line (journald, Loki, jq): time, level, logger, message and any
    `extra={...}` fields. A dozen lines, so no dependency for it."""

    _STANDARD = frozenset(("name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
                           "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
                           "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
                           "message", "asctime"))

    def format(self, record: logging.LogRecord) -> str:
        from datetime import datetime, timezone

        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
