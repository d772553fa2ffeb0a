"""Object Lock kept current on a real restic repository in moto: after each backup and by
`drtool repo lock-extend`, every object a kept snapshot needs is locked until now + days."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.drtool_env import data_root
from tests.support.immutable import current_objects, make_sqlite, moto_env, retention
from tests.support.moto_server import MotoServer, moto_s3  # noqa: F401

pytestmark = pytest.mark.integration

DAYS = 3


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


def _policy(env, prod) -> None:  # noqa: ANN001
    db = make_sqlite(prod / "siak.sqlite")
    docs = prod / "scans"
    docs.mkdir()
    (docs / "ktp.txt").write_text("NIK 1671\n" * 100)
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}},
                        {"name": "scans", "files": {"paths": [str(docs)]}}], targets={"rpo": "1d"})


def _last(env, kind: str) -> dict:  # noqa: ANN001
    code, runs, err = env.run_json("runs", "--limit", "50")
    assert code == 0, err
    return next(r for r in runs if r["kind"] == kind)


def test_backup_locks_every_object_a_kept_snapshot_needs(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "lock-every-object")
    _policy(env, prod)
    code, events, err = env.run("backup", "siak", "--json")
    assert code == 0, events + err
    backup = _last(env, "backup")
    lock = _last(env, "lock-extend")
    assert [f["kind"] for f in backup["details"]["follow_ups"]] == ["lock-extend"]
    assert backup["details"]["follow_ups"][0] == {"kind": "lock-extend", "repository": "offsite", "run": lock["id"],
                                                  "status": "success", "error": None}
    assert lock["status"] == "success" and lock["details"]["api_calls"]["PutObjectRetention"] >= 1

    client = moto_s3.client()
    objects = current_objects(client, "lock-every-object")
    floor = datetime.now(timezone.utc) + timedelta(days=DAYS) - timedelta(minutes=5)
    lock_started = datetime.fromisoformat(lock["started_at"])
    folders = set()
    for obj in objects:
        key = obj["Key"]
        if key.startswith("repo/locks/"):
            continue
        if key.startswith("repo.drtool/") and obj["LastModified"] >= lock_started - timedelta(seconds=1):
            continue       # the records of this very backup and lock run, written after the extension
        mode, until = retention(client, "lock-every-object", key)
        assert mode == "COMPLIANCE" and until is not None and until >= floor, (key, mode, until)
        folders.add(key.split("/")[1] if key.startswith("repo/") else "records")
    # packs, indexes, snapshots (streams, fingerprint, configuration bundle), keys, config
    assert {"data", "index", "snapshots", "keys", "config"} <= folders
    assert lock["details"]["folders"]["snapshots"] >= 4      # db stream + fingerprint + files + bundle


def test_second_run_writes_only_new_objects_and_verify_finds_a_shortened_lock(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "lock-second-run")
    _policy(env, prod)
    env.backup("siak")
    (prod / "scans" / "new.txt").write_text("another scan\n" * 50)
    env.backup("siak")
    second = _last(env, "lock-extend")["details"]
    # Only what the second backup added (and the first run's records) needed a lock: the rest is known.
    assert 0 < second["extended"] < second["objects"]
    assert second["already_locked"] == second["objects"] - second["extended"]

    # Someone with the credentials shortens one pack's lock (moto allows it; AWS refuses COMPLIANCE).
    client = moto_s3.client()
    pack = next(o["Key"] for o in current_objects(client, "lock-second-run", "repo/data/"))
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    client.put_object_retention(Bucket="lock-second-run", Key=pack,
                                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon})
    code, plain, err = env.run_json("repo", "lock-extend", "offsite")
    assert code == 0, err
    assert retention(client, "lock-second-run", pack)[1] < datetime.now(timezone.utc) + timedelta(days=1)
    code, verified, err = env.run_json("repo", "lock-extend", "offsite", "--verify")
    assert code == 0, err
    assert verified["details"]["verified"] is True and verified["details"]["extended"] >= 1
    assert verified["details"]["api_calls"]["HeadObject"] >= verified["details"]["objects"]
    assert retention(client, "lock-second-run", pack)[1] >= datetime.now(timezone.utc) + timedelta(days=DAYS - 0.01)


def test_bucket_without_object_lock_is_an_error_and_nothing_is_written(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "lock-plain-bucket", create_locked=False)
    _policy(env, prod)
    code, out, err = env.run("backup", "siak")
    assert code == 1
    assert "is configured `immutable:` but its bucket has versioning and Object Lock off" in err
    assert "Traceback" not in err
    assert current_objects(moto_s3.client(), "lock-plain-bucket", "repo/") == []
    code, out, err = env.run("repo", "lock-extend", "offsite")
    assert code == 1 and "Object Lock off" in err


def test_bucket_drtool_creates_has_object_lock_and_the_lifecycle_rule(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "lock-created-by-drtool", create_locked=None)
    code, info, err = env.run_json("init-repo", "offsite")
    assert code == 0, err
    assert "versioning enabled, Object Lock enabled, lifecycle rule set now" in info["bucket"]
    client = moto_s3.client()
    rules = client.get_bucket_lifecycle_configuration(Bucket="lock-created-by-drtool")["Rules"]
    by_prefix = {r["Filter"]["Prefix"]: r for r in rules}
    assert set(by_prefix) == {"repo/", "repo.drtool/"}
    # expire non-current versions only after their lock can have ended: days + renew_days + 1
    assert {r["NoncurrentVersionExpiration"]["NoncurrentDays"] for r in rules} == {DAYS + 1 + 1}


def test_lock_extend_on_a_repository_without_object_lock_is_a_usage_error(tmp_path, moto_s3):  # noqa: F811
    from tests.support.drtool_env import make_env
    env = make_env(tmp_path / "setup", moto_s3, "lock-not-immutable")
    code, out, err = env.run("repo", "lock-extend", "offsite")
    assert code == 2 and "has no Object Lock to extend" in err
    json.dumps(out)


def test_forget_on_a_locked_repository_reports_what_was_really_freed(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "lock-forget")
    docs = prod / "scans"
    docs.mkdir()
    env.policy("siak", [{"name": "scans", "files": {"paths": [str(docs)]}}], retention={"last": 1})
    for n in range(2):
        (docs / f"scan-{n}.bin").write_bytes(bytes([n]) * 300_000)
        env.backup("siak")
        (docs / f"scan-{n}.bin").unlink()
    code, run, err = env.run_json("forget", "siak")
    assert code == 0, err
    freed = run["details"]["immutable"]
    assert freed["removed_objects"] >= 2 and freed["removed_bytes"] > 0    # a snapshot and the pack only it used
    assert freed["freed_now_bytes"] == 0 and freed["locked_versions_kept"] == freed["removed_objects"]
    assert freed["lifecycle"] == "set" and freed["expire_by"]
    assert run["details"]["follow_ups"][0]["kind"] == "lock-extend"        # prune's new index is locked too
    assert run["details"]["follow_ups"][0]["status"] == "success"
    client = moto_s3.client()
    versions = client.list_object_versions(Bucket="lock-forget", Prefix="repo/snapshots/")
    gone = {m["Key"] for m in versions.get("DeleteMarkers", [])}
    assert gone                                                           # deleted: a delete marker...
    for v in versions["Versions"]:
        if v["Key"] in gone:                                              # ...over a version that stays locked
            head = client.head_object(Bucket="lock-forget", Key=v["Key"], VersionId=v["VersionId"])
            assert head["ObjectLockMode"] == "COMPLIANCE"
            with pytest.raises(Exception, match="AccessDenied"):
                client.delete_object(Bucket="lock-forget", Key=v["Key"], VersionId=v["VersionId"])

    from drtool.storage.s3 import store_from_repository
    client.delete_bucket_lifecycle(Bucket="lock-forget")
    with env._environ():
        store = store_from_repository(env.settings().config.repositories["offsite"])
        assert store.lifecycle_state()["state"] == "missing"
