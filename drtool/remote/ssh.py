"""The paramiko adapter: run programs on another host over SSH, stream their output.

`SshRunner` implements the `drtool.execute.Runner` protocol, so every source
works on a remote host exactly as it does locally: a dump started with
`runner.start(argv)` streams its stdout over the SSH channel.

One SSH connection per runner (opened on first use, reopened once if it died while
idle, retried with backoff when refused or timed out; never retried for a host key or
login failure), one channel per command. The pieces:

    commands.py     the command line and env payload sent to the host (pure)
    known_hosts.py  host keys: known_hosts reading/recording, trusted/unknown/changed
    client_keys.py  the private keys drtool logs in with
    process.py      SshProcess: a remote program as a Process
    ssh.py          SshRunner: the connection, authentication, run/start (this file)

paramiko is imported inside functions so that `drtool --help` stays instant.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from drtool.config.models import Host
from drtool.errors import CommandError, DrtoolError, RemoteError, UsageError
from drtool.execute import DEFAULT_TIMEOUT, Result
from drtool.remote.client_keys import load_private_key, read_key_file
from drtool.remote.commands import (backoff_delays, env_payload, fingerprint, known_hosts_name, parse_pid_line,
                                    preferred_key_types, remote_command)
from drtool.remote.known_hosts import HostKey, key_status, known_keys, record_host_key
from drtool.remote.process import LOST_CONNECTION_CODE, SshProcess, _Collector
from drtool.secrets import redact

__all__ = ["HostKey", "SshProcess", "SshRunner", "backoff_delays", "env_payload", "fingerprint", "key_status",
           "known_hosts_name", "known_keys", "load_private_key", "parse_pid_line", "preferred_key_types",
           "read_key_file", "record_host_key", "remote_command"]

log = logging.getLogger(__name__)

# Big windows keep a fast dump from waiting on window adjustments; the packet
# size is what we accept per message (OpenSSH sends up to 32 KiB anyway).
WINDOW_SIZE = 32 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
KEEPALIVE_S = 15


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

    def connection_alive(self) -> bool:
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
              stdin: bool = False, cwd: str | None = None, pass_fds: Sequence[int] = ()) -> SshProcess:
        import paramiko

        _no_fds(pass_fds, self.where)
        argv = [str(a) for a in argv]
        env = dict(env or {})
        command = remote_command(argv, list(env), cwd)
        payload = env_payload(env)
        log.debug("ssh %s: %s", self.host_name, redact(command))
        channel = self._open_channel()
        try:
            channel.exec_command(command)
            return SshProcess(channel, argv, self.where, payload=payload, stdin=stdin,
                              start_timeout=max(30.0, self.host.connect_timeout),
                              signal_remote=self.signal_remote, connection_alive=self.connection_alive)
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
            cwd: str | None = None, pass_fds: Sequence[int] = ()) -> Result:
        _no_fds(pass_fds, self.where)
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

    def signal_remote(self, pid: int, signal_name: str) -> None:
        """Signal the program's process group (its pid, if it leads none); best effort."""
        if not self.connection_alive():
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


def _no_fds(pass_fds: Sequence[int], where: str) -> None:
    if pass_fds:
        raise UsageError(f"file descriptors cannot be passed to a program on {where}",
                         hint="send secrets through the env mechanism (stdin of the prelude) instead")


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
