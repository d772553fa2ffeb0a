"""The second copy (`copies:`): every successful backup copied into another repository with its own
password and credentials, verified, visible in snapshots and status, drilled from the copy; and
the 3-2-1-1-0 view."""

from __future__ import annotations

import pytest

from tests.support.drtool_env import data_root, make_env
from tests.support.immutable import make_sqlite, set_repository, sqlite_rows, start_rest_server
from tests.support.receivers import http_receiver
from tests.support.services import start_rclone_s3

pytestmark = pytest.mark.integration

B_PASSWORD = "copy-B-Repo-pw-3a91f0"


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


@pytest.fixture()
def second_s3(tmp_path):
    """Another S3 provider: its own server, its own keys."""
    server = start_rclone_s3(tmp_path / "s3-b" / "data", access_key="provider-b-key",
                             secret_key="provider-b-secret-77aa3c")
    server.make_bucket("copies-b")
    yield server
    server.stop()


def _secret(env, name: str, value: str) -> dict:  # noqa: ANN001
    path = env.root / name
    path.write_text(value)
    path.chmod(0o600)
    return {"file": str(path)}


def _setup(tmp_path, s3_server, bucket, second_s3, prod):  # noqa: ANN001, ANN202
    env = make_env(tmp_path / "setup", s3_server, bucket)
    set_repository(env, "offsite-b", url=second_s3.repo_url("copies-b", "siak"),
                   password=_secret(env, "b.pass", B_PASSWORD),
                   s3={"access_key_id": {"env": "B_S3_KEY"}, "secret_access_key": {"env": "B_S3_SECRET"}})
    env.env.update({"B_S3_KEY": second_s3.access_key, "B_S3_SECRET": second_s3.secret_key})
    db = make_sqlite(prod / "siak.sqlite")
    docs = prod / "scans"
    docs.mkdir()
    (docs / "kk.txt").write_text("kartu keluarga\n" * 40)
    env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}},
                        {"name": "scans", "files": {"paths": [str(docs)]}}],
               targets={"rpo": "1d", "rto": "10m"}, copies=["offsite-b"])
    return env, db


def test_backup_is_copied_verified_listed_and_a_drill_from_the_copy_verifies(tmp_path, s3_server, bucket,
                                                                               second_s3, prod):
    env, db = _setup(tmp_path, s3_server, bucket, second_s3, prod)
    env.backup("siak")
    code, runs, err = env.run_json("runs")
    backup = next(r for r in runs if r["kind"] == "backup")
    copy = next(r for r in runs if r["kind"] == "copy")
    assert copy["status"] == "success" and copy["details"]["repository"] == "offsite-b"
    assert set(copy["details"]["verified"]["sources"]) == {"db", "scans"}
    assert copy["details"]["verified"]["config_bundle"]
    assert backup["details"]["follow_ups"] == [{"kind": "copy", "repository": "offsite-b", "run": copy["id"],
                                                "status": "success", "error": None}]
    # The copy is a repository of its own: provider B's keys and B's password.
    assert (second_s3.root / "copies-b" / "siak" / "config").is_file()

    code, rows, err = env.run_json("snapshots", "siak")
    assert code == 0, err
    assert sorted((r["repository"], r["source"]) for r in rows) == [
        ("offsite", "db"), ("offsite", "scans"), ("offsite-b", "db"), ("offsite-b", "scans")]
    assert len({r["run"] for r in rows}) == 1           # the same run's sets, in both

    env.playbook("siak-from-b", {"policy": "siak", "from": "offsite-b", "steps": [
        {"name": "restore db", "restore": {"source": "db"}}, {"name": "verify db", "verify": {"source": "db"}},
        {"name": "restore scans", "restore": {"source": "scans"}},
        {"name": "verify scans", "verify": {"source": "scans"}}]})
    code, report, err = env.run_json("drill", "siak-from-b")
    assert code == 0, err
    assert report["passed"] and report["repository"] == "offsite-b"

    code, status, err = env.run_json("status")
    row = status[0]
    assert row["copies"]["offsite-b"]["status"] == "success" and row["copies"]["offsite-b"]["verified"]
    letters = row["rule_32110"]["letters"]
    assert letters == {"3": True, "2": True, "1o": True, "1i": False, "0": False}
    advice = {x["letter"]: x for x in row["rule_32110"]["assessment"]}
    assert "add a step `immutability: {}`" in advice["1i"]["advice"]
    assert "no repository check yet" in advice["0"]["detail"]
    code, out, err = env.run("status")
    assert "siak: 3-2-1-1-0 [3+ 2+ 1o+ 1i- 0-] falls short on 1i (immutable), 0 (errors)" in out
    target = prod / "restored.sqlite"
    code, out, err = env.run("restore", "siak", "--source", "db", "--target", str(target))
    assert code == 0 and sqlite_rows(target) == sqlite_rows(db)


def test_a_failed_copy_is_a_failed_run_that_alerts_and_fails_the_command(tmp_path, s3_server, bucket, second_s3,
                                                                         prod):
    env, _db = _setup(tmp_path, s3_server, bucket, second_s3, prod)
    env.env["B_S3_SECRET"] = "not-the-secret-of-provider-b"
    with http_receiver() as hook:
        import yaml
        doc = yaml.safe_load(env.config.read_text())
        doc["notifications"] = {"webhooks": [{"url": hook.url(), "events": ["copy_failed"]}]}
        env.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        code, out, err = env.run("backup", "siak")
        assert code == 1
        events = [r.text for r in hook.wait_for(1)]
    assert "copy_failed" in events[0] and "offsite-b" in events[0]
    assert "not-the-secret-of-provider-b" not in events[0]
    code, runs, _ = env.run_json("runs")
    by_kind = {r["kind"]: r for r in runs}
    assert set(by_kind) == {"backup", "copy"}
    assert by_kind["backup"]["status"] == "success" and by_kind["copy"]["status"] == "failed"   # the backup stands
    assert by_kind["backup"]["details"]["follow_ups"][0]["status"] == "failed"
    assert "copy to repository offsite-b" in by_kind["copy"]["error"]
    code, status, err = env.run_json("status")
    assert status[0]["copies"]["offsite-b"]["status"] == "failed"
    assert "copy-failed" in status[0]["problems"]
    assert status[0]["rule_32110"]["letters"]["3"] is False


def test_every_letter_of_3_2_1_1_0_met_with_an_append_only_copy(tmp_path, s3_server, bucket, prod):
    """Production, the S3 repository, and a copy on an append-only REST server that the attack drill
    proves immutable; a check and a verifying drill make the 0."""
    vault = start_rest_server(tmp_path / "vault", append_only=True, username="siak", password="vault-Pw-09ab33")
    try:
        env = make_env(tmp_path / "setup", s3_server, bucket)
        set_repository(env, "vault", url=f"{vault.url}/siak", password=_secret(env, "v.pass", B_PASSWORD),
                       rest={"username": "siak", "password": _secret(env, "vault.pass", vault.password)},
                       immutable={"mode": "append-only"}, provider="vault-provider")
        db = make_sqlite(prod / "siak.sqlite")
        env.policy("siak", [{"name": "db", "sqlite": {"path": str(db)}}], targets={"rpo": "1d"}, copies=["vault"])
        env.playbook("siak-vault", {"policy": "siak", "from": "vault", "steps": [
            {"name": "restore", "restore": {"source": "db"}}, {"name": "verify", "verify": {"source": "db"}},
            {"name": "attack the vault", "immutability": {}}]})
        env.backup("siak")
        assert env.run("check", "siak")[0] == 0
        code, report, err = env.run_json("drill", "siak-vault")
        assert code == 0, err
        code, status, err = env.run_json("status")
        rule = status[0]["rule_32110"]
        assert rule["met"] is True, rule["assessment"]
        assert {x["letter"]: x["met"] for x in rule["assessment"]} == {"3": True, "2": True, "1o": True,
                                                                       "1i": True, "0": True}
        immutable = next(x for x in rule["assessment"] if x["letter"] == "1i")
        assert immutable["detail"].startswith("vault: the attack drill of ")
        code, out, err = env.run("status")
        assert "siak: 3-2-1-1-0 [3+ 2+ 1o+ 1i+ 0+] met" in out
    finally:
        vault.stop()
