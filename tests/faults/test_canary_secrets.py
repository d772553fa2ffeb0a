"""The canary test: a unique repository password, S3 secret key and a secret read from the
environment ({env: NAME}, here a webhook header) never appear where they must not.

While a backup (PostgreSQL + files, with before/after hooks), a drill (with a command step),
a restore and a check run at debug log level, every process on the machine is sampled
(argv and environment, /proc): the password is in none (it reaches restic through a pipe),
the S3 secret only in restic's environment (restic 0.14 reads S3 keys nowhere else), the
environment secret only in drtool's own. Then the hooks' and the command's environments,
the logs, the reports (JSON, HTML), the catalog, every state file and every object in the
bucket are searched for all three."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    CANARY_ENV_SECRET,
    CANARY_PASSWORD,
    CANARY_S3_SECRET,
    CANARIES,
    assert_no_leak,
    next_run_succeeds,
    pg_site,
)

pytestmark = pytest.mark.integration

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


class ProcessWatch:
    """Samples every process's argv and environment (root reads all of /proc) until stopped."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[bytes, bytes, str]] = {}     # pid -> (cmdline, environ, comm), first sight
        self.own: set[int] = set()          # the test's own children (its S3 server, its bare restic checks)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def __enter__(self) -> ProcessWatch:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _scan(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for name in os.listdir("/proc"):
                if not name.isdigit() or int(name) == me:
                    continue
                try:
                    cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                    environ = Path(f"/proc/{name}/environ").read_bytes()
                    comm = Path(f"/proc/{name}/comm").read_text().strip()
                    stat = Path(f"/proc/{name}/stat").read_bytes()
                except OSError:
                    continue
                key = int(name)
                if int(stat[stat.rfind(b")") + 2:].split()[1]) == me and not _is_drtool(cmdline):
                    self.own.add(key)
                if key not in self.seen or self.seen[key][0] != cmdline:
                    self.seen[key] = (cmdline, environ, comm)
            self.samples += 1
            time.sleep(0.005)


def _is_drtool(cmdline: bytes) -> bool:
    return b"-m\x00drtool\x00" in cmdline


def test_canary_secrets_stay_where_they_belong(make_site, pg_server, receiver, tmp_path) -> None:  # noqa: ANN001
    site = pg_site(make_site, pg_server, receiver)
    (site.data / "akta").mkdir()
    (site.data / "akta" / "surat.txt").write_text("Surat keterangan\n" * 50)
    envs = tmp_path / "envs"
    envs.mkdir()
    hook = [sys.executable, "-c", DUMP_ENV]
    site.policy("siak", [{"name": "siak-db", "postgres": {"database": site.pg_db, "port": pg_server.port,
                                                         "bin_dir": pg_server.bin_dir}},
                         {"name": "scans", "files": {"paths": [str(site.data / "akta")]}}],
                hooks={"before": [[*hook, str(envs / "before.json")]], "after": [[*hook, str(envs / "after.json")]]})
    site.playbook("siak-drill", {"policy": "siak", "targets": {"rto": "1h"}, "steps": [
        {"name": "restore db", "restore": {"source": "siak-db"}},
        {"name": "restore files", "restore": {"source": "scans"}},
        {"name": "command", "command": [*hook, str(envs / "command.json")]}]})
    reports = tmp_path / "reports"

    with ProcessWatch() as watch:
        next_run_succeeds(site, "siak", ["siak-db"], ["scans"])
        drill = site.drtool("-vv", "drill", "siak-drill", "--report-dir", str(reports),
                            "--html", str(tmp_path / "drill.html"))
        restore = site.drtool("-vv", "restore", "siak", "--source", "scans", "--target", str(tmp_path / "restored"))
        check = site.drtool("-vv", "check", "siak")
    assert drill.returncode == 0, drill.stdout[-3000:] + drill.stderr[-3000:]
    assert restore.returncode == 0 and check.returncode == 0, restore.stderr + check.stderr
    assert watch.samples > 50

    # argv and environments of every process seen
    restics = drtools = 0
    for pid, (cmdline, environ, comm) in watch.seen.items():
        if pid in watch.own:
            continue                       # the test's S3 server (key in argv) and its bare restic checks
        for canary in CANARIES:
            assert canary.encode() not in cmdline, f"{canary[:16]}... in the argv of {comm} ({pid})"
        assert CANARY_PASSWORD.encode() not in environ, f"the repository password in the environment of {comm}"
        if comm == "restic":
            restics += 1
        elif CANARY_S3_SECRET.encode() in environ:
            raise AssertionError(f"the S3 secret in the environment of {comm} ({pid}): only restic may have it")
        if _is_drtool(cmdline):
            drtools += 1
        elif CANARY_ENV_SECRET.encode() in environ:
            raise AssertionError(f"a secret from drtool's environment reached {comm} ({pid}): {cmdline[:200]!r}")
    assert restics >= 5 and drtools >= 4, (restics, drtools)

    # what hooks and commands got: drtool's documented variables and a plain environment, no secret
    for name in ("before", "after", "command"):
        env = json.loads((envs / f"{name}.json").read_text())
        assert not [k for k, v in env.items() if any(c in v for c in CANARIES)], name
        assert not [k for k in env if k.startswith(("AWS_", "RESTIC_", "FAULT_"))], (name, sorted(env))
    assert json.loads((envs / "before.json").read_text())["DRTOOL_POLICY"] == "siak"

    # logs (debug level: every command line drtool ran is logged), reports, records, state, bucket
    assert all("DEBUG drtool.execute: " in p.stderr for p in (drill, restore, check))
    for path in [*reports.rglob("*"), tmp_path / "drill.html"]:
        if path.is_file():
            assert not any(c.encode() in path.read_bytes() for c in CANARIES), path
    assert reports.exists() and any(reports.iterdir())
    assert_no_leak(site)
