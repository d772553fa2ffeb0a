"""A `mariadb` client kept open on a pipe: the lock session of a consistent dump."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO

from drtool.errors import SourceError
from drtool.execute import Runner, stop_process
from drtool.sources.mariadb.commands import QUERY_TIMEOUT, unescape_field


class SqlSession:
    """A `mariadb` client kept open on a pipe: statements in, rows out.

    Used for the lock session, whose locks live exactly as long as this
    connection. Each batch ends with a marker SELECT so we know where its
    output stops; a failing statement makes the client exit (no --force), which
    shows up here as end-of-output and is raised with the stderr tail.
    """

    def __init__(self, runner: Runner, argv: list[str], env: dict[str, str], where: str) -> None:
        self.where = where
        self.proc = runner.start(argv, env=env, stdin=True)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._seq = 0
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[bytes]) -> None:
        try:
            for line in iter(stdout.readline, b""):
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(None)

    def execute(self, sql: str, timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
        self._seq += 1
        marker = f"drtool-end-{self._seq}"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{sql}\nSELECT '{marker}';\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(sql)
        rows: list[list[str]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SourceError(f"MariaDB at {self.where} did not answer within {timeout:.0f}s",
                                  hint="check the server's load and locks (SHOW PROCESSLIST)") from None
            if line is None:
                self._fail(sql)
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text == marker:
                return rows
            rows.append([unescape_field(f) for f in text.split("\t")])

    def _fail(self, sql: str) -> None:
        try:
            code = self.proc.wait(10)
        except Exception:  # noqa: BLE001 - report what we have
            code = None
        first = sql.strip().splitlines()[0][:80] if sql.strip() else ""
        raise SourceError(f"MariaDB session at {self.where} failed (exit {code}) running {first!r}:\n    "
                          + self.proc.stderr_tail().strip().replace("\n", "\n    "))

    def close(self) -> None:
        # Closing stdin ends the client; the server then drops its locks and transaction.
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001 - a stuck client must still go away
            stop_process(self.proc, grace=5)

