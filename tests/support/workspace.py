"""A drtool workspace for tests: drtool.yaml + policies/ + playbooks/ on a real S3 bucket."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

CANARY_PASSWORD = "canary-Repo-Pw-7f3a9c1e"


@dataclass
class Workspace:
    root: Path
    config: Path
    env: dict[str, str]
    repo_url: str

    def policy(self, name: str, sources: list[dict], **extra: object) -> Path:
        doc = {"name": name, "repository": "offsite", "sources": sources, **extra}
        path = self.root / "policies" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def playbook(self, name: str, doc: dict) -> Path:
        path = self.root / "playbooks" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **doc}, sort_keys=False))
        return path

    def drtool(self, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "drtool", "-c", str(self.config), *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"drtool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def restic(self, *args: str) -> subprocess.CompletedProcess:
        env = {**self.env, "RESTIC_REPOSITORY": self.repo_url, "RESTIC_PASSWORD": CANARY_PASSWORD}
        return subprocess.run(["restic", *args], capture_output=True, text=True, env=env, timeout=120)


def make_workspace(root: Path, s3, bucket: str, prefix: str = "repo", *,  # noqa: ANN001
                   password: str = CANARY_PASSWORD) -> Workspace:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "playbooks").mkdir(exist_ok=True)
    pw = root / "repo.pass"
    pw.write_text(password)
    pw.chmod(0o600)
    repo_url = s3.repo_url(bucket, prefix)
    config = {
        "state_dir": str(root / "state"),
        "hostname": "drtool-test",
        "repositories": {"offsite": {
            "url": repo_url,
            "password": {"file": str(pw)},
            "s3": {"access_key_id": {"env": "DRT_S3_KEY"}, "secret_access_key": {"env": "DRT_S3_SECRET"}},
        }},
    }
    path = root / "drtool.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "DRT_S3_KEY": s3.access_key, "DRT_S3_SECRET": s3.secret_key,
           "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    env.pop("DRTOOL_CONFIG", None)
    return Workspace(root, path, env, repo_url)
