"""Use case: list the complete snapshot sets of policies."""

from __future__ import annotations

from typing import Any

from drtool.actions.common import open_repo
from drtool.actions.select import snapshot_sets
from drtool.config.loader import Settings
from drtool.config.models import Policy


def list_sets(settings: Settings, policies: list[Policy]) -> list[dict[str, Any]]:
    rows = []
    for policy in policies:
        handle = open_repo(settings, policy.repository)
        for source in policy.sources:
            for s in snapshot_sets(handle.restic, policy, source):
                rows.append({"policy": policy.name, "kind": source.kind, **s.to_dict()})
    return rows
