"""Config bundle and kit actions against a real restic repository (a local path: fast).

The S3 + PostgreSQL end-to-end story is in test_recover.py.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import yaml

from drtool.actions.backup import backup_policy
from drtool.actions.bundle import BundleError, fetch_config_bundle, read_config_bundle
from drtool.actions.kit import create_kit, revoke_kit, verify_kit
from drtool.cli import main
from drtool.config import load_settings
from drtool.crypto.kit import KitError, open_kit, read_kit
from drtool.crypto.signing import (
    SignatureInvalid,
    load_or_create_signing_key,
    public_key_b64,
)
from drtool.engine.restic import Restic, repo_access
from drtool.engine.restic_keys import list_keys
from drtool.errors import UsageError

pytestmark = pytest.mark.integration

REPO_PASSWORD = "local-Repo-Pw-91c2e0"
PASSPHRASE = "a long kit passphrase"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """drtool.yaml on a local-path repository, one files policy, one backup run."""
    root = tmp_path_factory.mktemp("kitlocal")
    (root / "policies").mkdir()
    (root / "playbooks").mkdir()
    data = root / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n")
    pw = root / "repo.pass"
    pw.write_text(REPO_PASSWORD)
    pw.chmod(0o600)
    (root / "drtool.yaml").write_text(yaml.safe_dump({
        "state_dir": str(root / "state"), "hostname": "kit-test",
        "repositories": {"usb": {"url": str(root / "repo"), "password": {"file": str(pw)}}}}))
    (root / "policies" / "docs.yaml").write_text(yaml.safe_dump({
        "name": "docs", "repository": "usb", "sources": [{"name": "files", "files": {"paths": [str(data)]}}]}))
    (root / "playbooks" / "docs-drill.yaml").write_text(yaml.safe_dump({
        "name": "docs-drill", "policy": "docs", "steps": [{"name": "kit", "kit": {}}]}))
    (root / "policies" / "README").write_text("not YAML\n")
    (root / "policies" / "draft.yaml.bak").write_text("name: draft\n")
    (root / "managed").mkdir()
    (root / "managed" / "other.yaml").write_text(yaml.safe_dump({
        "name": "other", "repository": "usb", "sources": [{"name": "f", "files": {"paths": ["/nonexistent"]}}]}))
    (root / "policies" / "other.yaml").symlink_to(root / "managed" / "other.yaml")
    settings = load_settings(str(root / "drtool.yaml"))
    run = backup_policy(settings, settings.policy("docs"))
    assert run.status == "success", run.error
    return settings, run


def _restic(settings) -> Restic:
    return Restic(repo_access(settings, "usb"))


def test_backup_stores_a_signed_bundle_without_secret_values(local, tmp_path):
    settings, run = local
    stored = run.details["config_bundle"]
    assert stored["snapshot"]
    assert {"drtool.yaml", "policies/docs.yaml", "playbooks/docs-drill.yaml", "runbooks/docs.md",
            "signing-public-key.txt"} <= set(stored["files"])
    assert "policies/other.yaml" in stored["files"]          # a symlink, by its target's content
    assert set(stored["skipped"]) == {"policies/README", "policies/draft.yaml.bak"}
    snap = _restic(settings).snapshots(tags=["drtool", "kind=config", f"run={run.id}"])
    assert len(snap) == 1
    dest = tmp_path / "bundle"
    config = fetch_config_bundle(_restic(settings), dest)
    assert config == dest / "drtool.yaml"
    for path in dest.rglob("*"):
        if path.is_file():
            assert (path.stat().st_mode & 0o777) == 0o600
            assert REPO_PASSWORD.encode() not in path.read_bytes()
    assert "policy=docs" in (dest / "runbooks" / "docs.md").read_text()
    key = public_key_b64(load_or_create_signing_key(settings.state_dir))
    assert (dest / "signing-public-key.txt").read_text().strip() == key
    with pytest.raises(BundleError, match="not an empty directory"):
        fetch_config_bundle(_restic(settings), dest)


def test_bundle_verify_catches_altered_files_and_foreign_signers(local, tmp_path):
    settings, _run = local
    key = public_key_b64(load_or_create_signing_key(settings.state_dir))
    bundle = read_config_bundle(_restic(settings))
    bundle.verify(key)
    assert set(bundle.settings(tmp_path).policies) == {"docs", "other"}
    other = public_key_b64(load_or_create_signing_key(tmp_path / "other-state"))
    with pytest.raises(SignatureInvalid, match="not the expected key"):
        bundle.verify(other)
    bundle.files["policies/docs.yaml"] += b"# edited\n"
    with pytest.raises(BundleError, match="does not match its signed manifest"):
        bundle.verify(key)


def test_create_kit_refusals_add_no_key(local, tmp_path):
    settings, _run = local
    before = list_keys(repo_access(settings, "usb"))
    with pytest.raises(UsageError, match="shorter than"):
        create_kit(settings, "docs", tmp_path / "k", "short")
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    with pytest.raises(UsageError, match="already exists"):
        create_kit(settings, "docs", taken, PASSPHRASE)
    with pytest.raises(UsageError, match="neither a policy nor a repository"):
        create_kit(settings, "nope", tmp_path / "k", PASSPHRASE)
    assert taken.read_text() == "someone's file"
    assert list_keys(repo_access(settings, "usb")) == before


def test_kit_create_verify_revoke_by_key_id(local, tmp_path):
    settings, _run = local
    out = tmp_path / "usb.kit.txt"
    summary = create_kit(settings, "usb", out, PASSPHRASE, armor_text=True)    # a repository: all its policies
    assert (out.stat().st_mode & 0o777) == 0o600 and "-----BEGIN AGE ENCRYPTED FILE-----" in out.read_text()
    kit = open_kit(read_kit(out), PASSPHRASE)
    key_id = kit.repositories[0].escrow_key_id
    assert kit.policies == ["docs", "other"] and kit.repositories[0].s3 is None
    assert key_id in {k["id"] for k in list_keys(repo_access(settings, "usb"))}
    assert summary["repositories"][0]["escrow_key_id"] == key_id
    assert REPO_PASSWORD not in json.dumps(summary)

    report = verify_kit(out, PASSPHRASE)
    # "other" was never backed up: the kit opens, but says plainly that nothing is there for it.
    repo = report["repositories"][0]
    assert repo["policies"]["docs"]["files"]["sets"] == 1 and repo["policies"]["other"]["f"]["sets"] == 0
    assert repo["nothing_recoverable_for"] == ["other"] and report["ok"] is False

    current = next(k["id"] for k in list_keys(repo_access(settings, "usb")) if k["current"])
    with pytest.raises(UsageError, match="never revoked here"):
        revoke_kit(settings, current[:8])
    assert revoke_kit(settings, key_id[:8]) == {"revoked": [{"repository": "usb", "key_id": key_id}]}
    with pytest.raises(KitError, match="may have been revoked"):
        verify_kit(out, PASSPHRASE)


def test_custodians_each_have_their_own_escrow_key_and_revoke_alone(local, tmp_path):
    import pyrage

    from drtool.actions.kit import Custodian

    settings, _run = local
    bob = pyrage.x25519.Identity.generate()
    (tmp_path / "bob.key").write_text(str(bob) + "\n")
    before = {k["id"] for k in list_keys(repo_access(settings, "usb"))}
    summary = create_kit(settings, "docs", tmp_path / "docs.age", custodians=[
        Custodian("alice", passphrase=PASSPHRASE), Custodian("bob", recipients=(str(bob.to_public()),))])
    files = {k["custodian"]: Path(k["file"]) for k in summary["kits"]}
    assert files == {"alice": tmp_path / "docs.alice.age", "bob": tmp_path / "docs.bob.age"}
    keys = {k["custodian"]: k["repositories"][0]["escrow_key_id"] for k in summary["kits"]}
    assert keys["alice"] != keys["bob"]
    assert {k["id"] for k in list_keys(repo_access(settings, "usb"))} == before | set(keys.values())
    assert verify_kit(files["bob"], None, identity=tmp_path / "bob.key")["repositories"][0]["opens"]
    # Alice's copy is lost: revoking it leaves Bob's kit working.
    assert revoke_kit(settings, None, custodian="alice")["revoked"][0]["key_id"] == keys["alice"]
    with pytest.raises(KitError, match="may have been revoked"):
        verify_kit(files["alice"], PASSPHRASE)
    assert verify_kit(files["bob"], None, identity=tmp_path / "bob.key")["repositories"][0]["opens"]
    revoke_kit(settings, str(files["bob"]))
    assert {k["id"] for k in list_keys(repo_access(settings, "usb"))} == before


def test_old_format_kit_opens_and_upgrades_to_age(local, tmp_path):
    from drtool.actions.kit import upgrade_kit
    from drtool.crypto import kit_legacy
    from drtool.crypto.kit import kit_format, write_kit

    settings, _run = local
    made = create_kit(settings, "docs", tmp_path / "new.age", PASSPHRASE)
    kit = open_kit(read_kit(tmp_path / "new.age"), PASSPHRASE)
    old = tmp_path / "old.drkit"
    write_kit(old, kit_legacy.seal(kit, PASSPHRASE, log2_n=14))      # as drtool 0.1 wrote it
    assert verify_kit(old, PASSPHRASE)["repositories"][0]["opens"]
    upgraded = tmp_path / "upgraded.age"
    upgrade_kit(old, upgraded, PASSPHRASE)
    assert kit_format(read_kit(upgraded)) == "age"
    assert open_kit(read_kit(upgraded), PASSPHRASE).to_dict() == kit.to_dict()
    with pytest.raises(UsageError, match="already an age kit"):
        upgrade_kit(upgraded, tmp_path / "again.age", PASSPHRASE)
    revoke_kit(settings, made["repositories"][0]["escrow_key_id"][:8])


def test_kit_cli_never_takes_the_passphrase_from_argv_or_a_pipe_less_stdin(local, tmp_path, capsys):
    settings, _run = local
    out = tmp_path / "k"
    assert main(["-c", str(settings.path), "kit", "create", "docs", "--out", str(out)]) == 2
    assert "stdin is not a terminal" in capsys.readouterr().err
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    assert main(["-c", str(settings.path), "kit", "create", "docs", "--out", str(out),
                 "--passphrase-fd", str(read_fd)]) == 2
    assert "empty first line" in capsys.readouterr().err
    assert not out.exists()


def test_bundle_tar_holds_only_known_names(local):
    settings, _run = local
    import io

    from drtool.actions.bundle import build_bundle

    data, manifest = build_bundle(settings, run_id="r1", host="h")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert all(m.isfile() and m.mode == 0o600 for m in tar.getmembers())
    assert "MANIFEST.json" in names and not any(n.startswith("/") or ".." in n for n in names)
    assert manifest["signature"]["alg"] == "ed25519" and Path(settings.path).name == "drtool.yaml"


def test_recover_target_plan_refuses_before_writing(local, tmp_path):
    from drtool.actions.recover import RecoverOptions, _plan_targets
    from drtool.errors import RestoreRefused

    settings, _run = local
    policy = settings.policy("docs")
    data = Path(policy.sources[0].spec.paths[0])
    with pytest.raises(UsageError, match="--target-root DIR"):
        _plan_targets(policy, RecoverOptions())
    with pytest.raises(UsageError, match="not both"):
        _plan_targets(policy, RecoverOptions(target_root=tmp_path, original_paths=True))
    with pytest.raises(RestoreRefused, match="nothing was written"):
        _plan_targets(policy, RecoverOptions(original_paths=True))       # the data is still there
    assert _plan_targets(policy, RecoverOptions(original_paths=True, force=True))["files"].directory == Path("/")
    assert _plan_targets(policy, RecoverOptions(target_root=tmp_path / "new"))["files"].directory == tmp_path / "new"
    assert data.exists() and not (tmp_path / "new").exists()


def test_recover_report_rendering(capsys):
    from drtool.actions.recover import RecoveryReport
    from drtool.cli.kit import _print_recover

    report = RecoveryReport(kit={}, recoverable={"docs": {"repository": "usb", "rto": 60.0, "sources": {
        "files": {"kind": "files", "sets": [{"time": "2024-01-02T03:04:05+00:00", "run": "backup-1"}]},
        "db": {"kind": "postgres", "sets": []}}}}, policy="docs", recovery_time_s=75.0, rto_target_s=60.0)
    report.sources.append({"source": "files", "kind": "files", "snapshot": {"run": "backup-1"},
                           "target": "/r", "verified": False, "problems": ["/x: missing after restore"],
                           "files_checked": 3})
    report.problems.append("files: /x: missing after restore")
    _print_recover(report)
    out, err = capsys.readouterr()
    assert "files (files): newest 2024-01-02T03:04:05 run backup-1" in out and "db (postgres): NOTHING" in out
    assert "NOT VERIFIED" in out and "MISMATCH /x" in err
    assert "recovery time: 75.0s (RTO target 60s: MISSED)" in out and not report.ok
