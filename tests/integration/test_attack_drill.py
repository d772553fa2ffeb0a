"""The attack drill (`immutability:` step) against moto, the store that does not enforce: it must
fail loudly, name exactly what got through, and leave the repository as usable as before."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drtool.engine.restic import RepoAccess, Restic
from drtool.secrets import Secret
from tests.support.drtool_env import REPO_PASSWORD, data_root
from tests.support.immutable import current_objects, make_sqlite, moto_env, retention
from tests.support.moto_server import MotoServer, moto_s3  # noqa: F401

pytestmark = pytest.mark.integration

# Measured on moto 5: both deletes by version id are refused, an overwrite and a plain delete only
# add a version / delete marker, the lock configuration cannot be changed on a non-empty bucket;
# but a COMPLIANCE retention can be shortened (with or without the bypass header) and
# versioning suspended, both of which AWS refuses.
MOTO_THROUGH = {"shorten the pack's retention", "shorten the pack's retention, bypassing governance",
                "suspend the bucket's versioning"}
MOTO_HELD = {"delete the pack by version id": "refused", "bulk delete with version ids": "refused",
             "overwrite the pack": "intact", "delete the pack": "intact",
             "remove the bucket's Object Lock configuration": "refused"}


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


def test_attack_drill_on_moto_fails_naming_each_attempt_that_got_through(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "attack-moto")
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(make_sqlite(prod / "siak.sqlite"))}}])
    env.playbook("siak-attack", {"policy": "siak", "steps": [{"name": "ransomware attack", "immutability": {}}]})
    env.backup("siak")
    client = moto_s3.client()
    before = {o["Key"]: o["ETag"] for o in current_objects(client, "attack-moto", "repo/")
              if not o["Key"].startswith("repo/locks/")}

    code, report, err = env.run_json("drill", "siak-attack")
    assert code == 1
    step = report["steps"][0]
    assert step["status"] == "failed"
    outcomes = {a["name"]: a["outcome"] for a in step["attempts"]}
    assert {n for n, o in outcomes.items() if o == "got-through"} == MOTO_THROUGH
    assert {n: o for n, o in outcomes.items() if n not in MOTO_THROUGH} == MOTO_HELD
    for name in MOTO_THROUGH:
        assert name in step["detail"]
    assert "3 of 8 attacks with the production credentials of offsite got through" in step["detail"]
    assert step["repository"] == "offsite" and step["target"].startswith("repo/data/")
    # What got through was put back: the lock, versioning, the pack; the repository is whole.
    pack = step["target"]
    assert retention(client, "attack-moto", pack)[1] >= datetime.now(timezone.utc) + timedelta(days=2.9)
    assert client.get_bucket_versioning(Bucket="attack-moto")["Status"] == "Enabled"
    after = {o["Key"]: o["ETag"] for o in current_objects(client, "attack-moto", "repo/")
             if not o["Key"].startswith("repo/locks/")}
    assert after == before
    restic = Restic(RepoAccess(env.settings().config.repositories["offsite"].url, Secret(REPO_PASSWORD),
                               {"AWS_ACCESS_KEY_ID": moto_s3.access_key, "AWS_SECRET_ACCESS_KEY": moto_s3.secret_key}))
    restic.check()
    assert not list((env.state_dir / "attack-drill" / "offsite").iterdir())   # the rescue copy is gone again


def test_attack_drill_on_a_bucket_without_versioning_puts_the_pack_back(tmp_path, s3_server, bucket, prod):
    """rclone serve s3 has no versioning at all: the deletes really delete; the drill says so and
    writes the pack back from the copy it took, so the repository still checks."""
    from tests.support.drtool_env import make_env
    env = make_env(tmp_path / "setup", s3_server, bucket)
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(make_sqlite(prod / "siak.sqlite"))}}])
    env.playbook("siak-attack", {"policy": "siak", "steps": [{"name": "attack", "immutability": {}}]})
    env.backup("siak")
    code, report, err = env.run_json("drill", "siak-attack")
    assert code == 1
    attempts = {a["name"]: a for a in report["steps"][0]["attempts"]}
    deleted = attempts["delete the pack by version id"]
    assert deleted["outcome"] == "got-through" and "gone" in deleted["detail"]
    assert "written back from the copy" in deleted["restored"]
    code, out, err = env.run("check", "siak")
    assert code == 0, out + err
