"""Every failure drtool reports is one of these.

    DrtoolError                 exit 1: the job failed
    ├── UsageError              exit 2: bad command line, nothing touched
    │   ├── ConfigError         exit 2: bad drtool.yaml / policy / playbook (file:line:col)
    │   └── RestoreRefused      exit 2: target not empty / outside its root; nothing written
    ├── CommandError            an external program failed (argv, exit code, stderr tail)
    │   └── ProducerFailed      a dump producer failed; no snapshot of its stream was kept
    ├── RepositoryError         restic repository problems
    │   ├── WrongPassword       no key opens the repository with this password
    │   ├── RepositoryMissing   no repository (or bucket) at the URL
    │   └── RepositoryLocked    another restic process holds an exclusive lock   (transient)
    ├── StorageError            S3 endpoint / credentials / bucket problems
    │   ├── AccessDenied        the storage refuses the credentials
    │   ├── StorageUnreachable  connection refused / reset, DNS, timeouts         (transient)
    │   └── StorageThrottled    503 SlowDown / 500 InternalError answers          (transient)
    ├── RemoteError             SSH: unreachable, auth failed, host key unknown/changed
    ├── LockError               another run of the same policy holds the lock
    ├── SourceError             a data source cannot be dumped, restored or fingerprinted
    ├── DrillFailed             a drill ran but did not pass
    ├── Cancelled               asked to stop (SIGTERM, Ctrl-C); nothing partial was kept
    ├── StateError              drtool's own state (catalog, state_dir) is unusable
    └── InternalError           a bug: an unexpected exception, recorded and reported

`transient` marks causes worth waiting out or retrying (the storage or a lock will
likely be back); a status is always decided by the exception's class, never by its text.

Messages say what happened, where, and what to do. Secrets are masked by
`drtool.secrets.redact` before any message is built from outside text.
"""

from __future__ import annotations

from collections.abc import Sequence


class DrtoolError(Exception):
    exit_code = 1
    transient = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        from drtool.secrets import redact

        self.message = redact(message)
        self.hint = redact(hint) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(DrtoolError):
    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in configuration files; `problems` holds each line."""

    def __init__(self, problems: Sequence[str] | str, *, hint: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems), hint=hint)


class CommandError(DrtoolError):
    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr_tail: str = "",
        *,
        what: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        name = what or (argv[0] if argv else "command")
        if returncode is None:
            status = "timed out"
        elif returncode < 0:
            status = f"was killed by signal {-returncode}"
        else:
            status = f"exited with code {returncode}"
        msg = f"{name} {status}"
        if stderr_tail.strip():
            msg += ":\n    " + "\n    ".join(stderr_tail.strip().splitlines()[-15:])
        super().__init__(msg, hint=hint)


class ProducerFailed(CommandError):
    pass


class RepositoryError(DrtoolError):
    pass


class WrongPassword(RepositoryError):
    pass


class RepositoryMissing(RepositoryError):
    pass


class RepositoryLocked(RepositoryError):
    transient = True


class StorageError(DrtoolError):
    pass


class AccessDenied(StorageError):
    pass


class StorageUnreachable(StorageError):
    transient = True


class StorageThrottled(StorageError):
    transient = True


class RemoteError(DrtoolError):
    pass


class LockError(DrtoolError):
    pass


class SourceError(DrtoolError):
    pass


class RestoreRefused(UsageError):
    """Nothing was written: the target is not empty, not a directory, or outside its root."""


class DrillFailed(DrtoolError):
    pass


class Cancelled(DrtoolError):
    """The run was asked to stop (SIGTERM, Ctrl-C); nothing partial was kept."""


class StateError(DrtoolError):
    """drtool's own state (catalog, state_dir) cannot be read or written."""


class InternalError(DrtoolError):
    """An unexpected exception: the run was recorded as failed before this surfaced."""
