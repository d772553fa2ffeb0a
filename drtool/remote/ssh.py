"""The paramiko adapter: run programs on another host over SSH, stream their output.

`SshRunner` implements the `drtool.execute.Runner` protocol, so every source
works on a remote host exactly as it does locally: a dump started with
`runner.start(argv)` streams its stdout over the SSH channel.

Choices that matter:
- One SSH connection per runner, one channel per command; commands are sent as
  `shlex.join(argv)` (the remote login shell parses them back into argv).
- Environment values (passwords such as PGPASSWORD) never travel in the
  command line: they are sent as the first lines of the channel's stdin and a
  tiny `sh -c 'read ...; export ...; exec "$@"'` prelude consumes them, so they
  appear in no argv on either machine and in no log.
- Host keys are checked against a known_hosts file with nothing auto-added;
  unknown or changed keys raise RemoteError with the offered SHA256 fingerprint.
- stderr is drained in its own thread: stdout and stderr share one SSH window,
  so a chatty program would otherwise stall its own stdout.
- A command that ends without an exit status (connection dropped, killed by a
  signal) reports 255, like ssh(1), so callers never mistake it for success.

paramiko is imported inside functions so that `drtool --help` stays instant.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import shlex
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from drtool.config.models import Host
from drtool.errors import CommandError, DrtoolError, RemoteError, UsageError
from drtool.execute import DEFAULT_TIMEOUT, Result, StderrTail
from drtool.secrets import redact

if TYPE_CHECKING:  # pragma: no cover - typing only
    import paramiko

log = logging.getLogger(__name__)

# Big windows keep a fast dump from waiting on window adjustments; the packet
# size is what we accept per message (OpenSSH sends up to 32 KiB anyway).
WINDOW_SIZE = 32 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
READ_SIZE = 1024 * 1024
KEEPALIVE_S = 15
LOST_CONNECTION_CODE = 255
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RSA host keys are recorded as ssh-rsa but negotiated under these names.
_RSA_ALGS = ("rsa-sha2-512", "rsa-sha2-256")


# ------------------------------------------------------------------ pure logic

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


# ------------------------------------------------------------------ client keys

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


# ------------------------------------------------------------------ channel file objects

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
                 payload: bytes, stdin: bool, runner: SshRunner, start_timeout: float) -> None:
        self.argv = argv
        self.where = where
        self._chan = channel
        self._runner = runner
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
        elif not self._runner._transport_alive():
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
            self._runner._signal_remote(self.pid, name)

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


# ------------------------------------------------------------------ runner

class SshRunner:
    """Run programs on `host` over one SSH connection (opened on first use)."""

    def __init__(self, host: Host, *, known_hosts: Path, hosts: dict[str, Host] | None = None,
                 host_name: str | None = None, retries: int = 3, backoff: float = 0.5,
                 keepalive: int = KEEPALIVE_S, _chain: tuple[str, ...] = ()) -> None:
        self.host = host
        self.host_name = host_name or host.address
        self.known_hosts = Path(host.known_hosts) if host.known_hosts else known_hosts
        self.hosts = hosts or {}
        self.retries = max(1, retries)
        self.backoff = backoff
        self.keepalive = keepalive
        self.name = f"ssh:{self.host_name}"
        self._chain = (*_chain, self.host_name)
        self._lock = threading.Lock()
        self._transport: Any = None
        self._jump: SshRunner | None = None

    # -- identity and messages

    @property
    def where(self) -> str:
        return f"host {self.host_name} ({self.host.user}@{self.host.address}:{self.host.port})"

    @property
    def hostname(self) -> str:
        return known_hosts_name(self.host.address, self.host.port)

    def __repr__(self) -> str:
        return f"SshRunner({self.host_name!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    # -- connection

    def connect(self) -> None:
        """Open and authenticate the connection now (errors surface here, not mid-backup)."""
        self._ready_transport()

    def _ready_transport(self) -> Any:
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            self._transport = self._connect_with_retries()
            return self._transport

    def _transport_alive(self) -> bool:
        t = self._transport
        return t is not None and t.is_active()

    def _connect_with_retries(self) -> Any:
        return self._retrying(self._connect_once)

    def _retrying(self, attempt_once: Callable[[], Any]) -> Any:
        """Retry what a new attempt may fix (refused, timed out, reset) with backoff.

        Host key and login failures are RemoteError, not _Retryable: retrying
        them would only hammer the host (and its fail2ban).
        """
        delays = backoff_delays(self.retries, self.backoff)
        reason = "no attempt made"
        for attempt in range(self.retries):
            try:
                return attempt_once()
            except _Retryable as exc:
                reason = exc.reason
                log.info("ssh %s: attempt %d failed: %s", self.host_name, attempt + 1, reason)
                if attempt < len(delays):
                    time.sleep(delays[attempt])
        raise RemoteError(f"cannot reach {self.where}: {reason} (tried {self.retries} times)",
                          hint=f"check that the host is up, sshd listens on port {self.host.port} and nothing "
                               f"blocks the connection; the address is hosts.{self.host_name} in drtool.yaml")

    def _open_socket(self) -> Any:
        timeout = self.host.connect_timeout
        if self.host.jump:
            return self._jump_channel(timeout)
        try:
            sock = socket.create_connection((self.host.address, self.host.port), timeout=timeout)
        except TimeoutError:
            raise _Retryable(f"connection timed out after {timeout:.0f}s") from None
        except OSError as exc:
            raise _Retryable(exc.strerror or type(exc).__name__) from None
        _tune_socket(sock)
        return sock

    def _jump_channel(self, timeout: float) -> Any:
        import paramiko

        jump_name = self.host.jump or ""
        if jump_name in self._chain:
            raise RemoteError(f"jump hosts form a loop: {' -> '.join((*self._chain, jump_name))}",
                              hint="fix the jump: settings in drtool.yaml")
        if jump_name not in self.hosts:
            raise RemoteError(f"{self.where} uses jump host {jump_name!r}, which is not in hosts: of drtool.yaml")
        if self._jump is None:
            self._jump = SshRunner(self.hosts[jump_name], known_hosts=self.known_hosts, hosts=self.hosts,
                                   host_name=jump_name, retries=self.retries, backoff=self.backoff,
                                   keepalive=self.keepalive, _chain=self._chain)
        transport = self._jump._ready_transport()
        try:
            return transport.open_channel("direct-tcpip", (self.host.address, self.host.port),
                                          ("127.0.0.1", 0), timeout=timeout,
                                          window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE)
        except paramiko.ChannelException as exc:
            raise _Retryable(f"jump host {jump_name} could not open a connection to it: {exc.text}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _Retryable(f"jump host {jump_name}: {exc}") from None

    def _start_transport(self, sock: Any, known: list[HostKey]) -> Any:
        import paramiko

        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                                       default_max_packet_size=MAX_PACKET_SIZE)
        options = transport.get_security_options()
        if known:
            options.key_types = preferred_key_types([k.kind for k in known], options.key_types)
        timeout = self.host.connect_timeout
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise _Retryable(f"SSH handshake failed: {exc}") from None
        return transport

    def _connect_once(self) -> Any:
        known = known_keys(self.known_hosts, self.hostname)
        transport = self._start_transport(self._open_socket(), known)
        try:
            self._verify_host_key(transport, known)
            self._authenticate(transport)
            transport.set_keepalive(self.keepalive)
        except BaseException:
            transport.close()
            raise
        return transport

    def _offered(self, transport: Any) -> HostKey:
        key = transport.get_remote_server_key()
        return HostKey(key.get_name(), key.asbytes())

    def _verify_host_key(self, transport: Any, known: list[HostKey]) -> None:
        offered = self._offered(transport)
        status = key_status(known, offered)
        if status == "trusted":
            return
        trust = f"drtool hosts trust {self.host_name}"
        if status == "unknown":
            raise RemoteError(
                f"the host key of {self.where} is not known: it offered {offered.kind} {offered.fingerprint} "
                f"(known_hosts: {self.known_hosts})",
                hint=f"check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run `{trust}`")
        recorded = ", ".join(k.fingerprint for k in known)
        raise RemoteError(
            f"the host key of {self.where} has CHANGED: it offered {offered.kind} {offered.fingerprint}, "
            f"known_hosts {self.known_hosts} has {recorded}. Someone may be intercepting the connection, "
            "or the host was reinstalled",
            hint=f"connect to nothing until you know why; if the host was rebuilt, verify the new fingerprint and run `{trust}`")

    def _client_keys(self) -> list[tuple[str, Any]]:
        import paramiko

        keys: list[tuple[str, Any]] = []
        if self.host.key is not None:
            where = f"hosts.{self.host_name}.key ({self.host.key.describe()})"
            keys.append((where, load_private_key(self.host.key.resolve().reveal(), where)))
        if self.host.key_file:
            path = Path(self.host.key_file).expanduser()
            keys.append((f"key file {path}", load_private_key(read_key_file(path), f"key file {path}")))
        if self.host.use_agent or not keys:
            try:
                agent_keys = paramiko.Agent().get_keys()
            except paramiko.SSHException:
                agent_keys = ()
            keys += [(f"ssh-agent key {fingerprint(k.asbytes())}", k) for k in agent_keys]
        return keys

    def _authenticate(self, transport: Any) -> None:
        import paramiko

        keys = self._client_keys()
        if not keys:
            raise RemoteError(f"no SSH key to log in to {self.where}",
                              hint=f"set hosts.{self.host_name}.key_file or key in drtool.yaml, or run ssh-agent with the key loaded")
        for label, key in keys:
            try:
                transport.auth_publickey(self.host.user, key)
                return
            except paramiko.AuthenticationException:
                log.info("ssh %s: %s refused", self.host_name, label)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise RemoteError(f"login to {self.where} failed: {exc}") from None
        tried = "; ".join(f"{label} ({fingerprint(key.asbytes())})" for label, key in keys)
        raise RemoteError(f"{self.where} refused the login as {self.host.user}: tried {tried}",
                          hint=f"add the public key to ~{self.host.user}/.ssh/authorized_keys on the host, "
                               f"or fix hosts.{self.host_name}.key / key_file / user")

    # -- host key trust (drtool hosts trust)

    def scan_host_key(self) -> tuple[HostKey, str, list[HostKey]]:
        """Connect without logging in: (offered key, 'trusted'|'unknown'|'changed', recorded keys)."""
        known = known_keys(self.known_hosts, self.hostname)
        transport = self._retrying(lambda: self._start_transport(self._open_socket(), known))
        try:
            offered = self._offered(transport)
        finally:
            transport.close()
        return offered, key_status(known, offered), known

    def trust(self, key: HostKey) -> None:
        record_host_key(self.known_hosts, self.hostname, key)

    # -- Runner protocol

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              stdin: bool = False, cwd: str | None = None) -> SshProcess:
        import paramiko

        argv = [str(a) for a in argv]
        env = dict(env or {})
        command = remote_command(argv, list(env), cwd)
        payload = env_payload(env)
        log.debug("ssh %s: %s", self.host_name, redact(command))
        channel = self._open_channel()
        try:
            channel.exec_command(command)
            return SshProcess(channel, argv, self.where, payload=payload, stdin=stdin,
                              runner=self, start_timeout=max(30.0, self.host.connect_timeout))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            raise RemoteError(f"{self.where} refused to run {argv[0]}: {exc}",
                              hint="check the host's sshd (MaxSessions, ForceCommand) and its logs") from None

    def _open_channel(self) -> Any:
        import paramiko

        for attempt in (1, 2):
            transport = self._ready_transport()
            try:
                channel = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE,
                                                 timeout=self.host.connect_timeout)
                channel.settimeout(None)
                return channel
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # A connection that died while idle is reopened once; a second failure is real.
                if attempt == 2 or transport.is_active():
                    raise RemoteError(f"cannot open an SSH session on {self.where}: {exc}") from None
        raise AssertionError("unreachable")

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT, check: bool = True,
            cwd: str | None = None) -> Result:
        argv = [str(a) for a in argv]
        deadline = time.monotonic() + timeout
        proc = self.start(argv, env=env, stdin=input is not None, cwd=cwd)
        collected = _Collector(proc, input)
        if not collected.finish(timeout):
            proc.kill()
            raise CommandError(argv, None, proc.stderr_tail(), what=f"{argv[0]} on {self.where}",
                               hint=f"it took longer than {timeout:.0f}s")
        try:
            code = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise CommandError(argv, None, proc.stderr_tail(), what=f"{argv[0]} on {self.where}",
                               hint=f"it took longer than {timeout:.0f}s") from None
        # The stderr tail (bounded, redacted), so callers can classify errors as they do locally.
        result = Result(argv, code, collected.stdout, proc.stderr_tail().encode())
        if check and code != 0:
            raise CommandError(argv, code, proc.stderr_tail(), what=f"{argv[0]} on {self.where}",
                               hint=self._hint_for(argv, code))
        return result

    def _hint_for(self, argv: list[str], code: int) -> str | None:
        if code == 127:
            return (f"{argv[0]} is not installed on {self.host_name}, or not on the PATH of "
                    f"{self.host.user}'s non-interactive shell there")
        if code == LOST_CONNECTION_CODE:
            return "check the network and the host; nothing from this run was kept"
        return None

    def _signal_remote(self, pid: int, signal_name: str) -> None:
        """Signal the program's process group (its pid, if it leads none); best effort."""
        if not self._transport_alive():
            return   # sshd already closed the program's pipes; it ends on its next read or write
        script = 'kill -s "$1" -- "-$2" 2>/dev/null || kill -s "$1" "$2"'
        try:
            self.run(["sh", "-c", script, "sh", signal_name, str(pid)], check=False, timeout=30)
        except DrtoolError as exc:
            log.warning("could not signal %s on %s: %s", pid, self.where, exc)

    def which(self, program: str) -> str | None:
        result = self.run(["sh", "-c", 'command -v "$1"', "sh", program], check=False, timeout=60)
        path = result.text.strip()
        return path if result.returncode == 0 and path.startswith("/") else None


class _Retryable(DrtoolError):
    """A connection attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


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


def _tune_socket(sock: socket.socket) -> None:
    """TCP keepalive and a user timeout: a silently dead peer is noticed in about a minute."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", 90_000), ("TCP_NODELAY", 1)):
        if hasattr(socket, option):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            except OSError:
                pass
    sock.settimeout(None)
