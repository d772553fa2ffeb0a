"""Host keys: the known_hosts file drtool trusts, and how an offered key compares with it.

Nothing is ever added automatically: an unknown or changed key is an error naming the
offered SHA256 fingerprint, and `drtool hosts trust NAME` records a key after the admin
checked it. The file is written atomically, 0600 in a 0700 directory; other hosts' lines
and comments are kept, hashed (`|1|`) entries are understood.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drtool.errors import RemoteError
from drtool.remote.commands import fingerprint


@dataclass(frozen=True)
class HostKey:
    """A public host key as known_hosts stores it."""

    kind: str            # ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa
    blob: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def line(self, hostname: str) -> str:
        return f"{hostname} {self.kind} {base64.b64encode(self.blob).decode()}\n"


def key_status(known: Sequence[HostKey], offered: HostKey) -> str:
    """'trusted' when recorded, 'unknown' when the host has no entry, else 'changed'."""
    if offered in known:
        return "trusted"
    return "changed" if known else "unknown"


# ------------------------------------------------------------------ known_hosts

def _entry_matches(names: Sequence[str], hostname: str) -> bool:
    import paramiko

    for name in names:
        if name == hostname:
            return True
        if name.startswith("|1|") and paramiko.HostKeys.hash_host(hostname, name) == name:
            return True
    return False


def _known_entries(path: Path) -> Iterator[tuple[str, Any]]:
    """(raw line, parsed entry or None) for each line of a known_hosts file."""
    import paramiko

    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RemoteError(f"cannot read known_hosts file {path}: {exc.strerror}",
                          hint="check its permissions; drtool needs to read it") from None
    for line in text.splitlines(keepends=True):
        entry = None
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            except Exception:  # noqa: BLE001 - unreadable lines are kept untouched, never trusted
                entry = None
        yield line, entry


def known_keys(path: Path, hostname: str) -> list[HostKey]:
    """Every key recorded for hostname (hashed entries included); revoked (@revoked) lines are skipped."""
    keys = []
    for line, entry in _known_entries(path):
        if entry is None or entry.key is None or line.startswith("@"):
            continue
        if _entry_matches(entry.hostnames, hostname):
            keys.append(HostKey(entry.key.get_name(), entry.key.asbytes()))
    return keys


def record_host_key(path: Path, hostname: str, key: HostKey) -> None:
    """Make `key` the only trusted key for hostname in the known_hosts file.

    Other hosts' lines and comments are kept. Written atomically (a crash
    never leaves a half file) with mode 0600 in a 0700 directory.
    """
    kept = [line for line, entry in _known_entries(path)
            if entry is None or not _entry_matches(entry.hostnames, hostname)]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(kept) + key.line(hostname))
    os.replace(tmp, path)
