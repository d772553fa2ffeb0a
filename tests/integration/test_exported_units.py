"""Exported units work on the first night: each ExecStart runs with only what the unit provides.

systemd starts a service with an empty environment plus its own PATH, the unit's
Environment= and EnvironmentFile= variables, in `/`. These tests run the exported
ExecStart lines exactly so (subprocess with that environment and nothing inherited;
the secret values travel in the environment, never in argv), against real restic
and rclone S3, and the crontab lines through /bin/sh the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import drtool
from drtool.actions.schedule import crontab, env_file_instructions, env_secret_names
from drtool.actions.systemd import export_systemd
from drtool.catalog import Catalog
from drtool.rotation import RotationState
from tests.integration.test_notify import Receiver, receiver  # noqa: F401 - fixture
from tests.support.drtool_env import REPO_PASSWORD, DrtoolEnv, data_root, make_env

pytestmark = pytest.mark.integration

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # what systemd gives services


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def exec_argv(line: str) -> list[str]:
    """ExecStart= as systemd splits it: C-style double quotes, then %% -> % and $$ -> $."""
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line)]


def environment_file(path: Path) -> dict[str, str]:
    """KEY='value' lines as systemd's EnvironmentFile= reads them (quotes removed)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = shlex.split(value)[0] if value else ""
    return env


def run_service(unit: Path, *, instance: str | None = None) -> subprocess.CompletedProcess:
    text = unit.read_text()
    [exec_start] = unit_values(text, "ExecStart")
    if instance:
        exec_start = exec_start.replace(" %i", " " + instance)
    env = {"PATH": SYSTEMD_PATH}
    for line in unit_values(text, "Environment"):
        key, _, value = line.partition("=")
        env[key] = value
    for path in unit_values(text, "EnvironmentFile"):
        env.update(environment_file(Path(path.lstrip("-"))))
    return subprocess.run(exec_argv(exec_start), env=env, cwd="/", capture_output=True, text=True, timeout=180)


@pytest.fixture()
def program(tmp_path: Path) -> str:
    """The drtool executable the units name: this tree's code, whatever the environment."""
    script = tmp_path / "bin" / "drtool"
    script.parent.mkdir()
    root = Path(drtool.__file__).resolve().parents[1]
    script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(root))} exec {shlex.quote(sys.executable)} "
                      "-m drtool \"$@\"\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture()
def setup(tmp_path: Path, s3_server, bucket: str):  # noqa: ANN001, ANN201
    with data_root() as data:
        (data / "docs").mkdir()
        for i in range(5):
            (data / "docs" / f"scan-{i}.txt").write_text(f"form {i}\n" * 200)
        env = make_env(tmp_path / "ws", s3_server, bucket)
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(data / "docs")]}}],
                   schedule="daily 02:00", check={"schedule": "weekly sun 04:00", "read_data_subset": "1/3"})
        yield env


def write_env_file(env: DrtoolEnv, path: Path, names: list[str]) -> None:
    path.write_text("".join(f"{name}='{env.env[name]}'\n" for name in names))
    path.chmod(0o600)


def test_exported_backup_and_rotating_check_run_with_only_the_units_environment(setup: DrtoolEnv, program: str,
                                                                                 tmp_path: Path) -> None:
    env = setup
    settings = env.settings()
    env_file = tmp_path / "drtool.env"
    names = env_secret_names(settings)
    assert names == ["DRILL_S3_KEY", "DRILL_S3_SECRET"]
    instructions = "\n".join(env_file_instructions(names, env_file))
    assert "install -m 600" in instructions and env.s3.secret_key not in instructions
    units = tmp_path / "units"
    export_systemd(settings, units, program=program, env_file=env_file)
    assert all(env.s3.secret_key not in p.read_text() and REPO_PASSWORD not in p.read_text() for p in units.iterdir())

    # Before the admin creates the env file: the unit fails with one clear line, and nothing is backed up.
    env_file.write_text("")
    env_file.chmod(0o600)
    failed = run_service(units / "drtool-backup-docs.service")
    assert failed.returncode == 2 and "secret env:DRILL_S3_KEY is not set" in failed.stderr
    assert "Traceback" not in failed.stderr

    write_env_file(env, env_file, names)
    backup = run_service(units / "drtool-backup-docs.service")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert env.s3.secret_key not in " ".join(exec_argv(unit_values(
        (units / "drtool-backup-docs.service").read_text(), "ExecStart")[0]))
    snaps = bare_restic_snapshots(env)
    assert any("policy=docs" in s["tags"] and "source=scans" in s["tags"] for s in snaps)

    # The check reads 1/3, then 2/3, then 3/3: a real rotation, kept in state_dir between runs.
    subsets = []
    for _ in range(3):
        check = run_service(units / "drtool-check-docs.service")
        assert check.returncode == 0, check.stdout + check.stderr
        subsets.append(Catalog(env.state_dir).runs(policy="docs", kind="check", limit=1)[0].details["read_data_subset"])
    assert subsets == ["1/3", "2/3", "3/3"]
    assert RotationState(env.state_dir).last("docs") == 3
    assert oct((env.state_dir / "check-rotation.json").stat().st_mode & 0o777) == "0o600"


def test_crontab_lines_run_under_sh_with_an_empty_environment(setup: DrtoolEnv, program: str, tmp_path: Path) -> None:
    env = setup
    settings = env.settings()
    env_file = tmp_path / "drtool.env"
    write_env_file(env, env_file, env_secret_names(settings))
    table = crontab(settings, program=program, env_file=env_file)
    line = next(line for line in table.splitlines() if line.endswith("# backup:docs"))
    command = line.split(" ", 5)[5].rsplit("  # ", 1)[0].replace("\\%", "%")
    proc = subprocess.run(["/bin/sh", "-c", command], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Catalog(env.state_dir).runs(policy="docs", kind="backup", limit=1)[0].status == "success"


def test_failure_unit_notifies_through_the_configured_webhook(setup: DrtoolEnv, program: str, tmp_path: Path,
                                                              receiver: Receiver) -> None:  # noqa: F811
    env = setup
    text = env.config.read_text() + f"notifications:\n  webhooks:\n  - url: {receiver.url()}\n"
    env.config.write_text(text)
    settings = env.settings()
    env_file = tmp_path / "drtool.env"
    write_env_file(env, env_file, env_secret_names(settings))
    units = tmp_path / "units"
    export_systemd(settings, units, program=program, env_file=env_file)
    # The backup fails (its repository password file is gone): the run records and alerts it itself,
    # with the cause; the failure unit then does not alert a second time.
    (env.root / "repo.pass").unlink()
    assert run_service(units / "drtool-backup-docs.service").returncode != 0
    [(path, body)] = receiver.requests
    event = json.loads(body)
    assert event["event"] == "backup_failed" and event["policy"] == "docs" and "repo.pass" in event["message"]
    alert = run_service(units / "drtool-failure@.service", instance="drtool-backup-docs.service")
    assert alert.returncode == 0, alert.stderr
    assert "already recorded and notified it" in alert.stderr
    assert len(receiver.requests) == 1
    # A failure no run could record (the daemon unit died): the failure unit is the alert.
    alert = run_service(units / "drtool-failure@.service", instance="drtool-daemon.service")
    assert alert.returncode == 0, alert.stderr
    event = json.loads(receiver.requests[-1][1])
    assert event["event"] == "unit_failed" and event["details"]["unit"] == "drtool-daemon.service"
    assert "see `journalctl -u drtool-daemon.service`" in event["message"]
    # With a configuration that no longer loads, the journal still gets one clear line.
    env.config.write_text(text + "colour: red\n")
    broken = run_service(units / "drtool-failure@.service", instance="drtool-backup-docs.service")
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "unit drtool-backup-docs.service failed, and nobody could be notified: the configuration does not load" \
        in broken.stderr


def bare_restic_snapshots(env: DrtoolEnv) -> list[dict]:
    proc = subprocess.run(["restic", "-r", env.s3.repo_url(env.bucket, env.prefix), "snapshots", "--json",
                           "--password-file", str(env.root / "repo.pass"), "--no-cache"],
                          env={"PATH": os.environ["PATH"], "AWS_ACCESS_KEY_ID": env.s3.access_key,
                               "AWS_SECRET_ACCESS_KEY": env.s3.secret_key},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
