"""Files: backup to real S3 (rclone) with real restic, restore elsewhere, identical tree."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.workspace import CANARY_PASSWORD, make_workspace

pytestmark = pytest.mark.integration


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size,
                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture()
def data_tree(tmp_path: Path) -> Path:
    root = tmp_path / "srv" / "scans"
    (root / "sub dir" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "KTP-Ṡürabaya-ñ.txt").write_text("unicode ✓ data\n")
    (root / "sub dir" / "deeper" / "scan.bin").write_bytes(os.urandom(300_000))
    (root / "private.key").write_text("secret-ish")
    (root / "private.key").chmod(0o600)
    (root / "link-to-scan").symlink_to("sub dir/deeper/scan.bin")
    (root / "dangling").symlink_to("/nonexistent/target")
    (root / "skip.tmp").write_text("excluded")
    with open(root / "sparse.img", "wb") as f:   # large and sparse: 200 MiB apparent, a few KiB on disk
        f.seek(200 << 20)
        f.write(b"end")
    return root


def test_files_backup_restore_roundtrip_identical(tmp_path, s3_server, bucket, data_tree):
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("scans", [{"name": "scans", "files": {"paths": [str(data_tree)], "exclude": ["*.tmp"]}}])

    first = ws.drtool("backup", "scans", "--json", check=True)
    run = json.loads(first.stdout.strip().splitlines()[-1])
    assert run["status"] == "success" and len(run["snapshots"]) == 1

    target = tmp_path / "restored"
    ws.drtool("restore", "scans", "--source", "scans", "--target", str(target), check=True)
    restored = target / str(data_tree).lstrip("/")
    expected = {k: v for k, v in _tree(data_tree).items() if not k.endswith(".tmp")}
    assert _tree(restored) == expected

    # A second restore into the now non-empty target is refused, nothing written.
    again = ws.drtool("restore", "scans", "--source", "scans", "--target", str(target))
    assert again.returncode == 2 and "not empty" in again.stderr     # refused: exit 2, nothing touched

    # The snapshot is a plain restic snapshot with drtool's tags: bare restic can read it.
    snaps = [s for s in json.loads(ws.restic("snapshots", "--json").stdout) if "kind=config" not in s["tags"]]   # not the bundle
    assert {"drtool", "policy=scans", "source=scans"} <= set(snaps[0]["tags"])
    assert snaps[0]["hostname"] == "drtool-test"

    # The run is in the local catalog and offsite, next to the repository.
    runs = json.loads(ws.drtool("runs", "--json", check=True).stdout)
    assert runs[0]["id"] == run["id"] and runs[0]["status"] == "success"
    offsite = s3_server.root / bucket / "repo.drtool" / "runs" / f"{run['id']}.json"
    assert json.loads(offsite.read_text())["status"] == "success"


def test_secret_never_in_output_or_records(tmp_path, s3_server, bucket, data_tree):
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("scans", [{"name": "scans", "files": {"paths": [str(data_tree)]}}])
    out = ws.drtool("-vv", "backup", "scans", "--json", check=True)
    assert CANARY_PASSWORD not in out.stdout + out.stderr
    assert s3_server.secret_key not in out.stdout + out.stderr
    for path in (tmp_path / "ws" / "state").rglob("*"):
        if path.is_file():
            assert CANARY_PASSWORD.encode() not in path.read_bytes(), path
    for path in (s3_server.root / bucket / "repo.drtool").rglob("*.json"):
        assert CANARY_PASSWORD not in path.read_text()
    assert stat.S_IMODE((tmp_path / "ws" / "state" / "catalog.db").stat().st_mode) == 0o600


def test_the_key_the_password_opens_is_remembered_as_restics_key_hint(tmp_path, s3_server, bucket):
    import json as _json
    import os as _os

    from drtool.actions.common import open_repo
    from tests.support.drtool_env import data_root, make_env

    with data_root() as prod:
        (prod / "a.txt").write_text("A\n")
        env = make_env(tmp_path, s3_server, bucket)
        env.policy("docs", [{"name": "scans", "files": {"paths": [str(prod)]}}])
        env.backup("docs")
    [hint] = list((env.state_dir / "repos").glob("*.keyhint"))
    keys = _json.loads(subprocess.run(
        ["restic", "-r", env.s3.repo_url(env.bucket, env.prefix), "--password-file", str(env.root / "repo.pass"),
         "key", "list", "--json"], capture_output=True, text=True, check=True,
        env={**_os.environ, "AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key}).stdout)
    current = next(k["id"] for k in keys if k["current"])
    assert hint.read_text().strip() == current
    with env._environ():
        handle = open_repo(env.settings(), "offsite")
    assert handle.restic.access.env["RESTIC_KEY_HINT"] == current
