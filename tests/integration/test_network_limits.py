"""Bandwidth limits of a repository: every real restic process gets them, and a backup works."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml

from tests.support.drtool_env import data_root, make_env

pytestmark = pytest.mark.integration

# Stands in for restic: writes its argv to a log, then runs the real restic with it.
SHIM = """#!{python}
import os, sys
with open({log!r}, "a") as fh:
    fh.write("\\t".join(sys.argv[1:]) + "\\n")
os.execv({restic!r}, [{restic!r}, *sys.argv[1:]])
"""


def test_limits_reach_every_restic_invocation_of_a_real_backup_and_restore(tmp_path, s3_server, bucket) -> None:
    log = tmp_path / "restic-argv.log"
    shim = tmp_path / "restic-shim"
    shim.write_text(SHIM.format(python=sys.executable, log=str(log), restic=shutil.which("restic")))
    shim.chmod(0o755)
    env = make_env(tmp_path / "setup", s3_server, bucket)
    config = yaml.safe_load(env.config.read_text())
    config["repositories"]["offsite"].update({"limit_upload": "4MiB/s", "limit_download": 3000})
    env.config.write_text(yaml.safe_dump(config))
    env.env["DRTOOL_RESTIC"] = str(shim)
    with data_root() as data:
        (data / "scans").mkdir()
        (data / "scans" / "ktp-1.pdf").write_bytes(b"%PDF scan\n" * 3000)
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(data / "scans")]}}])
        backup = env.run_subprocess("backup", "docs")
        assert backup.returncode == 0, backup.stderr
        restore = env.run_subprocess("restore", "docs", "--source", "scans", "--target", str(tmp_path / "out"))
        assert restore.returncode == 0, restore.stderr
        restored = tmp_path / "out" / str(data / "scans").lstrip("/") / "ktp-1.pdf"
        assert restored.read_bytes() == (data / "scans" / "ktp-1.pdf").read_bytes()

    calls = [line.split("\t") for line in log.read_text().splitlines()]
    seen = set().union(*calls)
    assert {"backup", "restore", "snapshots", "dump"} & seen >= {"backup", "restore", "snapshots"}
    for argv in calls:
        assert argv[argv.index("--limit-upload") + 1] == "4096", argv
        assert argv[argv.index("--limit-download") + 1] == "3000", argv
