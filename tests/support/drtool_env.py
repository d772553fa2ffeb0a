"""A drtool setup in a temp dir on the rclone S3 fixture, and ways to run the CLI on it.

    env = make_env(tmp_path, s3_server, bucket)
    env.policy("docs", [{"name": "scans", "files": {"paths": [str(data)]}}], targets={"rpo": "1h"})
    env.playbook("docs-drill", {"policy": "docs", "steps": [...]})
    code, out, err = env.run("drill", "docs-drill", "--json")      # in-process, fast
    proc = env.run_subprocess("drill", "docs-drill")                # python -m drtool
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_PASSWORD = "drill-Repo-Pw-5e1b7d20"


@dataclass
class DrtoolEnv:
    root: Path
    config: Path
    s3: Any
    bucket: str
    prefix: str
    env: dict[str, str]          # variables the config's secret references need

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def repo_dir(self) -> Path:
        """Where rclone keeps the repository's objects on disk."""
        return self.s3.root / self.bucket / self.prefix

    def policy(self, name: str, sources: list[dict], **extra: Any) -> Path:
        path = self.root / "policies" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "repository": "offsite", "sources": sources, **extra},
                                       sort_keys=False))
        return path

    def playbook(self, name: str, doc: dict) -> Path:
        path = self.root / "playbooks" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **doc}, sort_keys=False))
        return path

    def settings(self):  # noqa: ANN201
        from drtool.config import load_settings
        with self._environ():
            return load_settings(str(self.config))

    @contextlib.contextmanager
    def _environ(self):  # noqa: ANN202
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def run(self, *args: str) -> tuple[int, str, str]:
        """drtool.cli.main in this process; returns (exit code, stdout, stderr)."""
        from drtool.cli import main

        out, err = io.StringIO(), io.StringIO()
        with self._environ(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["-c", str(self.config), *args])
        return code, out.getvalue(), err.getvalue()

    def run_json(self, *args: str) -> tuple[int, Any, str]:
        code, out, err = self.run(*args, "--json")
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            return code, json.loads(lines[-1]) if lines else None, err
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None

    def start_subprocess(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "drtool", "-c", str(self.config), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **self.env})

    def run_subprocess(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "drtool", "-c", str(self.config), *args],
                              capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout)

    def backup(self, policy: str) -> None:
        code, out, err = self.run("backup", policy)
        assert code == 0, f"backup {policy} failed ({code}):\n{out}\n{err}"


def make_env(root: Path, s3: Any, bucket: str, prefix: str = "repo") -> DrtoolEnv:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "playbooks").mkdir(exist_ok=True)
    pw = root / "repo.pass"
    pw.write_text(REPO_PASSWORD)
    pw.chmod(0o600)
    config = {
        "state_dir": str(root / "state"),
        "hostname": "drill-test",
        "repositories": {"offsite": {
            "url": s3.repo_url(bucket, prefix),
            "password": {"file": str(pw)},
            "s3": {"access_key_id": {"env": "DRILL_S3_KEY"}, "secret_access_key": {"env": "DRILL_S3_SECRET"}},
        }},
    }
    path = root / "drtool.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return DrtoolEnv(root, path, s3, bucket, prefix, {"DRILL_S3_KEY": s3.access_key, "DRILL_S3_SECRET": s3.secret_key})


# ---------------------------------------------------------------- leftovers

@contextlib.contextmanager
def private_tmp():
    """Point tempfile (this process) and $TMPDIR (children) at a fresh directory, so every
    scratch dir and server of a drill can be found there. Mode 1777 like /tmp: the
    postgres user passes through it, mariadbd writes its temp files to $TMPDIR."""
    base = Path(tempfile.mkdtemp(prefix="drilltest-"))
    base.chmod(0o1777)   # like /tmp: mariadbd writes temp files to $TMPDIR as the mysql user
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(base)
    os.environ["TMPDIR"] = str(base)
    try:
        yield base
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def servers_under(base: Path) -> set[int]:
    """postgres / mariadbd processes whose command line points into `base`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if comm in ("postgres", "mariadbd", "mysqld") and str(base) in cmdline:
            found.add(int(entry.name))
    return found


def child_pids() -> set[int]:
    from drtool.actions.drill.timing import descendants
    return descendants(os.getpid())


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_no_leftovers(base: Path, children_before: set[int], ports: tuple[int, ...] = ()) -> None:
    """Nothing a drill started is still there: temp dirs, servers, child processes, ports."""
    import time
    deadline = time.monotonic() + 5
    while True:
        dirs = sorted(p.name for p in base.iterdir())
        servers = servers_under(base)
        children = child_pids() - children_before
        held = [p for p in ports if port_open(p)]
        if not (dirs or servers or children or held) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not dirs, f"temp dirs left behind: {dirs}"
    assert not servers, f"database servers left running: {servers}"
    assert not children, f"child processes left running: {children}"
    assert not held, f"ports still held: {held}"


@contextlib.contextmanager
def data_root():
    """A directory for "production" files outside /tmp.

    restic lists every parent of a backed-up path; /tmp's sticky bit then makes
    drtool.sources.files.verify_tree report a false mode difference (Go's
    ModeSticky is not 0o1000; reported to its owner), so test data lives under
    a plain directory instead."""
    import shutil
    parent = Path.home() / ".cache" / "drtool-tests"
    parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="data-", dir=parent))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
