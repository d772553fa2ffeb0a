"""Running external programs: argv lists only, bounded output, timeouts, masked errors.

`Runner` is the one interface for "run this program somewhere": `LocalRunner`
here, `drtool.remote.ssh.SshRunner` over SSH. Sources and scratch instances
take a Runner, so every source works locally and remotely alike.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from drtool.errors import CommandError
from drtool.secrets import redact

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 64 * 1024

# The pids started by this thread's current "scope" (e.g. one drill step), so a timeout
# can stop exactly what that step started and not a concurrent job's processes.
_scope: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar("drtool_process_scope", default=None)


@contextlib.contextmanager
def process_scope() -> Iterator[set[int]]:
    pids: set[int] = set()
    token = _scope.set(pids)
    try:
        yield pids
    finally:
        _scope.reset(token)


def _track(pid: int) -> None:
    scope = _scope.get()
    if scope is not None:
        scope.add(pid)
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class Process(Protocol):
    """A started program whose stdout (and optionally stdin) is a pipe."""

    argv: list[str]
    stdin: IO[bytes] | None
    stdout: IO[bytes]

    def wait(self, timeout: float | None = None) -> int: ...
    def poll(self) -> int | None: ...
    def kill(self) -> None: ...
    def terminate(self) -> None: ...
    def stderr_tail(self) -> str: ...


class Runner(Protocol):
    name: str

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
        cwd: str | None = None,
    ) -> Result: ...

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        cwd: str | None = None,
    ) -> Process: ...

    def which(self, program: str) -> str | None: ...


class StderrTail:
    """Drains a stderr pipe in a thread, keeping only the last bytes.

    Reading stderr concurrently is what keeps a chatty program from blocking
    on a full pipe while we read its stdout.
    """

    def __init__(self, pipe: IO[bytes], limit: int = STDERR_TAIL_BYTES) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        try:
            for chunk in iter(lambda: pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536), b""):
                self._chunks.append(chunk)
                self._size += len(chunk)
                while self._size > self._limit and len(self._chunks) > 1:
                    self._size -= len(self._chunks.popleft())
        except (OSError, ValueError):
            pass

    def join(self, timeout: float | None = 5.0) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        data = b"".join(self._chunks)[-self._limit :]
        return redact(data.decode("utf-8", "replace"))


class LocalProcess:
    def __init__(self, popen: subprocess.Popen[bytes], argv: list[str]) -> None:
        self._popen = popen
        self.argv = argv
        self.stdin = popen.stdin
        assert popen.stdout is not None and popen.stderr is not None
        self.stdout = popen.stdout
        self._tail = StderrTail(popen.stderr)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def wait(self, timeout: float | None = None) -> int:
        code = self._popen.wait(timeout)
        self._tail.join()
        return code

    def poll(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()

    def terminate(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(sig)

    def stderr_tail(self) -> str:
        return self._tail.text()


def child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ)
    # Never let a caller's terminal locale change the output formats we parse.
    merged.setdefault("LC_ALL", "C.UTF-8")
    if env:
        merged.update(env)
    return merged


class LocalRunner:
    name = "local"

    def __init__(self, user: str | None = None) -> None:
        # `user`: run as this OS user via runuser (initdb/pg_ctl refuse root).
        self.user = user

    def _argv(self, argv: Sequence[str]) -> list[str]:
        argv = [str(a) for a in argv]
        if self.user and os.geteuid() == 0:
            return ["runuser", "-u", self.user, "--", *argv]
        return argv

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Result:
        full = self._argv(argv)
        log.debug("run: %s", redact(" ".join(full)))
        try:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(env),
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError:
            raise CommandError(full, 127, f"{full[0]}: command not found", hint=f"install {argv[0]} or put it on PATH") from None
        _track(popen.pid)
        try:
            stdout, stderr = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            _, stderr = popen.communicate()
            raise CommandError(full, None, _tail(stderr), hint=f"it took longer than {timeout:.0f}s") from None
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        result = Result(full, popen.returncode, stdout, stderr)
        if check and popen.returncode != 0:
            raise CommandError(full, popen.returncode, _tail(stderr))
        return result

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> LocalProcess:
        full = self._argv(argv)
        log.debug("start: %s", redact(" ".join(full)))
        try:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(env),
                cwd=cwd,
                pass_fds=tuple(pass_fds),
                # Own process group: a Ctrl-C on the terminal reaches drtool, which
                # then decides how each child stops (restic must not commit).
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CommandError(full, 127, f"{full[0]}: command not found", hint=f"install {argv[0]} or put it on PATH") from None
        _track(popen.pid)
        return LocalProcess(popen, full)

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def close(self) -> None:
        """Nothing to release locally; SshRunner closes its connection here."""


def _tail(data: bytes | None, limit: int = 4000) -> str:
    if not data:
        return ""
    return redact(data[-limit:].decode("utf-8", "replace"))


def stop_process(proc: Process, *, grace: float = 10.0) -> None:
    """Interrupt, then kill after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        if isinstance(proc, LocalProcess):
            proc.send_signal(signal.SIGINT)
        else:
            proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
    except Exception:  # noqa: BLE001 - stopping must never raise over the real error
        proc.kill()
