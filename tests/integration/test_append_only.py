"""The enforcing store: restic's REST protocol served append-only (`rclone serve restic
--append-only`). Backups and drills work through it, the attack drill passes, and forget/prune
go through the separate maintenance path only."""

from __future__ import annotations

import json

import pytest

from tests.support.drtool_env import DrtoolEnv, data_root, make_env
from tests.support.immutable import RestServer, make_sqlite, set_repository, sqlite_rows, start_rest_server

pytestmark = pytest.mark.integration


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


@pytest.fixture()
def rest_servers(tmp_path):
    """One repository folder, two servers: append-only for production, full access for maintenance."""
    root = tmp_path / "rest-data"
    prod_server = start_rest_server(root, append_only=True, username="siak-backup", password="prod-Rest-pw-81d2")
    maint = start_rest_server(root, append_only=False, username="siak-admin", password="maint-Rest-pw-5c0e")
    yield prod_server, maint
    prod_server.stop()
    maint.stop()


def _secret(env: DrtoolEnv, name: str, value: str) -> str:
    path = env.root / name
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


def _rest_env(tmp_path, s3_server, bucket, server: RestServer, maint: RestServer | None = None) -> DrtoolEnv:  # noqa: ANN001
    env = make_env(tmp_path / "setup", s3_server, bucket)
    maintenance = None
    if maint is not None:
        maintenance = {"url": f"{maint.url}/siak", "rest": {
            "username": maint.username, "password": {"file": _secret(env, "maint.pass", maint.password)}}}
    set_repository(env, url=f"{server.url}/siak", s3=None, immutable={"mode": "append-only"},
                   rest={"username": server.username, "password": {"file": _secret(env, "rest.pass", server.password)}},
                   maintenance=maintenance)
    return env


def test_backup_and_drill_through_an_append_only_server_and_the_attack_drill_passes(
        tmp_path, s3_server, bucket, rest_servers, prod):
    server, _maint = rest_servers
    env = _rest_env(tmp_path, s3_server, bucket, server)
    db = make_sqlite(prod / "siak.sqlite")
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}}], targets={"rpo": "1d", "rto": "10m"})
    env.playbook("siak-drill", {"policy": "siak", "steps": [
        {"name": "restore", "restore": {"source": "db"}},
        {"name": "verify", "verify": {"source": "db"}},
        {"name": "ransomware attack", "immutability": {}}]})
    code, out, err = env.run("backup", "siak")
    assert code == 0, out + err
    assert server.password not in out + err              # restic prints the URL; never its password
    # The append-only server took this machine's key too (a new file, never an overwrite): the
    # drill and the restore below open the repository with it.
    (made,) = env.state_dir.glob("repos/*.machinekey")
    key_id = json.loads(made.read_text())["repository"]["key_id"]
    assert (tmp_path / "rest-data" / "siak" / "keys" / key_id).is_file()
    code, report, err = env.run_json("drill", "siak-drill")
    assert code == 0, err
    attack = report["steps"][2]
    assert attack["status"] == "passed", attack["detail"]
    assert {a["name"]: a["outcome"] for a in attack["attempts"]} == {
        "delete a pack": "refused", "overwrite the pack": "refused",
        "delete an index": "refused", "delete a snapshot": "refused"}
    assert all(a["detail"] == "HTTP 403" for a in attack["attempts"])
    assert attack["configured"] == "append-only"
    # The repository is what it was, and its files are still the backup's.
    target = prod / "restored.sqlite"
    code, out, err = env.run("restore", "siak", "--source", "db", "--target", str(target))
    assert code == 0, out + err
    assert sqlite_rows(target) == sqlite_rows(db)


def test_forget_is_refused_without_the_maintenance_path_and_works_through_it(
        tmp_path, s3_server, bucket, rest_servers, prod):
    server, maint = rest_servers
    env = _rest_env(tmp_path, s3_server, bucket, server)
    db = make_sqlite(prod / "siak.sqlite")
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}}], retention={"last": 1})
    env.backup("siak")
    env.backup("siak")
    snapshot_files = sorted((server.root / "siak" / "snapshots").iterdir())
    code, out, err = env.run("forget", "siak")
    assert code == 2
    assert "is append-only: the credentials of this machine cannot forget or prune" in err
    assert "maintenance:" in err and "Traceback" not in err
    assert sorted((server.root / "siak" / "snapshots").iterdir()) == snapshot_files     # nothing touched
    code, runs, err = env.run_json("runs")
    assert runs[0]["kind"] == "forget" and runs[0]["status"] == "failed"           # recorded (and alerted)

    maint_env = _rest_env(tmp_path / "maintenance-machine", s3_server, bucket, server, maint)
    maint_env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}}], retention={"last": 1})
    code, run, err = maint_env.run_json("forget", "siak")
    assert code == 0, err
    assert run["details"]["sources"]["db"]["forgotten"] == 1
    assert len(list((server.root / "siak" / "snapshots").iterdir())) < len(snapshot_files)
    assert maint.password not in err


def test_attack_drill_on_a_rest_server_that_is_not_append_only_fails_and_repairs(
        tmp_path, s3_server, bucket, rest_servers, prod):
    _server, maint = rest_servers
    env = _rest_env(tmp_path, s3_server, bucket, maint)       # production pointed at the full-access server
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(make_sqlite(prod / "siak.sqlite"))}}])
    env.playbook("siak-attack", {"policy": "siak", "steps": [{"name": "attack", "immutability": {}}]})
    env.backup("siak")
    code, report, err = env.run_json("drill", "siak-attack")
    assert code == 1
    step = report["steps"][0]
    assert {a["outcome"] for a in step["attempts"]} == {"got-through"}
    assert "4 of 4 attacks with the production credentials of offsite got through" in step["detail"]
    assert all("written back" in a["restored"] for a in step["attempts"])
    code, out, err = env.run("check", "siak")
    assert code == 0, out + err
