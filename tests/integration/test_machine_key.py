"""Machine keys against real restic on rclone S3 and on a local repository.

The first backup makes this machine's key; later restic processes open the repository with it
(proved by removing the repository password's own key: drtool still backs up and restores);
a machine key removed from the repository falls back to the password and is made anew; a
rotated repository password gets a new machine key and the old one is revoked; the derived
password never reaches argv, the environment, output or records, and the file this machine
keeps holds no secret.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from drtool.crypto.restic_key import machine_password
from drtool.engine.restic import RepoAccess
from drtool.engine.restic_keys import add_key, list_keys, remove_key
from drtool.secrets import Secret
from tests.integration.test_restic_keys import ArgvWatcher
from tests.support.workspace import CANARY_PASSWORD, Workspace, make_workspace

pytestmark = pytest.mark.integration


def _machine_key_file(ws: Workspace) -> Path:
    (path,) = (ws.root / "state" / "repos").glob("*.machinekey")
    return path


def _kept(ws: Workspace) -> dict:
    """What this machine keeps for the repository password's machine key."""
    return json.loads(_machine_key_file(ws).read_text())["repository"]


def _keys(ws: Workspace) -> list[dict]:
    out = ws.restic("key", "list", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _files_ws(tmp_path: Path, s3_server, bucket: str, **repo_extra: object) -> Workspace:  # noqa: ANN001
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    if repo_extra:
        doc = yaml.safe_load(ws.config.read_text())
        doc["repositories"]["offsite"].update(repo_extra)
        ws.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("machine keys\n")
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(data)]}}])
    return ws


def _backup(ws: Workspace) -> dict:
    out = ws.drtool("backup", "docs", "--json", check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_backup_makes_the_machine_key_and_later_runs_open_with_it(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket)
    run = _backup(ws)
    made = run["details"]["machine_key"]
    assert made["made"] is True
    state = _machine_key_file(ws)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert list(json.loads(state.read_text())) == ["repository"]
    kept = _kept(ws)
    assert sorted(kept) == ["key_id", "salt"] and kept["key_id"] == made["key_id"]    # no password
    password = machine_password(CANARY_PASSWORD.encode(), base64.b64decode(kept["salt"]))

    keys = {k["id"]: k for k in _keys(ws)}               # restic lists short ids
    mine = keys[made["key_id"][:8]]
    assert mine["userName"] == "drtool" and mine["hostName"] == "drtool-test"

    # Remove the repository password's own key: only the machine key opens the repository now,
    # so a backup and a restore that succeed can only have used it.
    (own,) = [k for k in keys if k != made["key_id"][:8]]
    env = {**ws.env, "RESTIC_REPOSITORY": ws.repo_url, "RESTIC_KEY_HINT": made["key_id"]}
    pw = tmp_path / "machine.pw"
    pw.write_text(password)
    pw.chmod(0o600)
    removed = subprocess.run(["restic", "key", "remove", own], env={**env, "RESTIC_PASSWORD_FILE": str(pw)},
                             capture_output=True, text=True, timeout=120)
    assert removed.returncode == 0, removed.stderr
    assert ws.restic("snapshots").returncode != 0          # the repository password opens nothing now

    with ArgvWatcher(ws.repo_url) as watcher:
        again = _backup(ws)
    assert again["status"] == "success" and "machine_key" not in again["details"]
    target = tmp_path / "restored"
    ws.drtool("restore", "docs", "--source", "docs", "--target", str(target), check=True)
    assert (target / str(tmp_path / "data" / "a.txt").lstrip("/")).read_text() == "machine keys\n"

    assert watcher.seen, "the watcher never saw restic running; the argv check proved nothing"
    for cmdline, environ in watcher.seen:
        assert password.encode() not in cmdline and password.encode() not in environ
        assert CANARY_PASSWORD.encode() not in cmdline and CANARY_PASSWORD.encode() not in environ


def test_a_machine_key_removed_from_the_repository_falls_back_and_is_made_anew(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket)
    first = _backup(ws)["details"]["machine_key"]["key_id"]
    removed = ws.restic("key", "remove", first[:8])
    assert removed.returncode == 0, removed.stderr

    out = ws.drtool("-v", "backup", "docs", "--json", check=True)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["status"] == "success"
    assert "does not accept this machine's key" in out.stderr
    remade = run["details"]["machine_key"]
    assert remade["made"] is True and remade["key_id"] != first
    assert _kept(ws)["key_id"] == remade["key_id"]
    assert remade["key_id"][:8] in {k["id"] for k in _keys(ws)}

    # Nothing of the machine key's password in what drtool printed or recorded.
    kept = _kept(ws)
    password = machine_password(CANARY_PASSWORD.encode(), base64.b64decode(kept["salt"]))
    records = list((s3_server.root / bucket / "repo.drtool" / "runs").glob("*.json"))
    assert records
    for text in [out.stdout, out.stderr, *(p.read_text() for p in records)]:
        assert password not in text


def test_machine_key_false_makes_none(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket, machine_key=False)
    run = _backup(ws)
    assert "machine_key" not in run["details"]
    assert not list((ws.root / "state" / "repos").glob("*.machinekey"))
    assert len(_keys(ws)) == 1


def test_machine_key_on_a_local_repository(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket)
    doc = yaml.safe_load(ws.config.read_text())
    local = tmp_path / "local-repo"
    doc["repositories"]["offsite"] = {"url": str(local), "password": doc["repositories"]["offsite"]["password"]}
    ws.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    made = _backup(ws)["details"]["machine_key"]
    key_file = local / "keys" / made["key_id"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o400
    assert _backup(ws)["status"] == "success"


def test_a_wrong_password_still_fails_and_the_right_one_opens_the_same_key_again(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket)
    first = _backup(ws)["details"]["machine_key"]["key_id"]
    (ws.root / "repo.pass").write_text("not-the-password")
    failed = ws.drtool("backup", "docs")
    assert failed.returncode == 1 and "wrong password" in failed.stderr
    (ws.root / "repo.pass").write_text(CANARY_PASSWORD)
    again = _backup(ws)
    assert again["status"] == "success" and "machine_key" not in again["details"]       # the same key
    assert _kept(ws)["key_id"] == first


def test_a_rotated_password_gets_a_new_machine_key_and_the_old_one_is_revoked(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket)
    first = _backup(ws)["details"]["machine_key"]["key_id"]
    # Rotate: a key for the new password, the old password's key removed, the new one configured.
    old = RepoAccess(ws.repo_url, Secret(CANARY_PASSWORD), {k: ws.env[k] for k in ("AWS_ACCESS_KEY_ID",
                                                                                     "AWS_SECRET_ACCESS_KEY")})
    new_password = "rotated-Repo-Pw-3b7d91"
    add_key(old, Secret(new_password))
    new = RepoAccess(old.url, Secret(new_password), old.env)
    (current_old,) = [k["id"] for k in list_keys(old) if k["current"]]
    remove_key(new, current_old)
    (ws.root / "repo.pass").write_text(new_password)

    run = _backup(ws)
    assert run["status"] == "success"
    made = run["details"]["machine_key"]
    assert made["made"] is True and made["key_id"] != first
    assert made["replaced"] == {"key_id": first, "removed": True}
    ids = {k["id"] for k in list_keys(new)}
    assert made["key_id"][:8] in ids and first[:8] not in ids           # the old password's machine key is gone


def test_an_unreadable_machine_key_file_is_replaced_by_a_new_key(tmp_path, s3_server, bucket):
    ws = _files_ws(tmp_path, s3_server, bucket)
    _backup(ws)
    _machine_key_file(ws).write_text('{"key_id": "0123"}')          # damaged: no salt
    out = ws.drtool("-v", "backup", "docs", "--json", check=True)
    assert "ignoring the unreadable machine key file" in out.stderr
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["status"] == "success" and run["details"]["machine_key"]["made"] is True
    assert _kept(ws)["key_id"] == run["details"]["machine_key"]["key_id"]
