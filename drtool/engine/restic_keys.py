"""restic key management: escrow keys that can be added and revoked on their own.

`restic key add` in 0.14 reads the new password only from a terminal or from
`--new-password-file`; a file would put the secret on disk. So it runs under a
pseudo-terminal (pexpect) and every password - the current one and the new
one - is typed into restic's prompts. Nothing secret is in argv, in the
environment or in any file; the terminal has echo off, so the passwords are
not even read back into our buffer.

The other key commands are plain `Restic` calls (password through a pipe).
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

from drtool.errors import CommandError, RepositoryError
from drtool.execute import child_env
from drtool.secrets import Secret, redact

PROMPT_CURRENT = "enter password for repository:"
PROMPT_NEW = "enter new password:"
PROMPT_AGAIN = "enter password again:"
_PASSWORD_VARS = ("RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_NEW_PASSWORD_FILE")
_KEY_ID = re.compile(r"^[0-9a-f]{4,64}$")


class Access(Protocol):
    """What these functions need; `drtool.engine.restic.RepoAccess` is one."""

    url: str
    password: Secret
    env: dict[str, str]


def list_keys(access: Access, *, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The repository's keys as restic reports them: id, userName, hostName, created, current."""
    keys = _restic(access).run_json(["key", "list"], timeout=timeout)
    if not isinstance(keys, list):
        raise RepositoryError(f"restic key list on {_where(access)} printed no key list",
                              hint="check that restic is version 0.14 or newer")
    return keys


def remove_key(access: Access, key_id: str, *, timeout: float = 120.0) -> None:
    """Revoke one key. restic refuses to remove the key `access` itself opens with."""
    if not _KEY_ID.match(key_id):
        raise RepositoryError(f"{key_id!r} is not a restic key id", hint="key ids are hex, as shown by `restic key list`")
    try:
        _restic(access).run(["key", "remove", key_id], timeout=timeout)
    except CommandError as exc:
        raise _remove_error(access, key_id, exc.stderr_tail) from None


def _remove_error(access: Access, key_id: str, stderr: str) -> RepositoryError:
    low = stderr.lower()
    if "refusing to remove key currently used" in low:
        return RepositoryError(f"restic refuses to remove key {key_id} of {_where(access)}: it is the key used to open the repository",
                               hint="remove it while opening the repository with another key (password)")
    if "no matching id" in low or "no key found" in low:
        return RepositoryError(f"repository {_where(access)} has no key {key_id}",
                               hint="it may already be revoked; `restic key list` shows the keys left")
    return RepositoryError(f"restic key remove {key_id} failed on {_where(access)}: {stderr.strip()[-500:]}")


def add_key(access: Access, new_password: Secret, timeout: float = 120.0) -> str:
    """Add a key that opens the repository with `new_password`; return its id."""
    if new_password == access.password:
        raise RepositoryError("the new key's password equals the current password",
                              hint="an escrow key needs its own password, so it can be revoked alone")
    if len(new_password.reveal()) < 8 or "\n" in new_password.reveal():
        raise RepositoryError("the new key's password must be one line of at least 8 characters")
    started = time.monotonic()
    _type_passwords(access, new_password, timeout)
    # Opened with the new password, `current` marks exactly the key just made.
    # It also proves the new password really opens the repository.
    remaining = max(10.0, timeout - (time.monotonic() - started))
    try:
        keys = list_keys(_with_password(access, new_password), timeout=remaining)
    except RepositoryError as exc:
        raise RepositoryError(f"restic added a key to {_where(access)}, but opening the repository with it failed: {exc.message}",
                              hint="run `restic key list` and remove the newest unknown key, then retry") from None
    current = [k["id"] for k in keys if k.get("current")]
    if len(current) != 1:
        raise RepositoryError(f"restic added a key to {_where(access)} but drtool cannot tell which one",
                              hint="run `restic key list` and remove unknown keys")
    return str(current[0])


def _type_passwords(access: Access, new_password: Secret, timeout: float) -> None:
    """Run `restic key add` under a pty and answer its three prompts."""
    import pexpect

    from drtool.engine.restic import RESTIC, _base_env

    env = {k: v for k, v in child_env(_base_env(access)).items() if k not in _PASSWORD_VARS}  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    try:
        child = pexpect.spawn(RESTIC, ["key", "add"], env=env, timeout=timeout, encoding="utf-8",
                              codec_errors="replace", echo=False)
    except pexpect.ExceptionPexpect:
        raise RepositoryError(f"cannot start {RESTIC!r} to add a key", hint="install restic (0.14 or newer)") from None
    transcript: list[str] = []
    try:
        _answer(child, PROMPT_CURRENT, access.password, deadline, transcript, access)
        _answer(child, PROMPT_NEW, new_password, deadline, transcript, access)
        _answer(child, PROMPT_AGAIN, new_password, deadline, transcript, access)
        _expect(child, [pexpect.EOF], deadline, transcript, access)
    finally:
        child.close(force=True)
    if child.exitstatus != 0:
        raise _add_error(access, child.exitstatus, "".join(transcript))


def _answer(child: Any, prompt: str, password: Secret, deadline: float, transcript: list[str], access: Access) -> None:
    import pexpect

    # A second "enter password for repository" means restic rejected the current one
    # (on a terminal it offers three tries); stop at the first refusal.
    patterns = [prompt, pexpect.EOF] if prompt == PROMPT_CURRENT else [prompt, PROMPT_CURRENT, pexpect.EOF]
    index = _expect(child, patterns, deadline, transcript, access)
    if patterns[index] is not prompt:
        text = "".join(transcript)
        if patterns[index] == PROMPT_CURRENT:
            raise _add_error(access, 1, text + "\nwrong password or no key found")
        child.close(force=True)
        raise _add_error(access, child.exitstatus, text)
    child.sendline(password.reveal())


def _expect(child: Any, patterns: list[Any], deadline: float, transcript: list[str], access: Access) -> int:
    import pexpect

    try:
        index = child.expect(patterns, timeout=max(0.1, deadline - time.monotonic()))
    except pexpect.TIMEOUT:
        transcript.append(child.before or "")
        raise RepositoryError(f"restic key add on {_where(access)} timed out",
                              hint="check that the repository storage is reachable, then retry; "
                                   f"restic said: {_tail(''.join(transcript))}") from None
    transcript.append((child.before or "") + (child.after if isinstance(child.after, str) else ""))
    return index


def _add_error(access: Access, code: int | None, output: str) -> RepositoryError:
    from drtool.engine.restic import classify_failure

    output = redact(output.replace("\r\n", "\n"))
    known = classify_failure(code, output, _where(access))
    if known is not None:
        return known
    return RepositoryError(f"restic key add failed on {_where(access)} (exit code {code}): {_tail(output)}")


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def _with_password(access: Access, password: Secret) -> Any:
    from dataclasses import replace

    # replace() keeps every other field (bandwidth limits too) of the access it derives from.
    return replace(access, password=password, env=dict(access.env))


def _restic(access: Access) -> Any:
    from drtool.engine.restic import Restic

    return Restic(_with_password(access, access.password))


def _where(access: Access) -> str:
    # URLs of rest: repositories may carry user:password@; never print those.
    return re.sub(r"//[^/@\s]+@", "//***@", access.url)
