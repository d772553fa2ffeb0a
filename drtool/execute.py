"""Running external programs: argv lists only, bounded output, timeouts, masked errors.

`Runner` is the one interface for "run this program somewhere": `LocalRunner`
here, `drtool.remote.ssh.SshRunner` over SSH. Sources and scratch instances
take a Runner, so every source works locally and remotely alike.

Children die with drtool: every local child gets PR_SET_PDEATHSIG (SIGKILL), so
when drtool is killed (SIGKILL, OOM, power) no restic it was gating lives on to see
EOF and commit a truncated stream, and no dump keeps running as an orphan. The
signal is tied to the *thread* that started the child, so a program meant to outlive
the thread that started it (a scratch database server) is started with `detach=True`.

Programs drtool does not control (hooks, drill `command:` steps) run with
`contain=True`: under `drtool/supervise.py`, a subreaper that kills everything they
leave behind (double-forked daemons included) when they exit, time out or when drtool
dies; and with a clean environment (`inherit_env=False`) so drtool's secrets never
reach them.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

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
    """Where a program runs. `LocalRunner` and `drtool.remote.ssh.SshRunner` implement all of it."""

    name: str

    @property
    def where(self) -> str: ...          # for messages: "this machine", "host records-db (10.0.0.5)"

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
    ) -> Result: ...

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Process: ...

    def which(self, program: str) -> str | None: ...

    def connect(self) -> None: ...       # reach the place now (an SSH host key check); no-op locally

    def close(self) -> None: ...         # release what the runner holds (an SSH connection)


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


# What a program drtool does not control gets from drtool's own environment: enough to
# run (PATH, locale, HOME, TZ, TMPDIR), nothing else. The secrets drtool resolves from
# {env: NAME} references live in its environment and must not reach hooks or commands.
CLEAN_ENV_KEYS = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER",
                  "LOGNAME", "SHELL", "TERM")


# Variables of drtool's environment that hold secrets it read by reference ({env: NAME}; set by
# the configuration loader): no child inherits them, whatever runner starts it. A child that
# needs one of those secrets gets it in its `env` explicitly.
_hidden_env: frozenset[str] = frozenset()


def hide_from_children(names: Iterable[str]) -> None:
    global _hidden_env
    _hidden_env = _hidden_env | frozenset(names)


def child_env(env: Mapping[str, str] | None, *, inherit: bool = True,
              drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a child: drtool's (or only CLEAN_ENV_KEYS of it), minus `drop` and the
    secret-holding variables (hide_from_children), plus `env`."""
    if inherit:
        merged = {k: v for k, v in os.environ.items() if k not in drop and k not in _hidden_env}
    else:
        merged = {k: os.environ[k] for k in CLEAN_ENV_KEYS if k in os.environ}
        merged.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    # Never let a caller's terminal locale change the output formats we parse.
    merged.setdefault("LC_ALL", "C.UTF-8")
    if env:
        merged.update(env)
    return merged


# ---------------------------------------------------------------- dying with drtool

_PR_SET_PDEATHSIG = 1
try:
    _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):   # not Linux: children are still stopped on every normal exit path
    _libc_prctl = None
SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervise.py")


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the thread that started it ends (drtool died).

    Resolved before fork so the child only makes one libc call. If drtool already died
    between fork and prctl, the child is now an orphan: it exits at once.
    """
    parent = os.getpid()
    prctl = _libc_prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(125)

    return preexec


class LocalRunner:
    name = "local"
    where = "this machine"

    def __init__(self, user: str | None = None, *, contain: bool = False, inherit_env: bool = True,
                 drop_env: Sequence[str] = ()) -> None:
        # `user`: run as this OS user via runuser (initdb/pg_ctl refuse root).
        # `contain`: under the supervisor, which kills whatever the program leaves behind.
        # `inherit_env`: False gives children only CLEAN_ENV_KEYS of drtool's environment.
        # `drop_env`: variables of drtool's environment its children never see.
        self.user = user
        self.contain = contain
        self.inherit_env = inherit_env
        self.drop_env = tuple(drop_env)

    def argv_for(self, argv: Sequence[str]) -> list[str]:
        """The argv as it is executed: through runuser and/or the supervisor when configured."""
        argv = [str(a) for a in argv]
        if self.user and os.geteuid() == 0:
            argv = ["runuser", "-u", self.user, "--", *argv]
        if self.contain:
            argv = [sys.executable, "-I", "-S", SUPERVISOR, *argv]
        return argv

    _argv = argv_for   # older name, used by scratch/postgres.py

    def _popen(self, full: list[str], *, stdin: Any, env: Mapping[str, str] | None, cwd: str | None,
               pass_fds: Sequence[int], detach: bool) -> subprocess.Popen[bytes]:
        # Own session: a Ctrl-C on the terminal reaches drtool, which then decides how each
        # child stops (restic must not commit); and a timeout can kill the whole group.
        # The supervisor gets SIGTERM when drtool dies (it then kills its tree); others SIGKILL.
        preexec = None if detach else _die_with_parent(signal.SIGTERM if self.contain else signal.SIGKILL)
        try:
            return subprocess.Popen(
                full, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=child_env(env, inherit=self.inherit_env, drop=self.drop_env), cwd=cwd, pass_fds=tuple(pass_fds),
                start_new_session=True, preexec_fn=preexec,
            )
        except FileNotFoundError:
            raise CommandError(full, 127, f"{full[0]}: command not found",
                               hint=f"install {full[0]} or put it on PATH") from None

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
        detach: bool = False,
    ) -> Result:
        full = self.argv_for(argv)
        log.debug("run: %s", redact(" ".join(full)))
        popen = self._popen(full, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, env=env,
                            cwd=cwd, pass_fds=pass_fds, detach=detach)
        _track(popen.pid)
        try:
            stdout, stderr = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            stderr = _kill_group_and_drain(popen, contained=self.contain)
            raise CommandError(full, None, _tail(stderr), hint=f"it took longer than {timeout:.0f}s") from None
        except BaseException:
            _kill_group_and_drain(popen, contained=self.contain)
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
        detach: bool = False,
    ) -> LocalProcess:
        full = self.argv_for(argv)
        log.debug("start: %s", redact(" ".join(full)))
        popen = self._popen(full, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=env, cwd=cwd,
                            pass_fds=pass_fds, detach=detach)
        _track(popen.pid)
        return LocalProcess(popen, full)

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def connect(self) -> None:
        """Nothing to reach locally; SshRunner verifies the host key here."""

    def close(self) -> None:
        """Nothing to release locally; SshRunner closes its connection here."""


def _kill_group_and_drain(popen: subprocess.Popen[bytes], grace: float = 5.0, *, contained: bool = False) -> bytes:
    """Kill the child's whole process group, then read what is left of its stderr.

    The group, not only the child: a shell's background jobs hold the pipes open, and
    reading to EOF would then wait for them. A contained child (the supervisor) is asked
    first with SIGTERM: it then kills its whole tree, including what left the group. If
    something still holds a pipe after `grace` seconds, the pipes are closed instead."""
    if contained and popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        popen.kill()
    try:
        _, stderr = popen.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        for pipe in (popen.stdout, popen.stderr, popen.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        popen.wait(grace)
        stderr = b""
    return stderr or b""


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
