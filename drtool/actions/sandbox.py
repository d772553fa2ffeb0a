"""A sandbox that has nothing but the recovery kit: what a fire drill recovers in.

    with fire_sandbox() as box:
        outcome = run_recover(box, kit, KitKey(passphrase=...), policy="siak", timeout=3600)

The sandbox is a fresh directory with an empty HOME, an empty TMPDIR, a place
for recovered servers and a restore root. Every program runs under `env -i`
with only PATH, HOME, TMPDIR, LANG (and PYTHONPATH / DRTOOL_RESTIC when set,
so the same drtool is found): no drtool.yaml, no state dir, no AWS_* or other
secret of this machine. The kit passphrase reaches the child through an
inherited pipe, never argv or the environment. Leaving the block stops every
database server whose command line points into the sandbox, then removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drtool.actions.kit_open import KitKey
from drtool.execute import LocalRunner
from drtool.secrets import redact

SERVER_COMMS = ("postgres", "mariadbd", "mysqld")
KEPT_VARIABLES = ("PYTHONPATH", "DRTOOL_RESTIC")     # where drtool and restic are; no secrets


@dataclass(frozen=True)
class Sandbox:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def servers(self) -> Path:
        return self.root / "servers"

    @property
    def restore_root(self) -> Path:
        return self.root / "restore"

    @property
    def work(self) -> Path:
        return self.home / "recovery"

    def env(self, path: str | None = None) -> dict[str, str]:
        env = {"PATH": path or os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.home),
               "TMPDIR": str(self.tmp), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env.update({k: os.environ[k] for k in KEPT_VARIABLES if os.environ.get(k)})
        return env

    def take_kit(self, kit: Path) -> Path:
        """A private copy of the kit in the sandbox HOME: the only file it starts with."""
        copy = self.home / Path(kit).name
        shutil.copyfile(kit, copy)
        copy.chmod(0o600)
        return copy


@contextlib.contextmanager
def fire_sandbox(parent: Path | None = None) -> Iterator[Sandbox]:
    """`parent`: where the sandbox is made (default $TMPDIR); the drill pool keeps each job's
    sandbox in its own leased directory, so the next worker can find what a dead one left."""
    # 0711 down to the server dirs: the postgres / mysql OS users must reach their directories.
    # Short under a parent: a server's socket path (below servers/POLICY/SOURCE/) must stay within 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="box-" if parent else "drtool-fire-drill-", dir=parent))
    root.chmod(0o711)
    box = Sandbox(root)
    for path, mode in ((box.home, 0o700), (box.tmp, 0o1777), (box.servers, 0o711), (box.restore_root, 0o700)):
        path.mkdir()
        path.chmod(mode)
    try:
        yield box
    finally:
        stop_servers_under(root)
        shutil.rmtree(root, ignore_errors=True)


def bare_path(extra: Sequence[str] = ()) -> str:
    """PATH without any directory that holds drtool: the runbook variant proves it is not needed."""
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d and not os.path.exists(os.path.join(d, "drtool"))]
    for system in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if system not in dirs:
            dirs.append(system)
    return ":".join([*extra, *dirs])


# ---------------------------------------------------------------- drtool recover in the sandbox

@dataclass
class RecoverOutcome:
    code: int | None
    report: dict[str, Any] | None       # recover's JSON report, when it printed one
    error: str                          # its last error lines, when it failed
    duration_s: float


def recover_argv(box: Sandbox, kit: Path, policy: str, *, fd: int | None, identity: Path | None,
                 host: str | None) -> list[str]:
    env = [f"{k}={v}" for k, v in box.env().items()]
    argv = ["env", "-i", *env, sys.executable, "-m", "drtool", "recover", "--kit", str(kit), "--policy", policy,
            "--target-root", str(box.restore_root), "--data-dir", str(box.servers),
            "--state-dir", str(box.root / "state"), "--no-machine-key", "--json"]
    if host:
        argv += ["--host", host]
    if identity is not None:
        return [*argv, "--identity", str(identity)]
    return [*argv, "--passphrase-fd", str(fd)]


def run_recover(box: Sandbox, kit: Path, key: KitKey, policy: str, *, timeout: float,
                host: str | None = None) -> RecoverOutcome:
    identity = None
    if key.identity_file is not None:
        identity = box.home / "identity"
        shutil.copyfile(key.identity_file, identity)
        identity.chmod(0o600)
    read_fd = None
    if key.passphrase is not None:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, key.passphrase.encode("utf-8") + b"\n")
        os.close(write_fd)
    started = time.monotonic()
    try:
        result = LocalRunner().run(recover_argv(box, kit, policy, fd=read_fd, identity=identity, host=host),
                                   timeout=timeout, check=False, cwd=str(box.home),
                                   pass_fds=() if read_fd is None else (read_fd,))
    finally:
        if read_fd is not None:
            os.close(read_fd)
    took = time.monotonic() - started
    out = result.stdout.decode("utf-8", "replace").strip()
    report = None
    if out:
        try:
            report = json.loads(out.splitlines()[-1])
        except ValueError:
            report = None
    error = redact(result.stderr.decode("utf-8", "replace")).strip()
    return RecoverOutcome(result.returncode, report, _tail(error), took)


# ---------------------------------------------------------------- the runbook in the sandbox

@dataclass
class RunbookOutcome:
    code: int | None
    output: str
    duration_s: float
    problem: str | None = None          # why drtool stopped it (a prompt it cannot answer, a timeout)


def run_runbook(box: Sandbox, script: Path, env: dict[str, str], passphrase: str | None, *,
                timeout: float) -> RunbookOutcome:
    """`bash -e SCRIPT` on a terminal (age reads a passphrase from the terminal only)."""
    import pexpect

    started = time.monotonic()
    child = pexpect.spawn("bash", ["-e", str(script)], env=env, cwd=str(box.home), encoding="utf-8",
                          codec_errors="replace", timeout=timeout, echo=False)
    seen: list[str] = []
    problem = None
    try:
        problem = _answer_prompts(child, passphrase, seen, started + timeout)
    finally:
        child.close(force=True)
    text = redact("".join(seen).replace("\r\n", "\n"))
    return RunbookOutcome(child.exitstatus if child.exitstatus is not None else child.signalstatus,
                          _tail(text, 30), time.monotonic() - started, problem)


def _answer_prompts(child: Any, passphrase: str | None, seen: list[str], deadline: float) -> str | None:
    import pexpect

    prompts = ["Enter passphrase", "S3 access key id:", "S3 secret access key:", pexpect.EOF]
    while True:
        try:
            index = child.expect(prompts, timeout=max(1.0, deadline - time.monotonic()))
        except pexpect.TIMEOUT:
            seen.append(child.before or "")
            return "the runbook did not finish within the drill's timeout"
        seen.append((child.before or "") + (child.after if isinstance(child.after, str) else ""))
        if index == 3:
            return None
        if index == 0 and passphrase is not None:
            child.sendline(passphrase)
            continue
        if index == 0:
            return "age asked for a passphrase, but this kit is opened with an identity"
        return ("the runbook asked for S3 credentials: the kit holds none, and a sandbox has nothing else "
                "(make the kit with --with-credentials)")


# ---------------------------------------------------------------- teardown

def stop_servers_under(root: Path, grace: float = 15.0) -> int:
    """Interrupt, then kill, database servers whose command line points into `root`."""
    pids = servers_under(root)
    for pid in pids:
        _signal(pid, signal.SIGINT)          # postgres: fast shutdown; mariadbd: ignores, killed below
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and servers_under(root):
        time.sleep(0.1)
    for pid in servers_under(root):
        _signal(pid, signal.SIGKILL)
    return len(pids)


def servers_under(root: Path) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if comm in SERVER_COMMS and str(root) in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
