"""A real OpenSSH sshd for tests: 127.0.0.1, random port, temp host key, one authorized key.

`start_sshd(root)` writes everything under `root` (0700), runs
`/usr/sbin/sshd -D -e -f CONFIG` and returns an `SshServer`; `stop()` ends it.
The client key is generated with ssh-keygen so the file format is exactly what
admins have on disk (OpenSSH private key format).

Two options make a "remote host" out of this machine:
- `private_dirs`: sshd runs in its own mount namespace (unshare) with a fresh
  tmpfs on each of these directories, so files created there over SSH are
  invisible to the test process: they can only have come through SSH.
- `hide_programs`: sshd also listens on `alt_port`, where sessions get a PATH
  (a directory of symlinks to /usr/bin) that lacks these programs, e.g. a host
  without restic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port, wait_port

SSHD = "/usr/sbin/sshd"


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new passphrase-less key pair at path / path.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "drtool-test", "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True)
    return path


@dataclass
class SshServer:
    root: Path
    port: int
    host_key: Path           # private host key file (public at .pub)
    client_key: Path         # private key authorized for root
    config: Path
    log: Path
    proc: subprocess.Popen
    alt_port: int | None = None     # sessions on this port lack `hide_programs` on their PATH

    @property
    def address(self) -> str:
        return "127.0.0.1"

    def host_public_line(self) -> str:
        """The known_hosts line that trusts this server."""
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.host_public_line())
        path.chmod(0o600)
        return path

    def session_pids(self) -> list[int]:
        """sshd processes serving connections (descendants of the listener named sshd)."""
        found = []
        for pid in _descendants(self.proc.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("sshd"):
                found.append(pid)
        return found

    def drop_connections(self) -> int:
        """SIGKILL every per-connection sshd: clients see the TCP connection die."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        self.drop_connections()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _path_without(root: Path, hidden: tuple[str, ...]) -> str:
    """A PATH value like the usual one, minus the hidden programs."""
    bin_dir = root / "bin-without"
    bin_dir.mkdir(exist_ok=True)
    for entry in Path("/usr/bin").iterdir():
        if entry.name not in hidden:
            (bin_dir / entry.name).symlink_to(entry)
    return f"{bin_dir}:/usr/local/sbin:/usr/sbin"


def start_sshd(root: Path, *, host_key_kind: str = "ed25519", private_dirs: tuple[Path, ...] = (),
               hide_programs: tuple[str, ...] = ()) -> SshServer:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    # sshd's privilege-separation directory; Debian creates it only when the service starts.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key = keygen(root / f"host_{host_key_kind}", host_key_kind)
    client_key = keygen(root / "client_ed25519")
    authorized = root / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        f"PidFile {root / 'sshd.pid'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "MaxSessions 64",
        "MaxStartups 64",
        "LogLevel VERBOSE",
        "Subsystem sftp internal-sftp",
        "",
    ]))
    alt_port = None
    if hide_programs:
        alt_port = free_port()
        with open(config, "a") as out:
            out.write(f"Port {alt_port}\nMatch LocalPort {alt_port}\n    SetEnv PATH={_path_without(root, hide_programs)}\n")
    argv = [SSHD, "-D", "-e", "-f", str(config)]
    if private_dirs:
        for d in private_dirs:
            d.mkdir(parents=True, exist_ok=True)
        # Mount a tmpfs on each directory inside a private mount namespace, then become sshd.
        script = 'for d in "$@"; do [ "$d" = -- ] && break; mount -t tmpfs -o mode=0755 tmpfs "$d" || exit 1; done; ' \
                 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                *map(str, private_dirs), "--", *argv]
    log = root / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, proc, timeout=15)
        if alt_port:
            wait_port(alt_port, proc, timeout=15)
    except RuntimeError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}; sshd log:\n{log.read_text()[-2000:]}") from None
    server = SshServer(root, port, host_key, client_key, config, log, proc, alt_port)
    time.sleep(0.05)
    return server
