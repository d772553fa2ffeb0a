"""The restic adapter: argv lists, --json parsing, progress events, error mapping.

The repository password reaches restic through an anonymous pipe
(RESTIC_PASSWORD_FILE=/dev/fd/N): never argv, never the environment, never a
file on disk; so does a machine key's derived password, which every command
uses instead once restic has accepted it (drtool/engine/machine_key.py).
Failures become typed errors (drtool/engine/restic_errors.py).

Two failures are handled here rather than reported at once:
- a throttling or unreachable storage (503 SlowDown, connection refused...) is
  waited out with exponential backoff for read-only commands, up to the
  repository's `wait_unavailable` (restic itself retries a request only ~15 s);
- a lock left by a restic process that died on this host (drtool killed, power
  cut) is removed with plain `restic unlock` (which removes only stale locks: of
  dead processes on this host, or not refreshed for 30 minutes) and the command
  tried once more. Locks of live processes, here or on other hosts, are kept and
  waited for, up to the repository's `lock_wait` (an admin's `restic snapshots`
  holds its lock for seconds; without the wait a nightly forget that met it failed).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.engine.machine_key import MachineKey, MachineKeySlot
from drtool.engine.restic_errors import classify, clean_stderr
from drtool.engine.restic_json import JsonLineReader, ProgressFn  # noqa: F401 - re-exported
from drtool.engine.snapshot import Snapshot, parse_restic_time  # noqa: F401 - restic's snapshots, re-exported
from drtool.engine.retry_watch import RetryWatch
from drtool.errors import (Cancelled, CommandError, DrtoolError, RepositoryError, RepositoryLocked, RepositoryMissing,
                           StorageError)
from drtool.execute import LocalProcess, LocalRunner, Result, stop_process
from drtool.secrets import Secret, redact

log = logging.getLogger(__name__)

RESTIC = os.environ.get("DRTOOL_RESTIC", "restic")
# Variables that must not leak from the caller's environment into restic:
# they would override the password we pass through the pipe.
_SCRUB = ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_PASSWORD_FILE", "RESTIC_REPOSITORY",
          "RESTIC_REPOSITORY_FILE")

DEFAULT_WAIT_UNAVAILABLE = 300.0         # seconds a throttling/unreachable storage is waited out
DEFAULT_LOCK_WAIT = 120.0                # seconds a live restic lock is waited for
_LOCK_FIRST, _LOCK_CAP = 1.0, 15.0
_BACKOFF_FIRST, _BACKOFF_CAP = 2.0, 30.0
DOWN_MEMORY_S = 60.0                     # a storage given up on is not tried again within this time
# Commands that only read: safe to run again after a transient failure.
_RETRYABLE = frozenset({"cat", "snapshots", "ls", "stats", "list", "key", "unlock", "version"})


@dataclass(frozen=True)
class RepoAccess:
    url: str
    password: Secret
    env: dict[str, str] = field(default_factory=dict)   # AWS_* credentials for S3 repositories
    limit_upload: int | None = None                       # KiB/s, on every restic invocation
    limit_download: int | None = None

    def __repr__(self) -> str:
        return f"RepoAccess({self.url!r})"


def classify_failure(code: int | None, stderr: str, url: str) -> DrtoolError | None:
    """Map restic's exit code and message to a typed error, or None if unknown."""
    return classify(code, redact(stderr), url)


def restic_error(code: int | None, stderr: str, *, args: Sequence[str], argv: Sequence[str],
                 url: str) -> DrtoolError:
    """The error for a failed `restic ARGS` (full command line `argv`): a typed one for a known
    cause, else restic's own last lines (never a Go stack dump)."""
    stderr = redact(stderr)
    known = classify(code, stderr, url)
    if known is not None:
        return known
    return CommandError(argv, code, clean_stderr(stderr) or stderr[-2000:], what=f"restic {_command(args)}".strip())


class PasswordPipe:
    """The password in an anonymous pipe whose read end is handed to restic."""

    def __init__(self, password: Secret) -> None:
        data = password.reveal().encode() + b"\n"
        self.read_fd, write_fd = os.pipe()
        try:
            # A pipe holds 64 KiB; a password never comes close, so this cannot block.
            os.write(write_fd, data)
        finally:
            os.close(write_fd)

    @property
    def env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD_FILE": f"/dev/fd/{self.read_fd}"}

    def close(self) -> None:
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def __enter__(self) -> "PasswordPipe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def limit_args(access: RepoAccess) -> list[str]:
    """restic's global bandwidth flags (KiB/s) for this repository, if it has limits."""
    args: list[str] = []
    if access.limit_upload:
        args += ["--limit-upload", str(access.limit_upload)]
    if access.limit_download:
        args += ["--limit-download", str(access.limit_download)]
    return args


def _base_env(access: RepoAccess) -> dict[str, str]:
    env = {"RESTIC_REPOSITORY": access.url, "RESTIC_PROGRESS_FPS": "2"}
    env.update(access.env)
    return env


def backoff_delays(total: float, first: float = _BACKOFF_FIRST, cap: float = _BACKOFF_CAP) -> list[float]:
    """Waits between attempts (2, 4, 8, ... capped at 30 s) that add up to at most `total` seconds."""
    delays, spent, delay = [], 0.0, first
    while spent + delay <= total:
        delays.append(delay)
        spent += delay
        delay = min(cap, delay * 2)
    return delays


class Restic:
    def __init__(self, access: RepoAccess, *, binary: str = RESTIC, cache_dir: Path | None = None,
                 wait_unavailable: float = DEFAULT_WAIT_UNAVAILABLE, lock_wait: float = DEFAULT_LOCK_WAIT,
                 sleep: Callable[[float], None] = time.sleep, machine_key: MachineKeySlot | None = None) -> None:
        self.access = access                 # the repository password: kits, keys and copies use it
        self.machine_key = machine_key       # opens the repository without ~0.5 s of KDF per process
        self.binary = binary
        self.cache_dir = cache_dir
        self.wait_unavailable = wait_unavailable
        self.lock_wait = lock_wait
        self._sleep = sleep
        # The caller's RESTIC_* variables would override the password we pass through the pipe.
        self._runner = LocalRunner(drop_env=_SCRUB)
        self.unlocked_stale = 0              # stale locks removed by this instance (for run records)
        self.lock_waited = 0.0               # seconds spent waiting for live locks
        # Set once the storage has used up its wait_unavailable in this run (a command waited it out,
        # or a running backup was given up on): for DOWN_MEMORY_S later commands fail at once with
        # the same error instead of waiting again (a failed run's clean-up would otherwise spend the
        # budget once per command, and each attempt of restic alone retries for ~12 s). Reset by any
        # command that succeeds.
        self._down: tuple[float, DrtoolError] | None = None

    # -- plumbing ---------------------------------------------------------

    def argv(self, args: Sequence[str]) -> list[str]:
        extra = ["--cache-dir", str(self.cache_dir)] if self.cache_dir else []
        return [self.binary, *extra, *limit_args(self.access), *args]

    def error(self, code: int | None, stderr: str, args: Sequence[str]) -> DrtoolError:
        """The typed error for a failed run of `restic ARGS` (public: the pipeline uses it too)."""
        return restic_error(code, stderr, args=args, argv=self.argv(args), url=self.access.url)

    def run(self, args: Sequence[str], *, timeout: float = 600.0, input: bytes | None = None,
            cancel: threading.Event | None = None, cwd: str | None = None) -> Result:
        """Run restic to the end; a stale lock is removed and a read-only command waits out
        a throttling or unreachable storage (see the module docstring)."""
        if self._down is not None and time.monotonic() - self._down[0] < DOWN_MEMORY_S:
            raise self._down[1]
        retryable = _command(args) in _RETRYABLE and self._down is None
        delays = backoff_delays(self.wait_unavailable) if retryable else []
        lock_delays: list[float] | None = None       # set once stale locks were removed
        while True:
            try:
                result = self._run_once(args, timeout=timeout, input=input, cancel=cancel, cwd=cwd)
                self._down = None
                return result
            except RepositoryLocked as exc:
                if _command(args) == "unlock":
                    raise
                if lock_delays is None:
                    lock_delays = backoff_delays(self.lock_wait, _LOCK_FIRST, _LOCK_CAP)
                    self.unlock_stale()
                    continue
                if not lock_delays:
                    raise
                delay = lock_delays.pop(0)
                level = logging.INFO if self.lock_waited else logging.WARNING   # a run standing still says why
                log.log(level, "restic %s: %s; waiting %.0fs for it", _command(args), exc.message.split("\n")[0], delay)
                if cancel.wait(delay) if cancel is not None else self._sleep(delay):     # True: cancelled
                    raise Cancelled(f"restic {_command(args)} was interrupted on request") from None
                self.lock_waited += delay
            except DrtoolError as exc:
                if not exc.transient or not delays:
                    self._note_down(exc)
                    raise
                delay = delays.pop(0)
                log.info("restic %s: %s; trying again in %.0fs", _command(args), exc.message.splitlines()[0], delay)
                self._sleep(delay)

    def _run_once(self, args: Sequence[str], *, timeout: float, input: bytes | None,
                  cancel: threading.Event | None, cwd: str | None = None, key: MachineKey | None = None) -> Result:
        """restic to its end, stdout collected. Interrupted (SIGINT: it removes its lock) on `cancel`
        or after `timeout`; killed when its storage stops answering for wait_unavailable
        (drtool/engine/retry_watch.py): restic alone retries for minutes."""
        proc, pw = self.start(args, stdin=input is not None, cwd=cwd, key=key)
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(65536), b"")),
                                  daemon=True, name="restic-stdout")
        reader.start()
        if input is not None:
            threading.Thread(target=_feed, args=(proc, input), daemon=True, name="restic-stdin").start()
        watch = self.watch_retries(proc)
        try:
            code = self._wait(proc, reader, args, time.monotonic() + timeout, cancel)
        except BaseException:
            stop_process(proc, grace=30)
            raise
        finally:
            watch.close()
            pw.close()
        if watch.gave_up_after is not None:
            raise watch.error()
        if code != 0:
            raise self.error(code, proc.stderr_tail(), args)
        return Result(self.argv(args), code, b"".join(out), proc.stderr_tail().encode())

    def _wait(self, proc: LocalProcess, reader: threading.Thread, args: Sequence[str], deadline: float,
              cancel: threading.Event | None) -> int:
        # restic's stdout ends when it exits: joining the reader returns at once then, where a
        # Popen.wait(timeout) would poll.
        while reader.is_alive():
            reader.join(0.5)
            if cancel is not None and cancel.is_set():
                stop_process(proc, grace=30)
                raise Cancelled(f"restic {_command(args)} was interrupted on request")
            if time.monotonic() > deadline:
                stop_process(proc, grace=30)
                raise CommandError(self.argv(args), None, proc.stderr_tail(), what=f"restic {_command(args)}")
        return proc.wait(30)

    def watch_retries(self, proc: LocalProcess) -> RetryWatch:
        """Stop `proc` (a restic of this repository) once its storage has failed for longer than
        wait_unavailable (drtool/engine/retry_watch.py); the caller asks the watch what happened."""
        watch: RetryWatch

        def give_up() -> None:
            proc.kill()
            if watch.storage_down:
                self.mark_down(watch.error())
        watch = RetryWatch(proc, self.wait_unavailable, give_up, url=self.access.url)
        return watch

    def _note_down(self, exc: DrtoolError) -> None:
        """An unreachable or throttling storage that outlasted the waiting: remembered (mark_down)."""
        if isinstance(exc, StorageError) and exc.transient:
            self.mark_down(exc)

    def mark_down(self, exc: DrtoolError) -> None:
        """The storage used up its wait_unavailable: the next commands fail at once (see __init__)."""
        self._down = (time.monotonic(), exc)

    @property
    def storage_down(self) -> bool:
        return self._down is not None

    def start(self, args: Sequence[str], *, stdin: bool = False, cwd: str | None = None,
              key: MachineKey | None = None) -> tuple[LocalProcess, PasswordPipe]:
        """Start restic; the caller closes the returned pipe after restic has read it (at exit).
        It opens the repository with the machine key if there is one restic accepts (`key`:
        that one, unchecked: the check itself), else with the repository password."""
        key = key or self.usable_machine_key()
        if self._down is not None and time.monotonic() - self._down[0] < DOWN_MEMORY_S:
            raise self._down[1]             # given up on in this run (by the key's check too): as run() does
        password, hint = (key.password, {"RESTIC_KEY_HINT": key.key_id}) if key else (self.access.password, {})
        pw = PasswordPipe(password)
        try:
            proc = self._runner.start(self.argv(args), env={**_base_env(self.access), **hint, **pw.env},
                                      stdin=stdin, pass_fds=(pw.read_fd,), cwd=cwd)
        except BaseException:
            pw.close()
            raise
        return proc, pw

    def usable_machine_key(self) -> MachineKey | None:
        """The machine key restic accepts (checked once, on the first call), or None."""
        return self.machine_key.usable(self.opens_with) if self.machine_key is not None else None

    def opens_with(self, key: MachineKey) -> DrtoolError | None:
        """None if restic opens the repository with `key`, else why not (no lock: it only reads)."""
        try:
            self._run_once(["--no-lock", "cat", "config"], timeout=120, input=None, cancel=None, key=key)
            return None
        except DrtoolError as exc:
            # A storage that did not answer the check will not answer the run's first command
            # either: that one fails at once with this cause instead of waiting it out again.
            self._note_down(exc)
            return exc

    def check_machine_key_soon(self) -> None:
        """Check the machine key in the background now, so the first command finds it checked."""
        if self.machine_key is not None:
            threading.Thread(target=self.usable_machine_key, daemon=True, name="machine-key-check").start()

    def run_json(self, args: Sequence[str], *, timeout: float = 600.0) -> Any:
        result = self.run([*args, "--json"], timeout=timeout)
        text = result.stdout.decode("utf-8", "replace").strip()
        # Some restic versions print a status line before the JSON document.
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith(("[", "{")):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    break
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            raise RepositoryError(f"restic {args[0]} printed output drtool cannot parse") from None

    # -- repository -------------------------------------------------------

    def exists(self) -> bool:
        """True if the repository opens; False only when it is really missing (any other
        failure, e.g. the storage is down or the password is wrong, is raised)."""
        try:
            self.run(["--no-lock", "cat", "config"], timeout=120)
            return True
        except RepositoryMissing:
            return False

    def init(self) -> None:
        self.run(["init"], timeout=300)

    def snapshots(self, tags: Sequence[str] | None = None, host: str | None = None, *,
                  no_lock: bool = False) -> list[Snapshot]:
        # no_lock: for read-only status views (watchdog, `drtool status`); skips creating and
        # removing a lock object (~0.3 s on S3). Never for anything that decides what to delete.
        args = ["--no-lock", "snapshots"] if no_lock else ["snapshots"]
        if tags:
            args += ["--tag", ",".join(tags)]
        if host:
            args += ["--host", host]
        data = self.run_json(args, timeout=300) or []
        snaps = [Snapshot.from_json(obj) for obj in data]
        snaps.sort(key=lambda s: s.time)
        return snaps

    def check(self, read_data_subset: str | None = None, *, timeout: float = 6 * 3600,
              cancel: threading.Event | None = None) -> str:
        args = ["check"]
        if read_data_subset:
            args += ["--read-data-subset", read_data_subset]
        return self.run(args, timeout=timeout, cancel=cancel).text

    def forget(self, tags: Sequence[str], keep: dict[str, str], *, prune: bool = True,
               group_by: str = "host,tags", timeout: float = 6 * 3600) -> Any:
        args = ["forget", "--tag", ",".join(tags), "--group-by", group_by]
        for flag, value in keep.items():
            args += [f"--keep-{flag}", value]
        if prune:
            args.append("--prune")
        return self.run(args, timeout=timeout).text

    def forget_ids(self, ids: Sequence[str]) -> None:
        if ids:
            self.run(["forget", *ids], timeout=600)

    def unlock_stale(self) -> None:
        """Remove stale locks: of dead processes on this host, or not refreshed for 30 minutes.

        Plain `restic unlock` (never --remove-all): a live process's lock, here or on another
        host, is refreshed every 5 minutes and is never stale."""
        self.run(["unlock"], timeout=120)
        self.unlocked_stale += 1

    def locks(self) -> list[dict[str, Any]]:
        """The repository's locks (id, time, exclusive, hostname, pid), read without taking one."""
        ids = self.run(["--no-lock", "list", "locks"], timeout=120).text.split()
        found = []
        for lock_id in ids:
            try:
                data = json.loads(self.run(["--no-lock", "cat", "lock", lock_id], timeout=120).text)
            except (DrtoolError, ValueError):
                continue      # removed meanwhile
            found.append({"id": lock_id, **{k: data.get(k) for k in ("time", "exclusive", "hostname", "pid",
                                                                       "username")}})
        return found

    def remove_all_locks(self) -> None:
        """`restic unlock --remove-all`: only after the admin confirmed no restic runs anywhere."""
        self.run(["unlock", "--remove-all"], timeout=120)

    def ls(self, snapshot_id: str) -> Iterator[dict[str, Any]]:
        """Stream the nodes of a snapshot, one dict at a time (bounded memory)."""
        proc, pw = self.start(["ls", "--json", snapshot_id])
        try:
            for raw in proc.stdout:
                line = raw.strip()
                if not line:
                    continue
                obj = json.loads(line)
                if obj.get("struct_type") == "node":
                    yield obj
            code = proc.wait(600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            pw.close()
        if code != 0:
            raise self.error(code, proc.stderr_tail(), ["ls"])

    def dump(self, snapshot_id: str, path: str) -> tuple[LocalProcess, PasswordPipe]:
        # --no-lock: a dump only reads; creating and removing a lock object costs ~0.3 s per
        # stream on S3. A prune running at the same time makes the dump fail loudly (missing
        # pack), never silently wrong: restic verifies every blob it reads. The daemon never
        # runs forget/prune beside anything else on the same repository.
        return self.start(["--no-lock", "dump", snapshot_id, path])

    def restore(self, snapshot_id: str, target: Path, *, include: Sequence[str] = (),
                timeout: float = 24 * 3600) -> dict[str, Any]:
        # restic 0.14's restore has no --json progress (0.16 added it): no progress callback.
        args = ["restore", snapshot_id, "--target", str(target)]
        for inc in include:
            args += ["--include", inc]
        result = self.run(args, timeout=timeout)
        return {"output": result.text[-2000:]}

    def stats(self, snapshot_id: str, mode: str = "restore-size") -> dict[str, Any]:
        return self.run_json(["stats", "--mode", mode, snapshot_id], timeout=600) or {}


def repo_access(settings: Any, repo_name: str) -> RepoAccess:
    """Resolve a configured repository's password and S3 credentials."""
    repo = settings.config.repositories[repo_name]
    env: dict[str, str] = {}
    if repo.s3 is not None:
        if repo.s3.access_key_id is not None:
            env["AWS_ACCESS_KEY_ID"] = repo.s3.access_key_id.resolve().reveal()
        if repo.s3.secret_access_key is not None:
            env["AWS_SECRET_ACCESS_KEY"] = repo.s3.secret_access_key.resolve().reveal()
        env["AWS_DEFAULT_REGION"] = repo.s3.region
    if getattr(repo, "rest", None) is not None and repo.rest.username:
        # restic 0.14 takes REST credentials from the URL only: in its environment, never argv.
        from drtool.storage.rest import authenticated_url
        env["RESTIC_REPOSITORY"] = authenticated_url(
            repo.url, repo.rest.username, repo.rest.password.resolve() if repo.rest.password else None)
    return RepoAccess(repo.url, repo.password.resolve(), env,
                      limit_upload=repo.limit_upload, limit_download=repo.limit_download)


def _feed(proc: LocalProcess, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass          # restic exited early: its exit status says why


def _command(args: Sequence[str]) -> str:
    """The restic subcommand in ARGS (after global flags such as --no-lock)."""
    return next((a for a in args if not a.startswith("-")), "")


def summary_snapshot_id(stdout: str) -> str | None:
    """The snapshot id from `restic backup --json` output (its summary message), or None."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if obj.get("message_type") == "summary":
            return obj.get("snapshot_id")
    return None
