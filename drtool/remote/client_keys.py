"""The private keys drtool logs in with: a key by reference, a key file (0600), or ssh-agent."""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from drtool.errors import RemoteError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import paramiko


def load_private_key(text: str, where: str) -> paramiko.PKey:
    """Parse an OpenSSH or PEM private key (ed25519, ecdsa, rsa); never echoes the text."""
    import paramiko

    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise RemoteError(f"the private key from {where} is protected by a passphrase",
                              hint="load it into ssh-agent and set use_agent: true, or use a key without passphrase") from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError) as exc:
            errors.append(type(exc).__name__)
    raise RemoteError(f"the private key from {where} is not an OpenSSH or PEM ed25519/ecdsa/rsa private key",
                      hint="generate one with `ssh-keygen -t ed25519 -N '' -f FILE`")


def read_key_file(path: Path) -> str:
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise RemoteError(f"cannot read SSH key file {path}: {exc.strerror}",
                          hint="check key_file in drtool.yaml and the file's permissions") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RemoteError(f"SSH key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                          hint=f"chmod 600 {path}")
    return text
