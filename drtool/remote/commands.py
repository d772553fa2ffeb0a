"""What drtool sends to a remote host, as pure functions: the command line, the env payload.

- Commands are sent as one `sh -c` line built from the argv (`shlex.join`): the remote
  login shell parses it back into exactly that argv.
- Environment values (passwords such as PGPASSWORD) never travel in the command line:
  they are sent as the first lines of the channel's stdin and the prelude's `read`
  consumes them, so they appear in no argv on either machine and in no log.
- The prelude announces the program's pid first (`drtool-pid N`), so drtool can signal
  it later, and anything a login script printed before it is set apart from the output.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence

from drtool.errors import UsageError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RSA host keys are recorded as ssh-rsa but negotiated under these names.
_RSA_ALGS = ("rsa-sha2-512", "rsa-sha2-256")


def known_hosts_name(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: bare for port 22, else [addr]:port."""
    return address if port == 22 else f"[{address}]:{port}"


def fingerprint(key_blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (as `ssh-keygen -l` prints it)."""
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


PID_MARKER = b"drtool-pid "


def remote_command(argv: Sequence[str], env_names: Sequence[str] = (), cwd: str | None = None) -> str:
    """The command line sent to the remote shell. It never contains env values.

    A POSIX sh prelude first prints `drtool-pid $$` on stdout (so drtool can
    signal the program later, and anything a login script printed before it
    is set apart from the program's output), then reads one stdin line per
    variable (`read` takes exactly one line from a pipe, leaving the rest for
    the program), exports it, changes directory, and execs argv unchanged,
    keeping the announced pid.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise UsageError("no command to run over SSH")
    steps = ['echo "drtool-pid $$"']
    for name in env_names:
        if not ENV_NAME.match(name):
            raise UsageError(f"environment variable name {name!r} is not valid for a remote command")
        steps.append(f"IFS= read -r {name} || exit 125; export {name}")
    args = ["drtool-remote"]
    if cwd is not None:
        steps.append('cd -- "$1" || exit 125; shift')
        args.append(cwd)
    steps.append('exec "$@"')
    return shlex.join(["sh", "-c", "; ".join(steps), *args, *argv])


def parse_pid_line(line: bytes) -> int | None:
    """The pid from the prelude's marker line, or None for any other line."""
    if line.startswith(PID_MARKER) and line.endswith(b"\n"):
        digits = line[len(PID_MARKER):-1]
        if digits.isdigit():
            return int(digits)
    return None


def env_payload(env: Mapping[str, str]) -> bytes:
    """The stdin lines the prelude of `remote_command` reads, in the same order."""
    lines = []
    for name, value in env.items():
        if "\n" in value or "\0" in value:
            # The value itself is never quoted back: it may be a password.
            raise UsageError(f"the value of {name} contains a newline or NUL byte and cannot be sent to a remote command")
        lines.append(value + "\n")
    return "".join(lines).encode()


def preferred_key_types(known_types: Sequence[str], defaults: Sequence[str]) -> list[str]:
    """Ask the server for a key type we already trust first, as OpenSSH does.

    Otherwise a server holding several host keys could offer one we have not
    recorded and look like a changed host.
    """
    wanted: list[str] = []
    for kind in known_types:
        wanted += list(_RSA_ALGS) if kind == "ssh-rsa" else [kind]
    first = [k for k in wanted if k in defaults]
    return first + [k for k in defaults if k not in first]


def backoff_delays(attempts: int, base: float = 0.5, cap: float = 8.0) -> list[float]:
    """Sleep before each retry: base, 2*base, 4*base... capped."""
    return [min(cap, base * 2**i) for i in range(max(0, attempts - 1))]
