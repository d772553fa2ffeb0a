"""Use case: list the complete snapshot sets of policies."""

from __future__ import annotations

from typing import Any

from drtool.actions.common import open_repo, restic_host
from drtool.actions.select import snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import Policy


def list_sets(settings: Settings, policies: list[Policy], *, host: str | None = None,
              all_hosts: bool = False) -> list[dict[str, Any]]:
    """This host's sets (or `host`'s, or every host's with all_hosts), in the policy's repository
    and in each of its copies."""
    wanted = None if all_hosts else (host or restic_host(settings))
    rows = []
    for policy in policies:
        for repo in policy.repositories:
            handle = open_repo(settings, repo)
            for source in policy.sources:
                for s in snapshot_sets(handle.restic, policy, source, host=wanted):
                    rows.append({"policy": policy.name, "repository": repo, "kind": source.kind, **s.to_dict()})
    return rows
