"""`drtool repo rollback` after ransomware wiped a locked repository with the production credentials:
the database restored afterwards is identical to the one backed up."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.support.drtool_env import data_root
from tests.support.immutable import current_objects, make_sqlite, moto_env, sqlite_rows
from tests.support.moto_server import MotoServer, moto_s3  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


def _wipe(client, bucket: str) -> tuple[int, int]:  # noqa: ANN001
    """What ransomware with the server's S3 keys does: delete half the objects one by one and
    overwrite the other half with garbage (DeleteObject / PutObject, no version ids)."""
    deleted = overwritten = 0
    for n, obj in enumerate(current_objects(client, bucket)):
        if n % 2:
            client.delete_object(Bucket=bucket, Key=obj["Key"])
            deleted += 1
        else:
            client.put_object(Bucket=bucket, Key=obj["Key"], Body=b"encrypted by ransomware, pay 1 BTC\n")
            overwritten += 1
    return deleted, overwritten


def test_rollback_after_a_wipe_restores_a_database_identical_to_the_backup(tmp_path, moto_s3, prod):  # noqa: F811
    env = moto_env(tmp_path / "setup", moto_s3, "rollback-wipe")
    db = make_sqlite(prod / "siak.sqlite")
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}}])
    env.backup("siak")
    backed_up = sqlite_rows(db)
    time.sleep(1.1)                     # moto keeps LastModified to the second
    before_attack = datetime.now(timezone.utc)
    time.sleep(1.1)
    deleted, overwritten = _wipe(moto_s3.client(), "rollback-wipe")
    assert deleted and overwritten
    code, out, err = env.run("snapshots", "siak")
    assert code != 0                                     # the repository is unusable now

    code, plan, err = env.run_json("repo", "rollback", "offsite", "--to", before_attack.isoformat(), "--dry-run")
    assert code == 0, err
    assert plan["details"]["dry_run"] is True
    actions = {s["action"] for s in plan["details"]["steps"]}
    assert actions == {"remove-markers", "restore-version"}
    assert plan["details"]["changes"] == deleted + overwritten
    assert env.run("snapshots", "siak")[0] != 0          # a dry run changed nothing

    code, done, err = env.run_json("repo", "rollback", "offsite", "--to", before_attack.isoformat())
    assert code == 0, err
    assert done["status"] == "success" and done["details"]["check"] == "restic check passed"
    assert [f["kind"] for f in done["details"]["follow_ups"]] == ["lock-extend"]
    assert done["details"]["follow_ups"][0]["status"] == "success"

    target = prod / "restored" / "siak.sqlite"
    code, out, err = env.run("restore", "siak", "--source", "db", "--target", str(target))
    assert code == 0, out + err
    assert sqlite_rows(target) == backed_up

    # Running it again finds nothing left to change.
    code, again, err = env.run_json("repo", "rollback", "offsite", "--to", before_attack.isoformat(), "--dry-run")
    assert code == 0 and again["details"]["changes"] == 0, again["details"]["steps"][:5]


def test_rollback_refuses_a_time_in_the_future_and_an_unversioned_repository(tmp_path, moto_s3, s3_server,  # noqa: F811
                                                                             bucket):
    env = moto_env(tmp_path / "setup", moto_s3, "rollback-future")
    code, out, err = env.run("repo", "rollback", "offsite", "--to", "2999-01-01T00:00:00Z")
    assert code == 2 and "is in the future" in err
    code, out, err = env.run("repo", "rollback", "offsite", "--to", "yesterday")
    assert code == 2 and "--to 'yesterday'" in err
    from tests.support.drtool_env import make_env
    plain = make_env(tmp_path / "plain", s3_server, bucket)
    code, out, err = plain.run("repo", "rollback", "offsite", "--to", "1h ago")
    assert code == 2 and "has no versioning: nothing was kept" in err and "Traceback" not in err
