"""Rendering results for people (rich, on a TTY) and machines (--json)."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from drtool.events import Progress, ProgressEvent


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

    def __call__(self, event: ProgressEvent) -> None:
        # Imported here: every command module imports this one, and `--help` should not pay
        # for building the event classes.
        from drtool.events import Notice, Progress, SourceFailed, SourceStarted

        if self.as_json:
            data = event.to_dict()
            if isinstance(event, Progress) and event.is_status:   # restic's status lines, trimmed
                data = {k: data.get(k) for k in ("event", "source", "stream", "percent_done", "bytes_done",
                                                 "files_done", "total_bytes")}
            emit_json(data)
            return
        if isinstance(event, Progress):
            if self.tty and event.is_status:
                self._show(event)
            return
        self._stop()
        if isinstance(event, SourceStarted):
            click.echo(f"  {event.source} ({event.kind}) ...", err=True)
        elif isinstance(event, SourceFailed):
            click.echo(f"  {event.source}: FAILED", err=True)
        elif isinstance(event, Notice):
            click.echo(f"  note: {event.message}", err=True)

    def _show(self, event: Progress) -> None:
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
        from rich.progress import Progress as Bar

        if self._progress is None:
            self._progress = Bar(TextColumn("    {task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(event.stream or event.source, total=None)
        total = event.restic.get("total_bytes") or None
        self._progress.update(self._task, completed=event.restic.get("bytes_done", 0), total=total)

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
