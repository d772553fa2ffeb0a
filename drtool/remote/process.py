"""A program running on a remote host, behaving like `execute.LocalProcess`.

- stdout is the channel; stderr is drained in its own thread (stdout and stderr share one
  SSH window, so a chatty program would otherwise stall its own stdout);
- a command that ends without an exit status (connection dropped, killed by a signal)
  reports 255, like ssh(1), so callers never mistake it for success;
- terminate()/kill() signal the pid the prelude announced, over a second channel (sshd
  refuses RFC 4254 "signal" requests in common setups): the runner provides that.
"""

from __future__ import annotations

import io
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drtool.errors import RemoteError
from drtool.execute import StderrTail
from drtool.remote.commands import parse_pid_line
from drtool.secrets import redact

if TYPE_CHECKING:  # pragma: no cover - typing only
    import paramiko

log = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024
LOST_CONNECTION_CODE = 255


class _ChannelStdout(io.RawIOBase):
    def __init__(self, channel: paramiko.Channel) -> None:
        self._chan = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._chan.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ChannelStderr(_ChannelStdout):
    def readinto(self, buffer: Any) -> int:
        data = self._chan.recv_stderr(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ChannelStdin(io.RawIOBase):
    def __init__(self, channel: paramiko.Channel) -> None:
        self._chan = channel

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            self._chan.sendall(bytes(data))
        except OSError as exc:
            # Same signal a local pipe gives when the reader is gone.
            raise BrokenPipeError(f"remote program's stdin is closed: {exc}") from None
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._chan.shutdown_write()   # EOF for the remote program
            except (OSError, EOFError):
                pass
        super().close()


# ------------------------------------------------------------------ process

class SshProcess:
    """A program running on a remote host; behaves like `execute.LocalProcess`."""

    def __init__(self, channel: paramiko.Channel, argv: list[str], where: str, *,
                 payload: bytes, stdin: bool, start_timeout: float, signal_remote: Callable[[int, str], None],
                 connection_alive: Callable[[], bool]) -> None:
        self.argv = argv
        self.where = where
        self._chan = channel
        # How to reach the host for what the channel cannot do: the runner passes these in.
        self._signal_remote = signal_remote
        self._connection_alive = connection_alive
        self._stopped = False
        self._note = ""
        self.stdout: io.BufferedReader = io.BufferedReader(_ChannelStdout(channel), buffer_size=READ_SIZE)
        self._tail = StderrTail(_ChannelStderr(channel))  # type: ignore[arg-type]
        if payload:
            channel.sendall(payload)
        self.stdin: io.BufferedWriter | None = None
        if stdin:
            self.stdin = io.BufferedWriter(_ChannelStdin(channel), buffer_size=256 * 1024)
        else:
            channel.shutdown_write()
        self.pid = self._read_pid(start_timeout)

    def _read_pid(self, timeout: float) -> int | None:
        """Consume the prelude's marker line; lines before it come from login scripts, not the program."""
        self._chan.settimeout(timeout)
        try:
            for _ in range(10_000):
                line = self.stdout.readline(4096)
                if not line:
                    return None   # ended before the prelude ran: wait() reports why
                pid = parse_pid_line(line)
                if pid is not None:
                    return pid
                log.debug("%s: login shell printed %r before the command", self.where, redact(line[:200].decode("utf-8", "replace")))
        except TimeoutError:
            self._chan.close()
            raise RemoteError(f"{self.argv[0]} did not start on {self.where} within {timeout:.0f}s",
                              hint="the host may be overloaded, or a login script waits for input") from None
        finally:
            if not self._chan.closed:
                self._chan.settimeout(None)
        return None

    def wait(self, timeout: float | None = None) -> int:
        if not self._chan.status_event.wait(timeout):
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        self._tail.join(2.0)
        status = self._chan.exit_status
        if status >= 0 and not self._stopped:
            return status
        return self._no_status(status)

    def _no_status(self, status: int) -> int:
        # The channel closed without an exit-status message (or we stopped it): never success.
        if self._stopped:
            self._note = f"[drtool] {self.argv[0]} on {self.where} was stopped by drtool"
        elif not self._connection_alive():
            self._note = (f"[drtool] the SSH connection to {self.where} was lost before "
                          f"{self.argv[0]} finished; its output is incomplete")
        else:
            self._note = f"[drtool] {self.argv[0]} on {self.where} ended without an exit status (killed by a signal?)"
        return status if status > 0 else LOST_CONNECTION_CODE

    def poll(self) -> int | None:
        if not self._chan.status_event.is_set():
            return None
        return self.wait(0)

    def _signal(self, name: str) -> None:
        # sshd refuses RFC 4254 "signal" requests in common setups, so drtool
        # signals the pid the prelude announced, over a second channel.
        self._stopped = True
        if self.pid is not None:
            self._signal_remote(self.pid, name)

    def terminate(self) -> None:
        if self.poll() is None:
            self._signal("TERM")

    def kill(self) -> None:
        if self.poll() is None:
            self._signal("KILL")
            # Closing also unblocks our readers; the program gets EPIPE on its next write.
            self._chan.close()

    def close(self) -> None:
        self._chan.close()

    def stderr_tail(self) -> str:
        text = self._tail.text()
        if self._note:
            text = (text.rstrip("\n") + "\n" + self._note) if text.strip() else self._note
        return redact(text)


@dataclass
class _Collector:
    """Feeds stdin and reads stdout to EOF in threads, so run() can bound both by a timeout."""

    proc: SshProcess
    input: bytes | None
    chunks: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._threads = [threading.Thread(target=self._read, daemon=True)]
        if self.input is not None:
            self._threads.append(threading.Thread(target=self._write, daemon=True))
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(READ_SIZE), b""):
            self.chunks.append(chunk)

    def _write(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(self.input or b"")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the program stopped reading; its exit status tells the story

    def finish(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def stdout(self) -> bytes:
        return b"".join(self.chunks)
