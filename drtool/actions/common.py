"""What every action needs: the repository of a policy, its tags, the run's host name."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.engine.restic import Restic, repo_access
from drtool.errors import DrtoolError

log = logging.getLogger(__name__)


@dataclass
class RepoHandle:
    name: str
    restic: Restic
    settings: Settings

    @property
    def repository(self):  # noqa: ANN201 - models.Repository
        return self.settings.config.repositories[self.name]

    def offsite(self):  # noqa: ANN201 - OffsiteRecords, imported lazily (boto3)
        from drtool.offsite import OffsiteRecords
        return OffsiteRecords(self.repository)


def open_repo(settings: Settings, repo_name: str) -> RepoHandle:
    cache = settings.state_dir / "restic-cache"
    return RepoHandle(repo_name, Restic(repo_access(settings, repo_name), cache_dir=cache), settings)


def restic_host(settings: Settings) -> str:
    return settings.config.hostname or socket.gethostname()


def policy_tags(policy: Policy, source: str | None = None, *, run_id: str | None = None,
                stream: str | None = None) -> list[str]:
    tags = ["drtool", f"policy={policy.name}"]
    if source:
        tags.append(f"source={source}")
    if run_id:
        tags.append(f"run={run_id}")
    if stream:
        tags.append(f"stream={stream}")
    return tags


def preflight(handle: RepoHandle, *, create: bool, on_event=None) -> dict:  # noqa: ANN001
    """Check the bucket (S3) and the restic repository; initialise when allowed."""
    info: dict = {}
    repo = handle.repository
    if repo.is_s3:
        from drtool.storage.s3 import store_from_repository
        store = store_from_repository(repo)
        if store is not None:
            status = store.preflight(create_bucket=create and (repo.s3.create_bucket if repo.s3 else True))
            info["bucket"] = status.describe()
            if status.created and on_event:
                on_event({"event": "notice", "message": f"created bucket for {repo.url}"})
    if not handle.restic.exists():
        if not create:
            raise DrtoolError(f"no restic repository at {repo.url}",
                              hint=f"run `drtool init-repo {handle.name}` first")
        handle.restic.init()
        info["initialised"] = True
        if on_event:
            on_event({"event": "notice", "message": f"initialised a new restic repository at {repo.url}"})
    return info


def state_path(settings: Settings, *parts: str) -> Path:
    path = settings.state_dir.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
