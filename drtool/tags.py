"""How drtool tags restic snapshots (pure): the contract bare-restic recovery relies on.

    drtool, policy=<policy>, source=<source>, run=<run id>, stream=<stream file>

Database sources: one snapshot per stream (<db>.pgdump, globals.sql, <db>.sql,
<file>.sqlite) plus fingerprint.json, written last. Files sources: a plain
restic snapshot of the paths (no stream tag), or a tar stream `<source>.tar`
when taken from a remote host without restic.
"""

from __future__ import annotations

# Written last for a database source: its presence marks the run's set of streams complete.
FINGERPRINT_STREAM = "fingerprint.json"


def policy_tags(policy, source: str | None = None, *, run_id: str | None = None,  # noqa: ANN001 - Policy
                stream: str | None = None) -> list[str]:
    tags = ["drtool", f"policy={policy.name}"]
    if source:
        tags.append(f"source={source}")
    if run_id:
        tags.append(f"run={run_id}")
    if stream:
        tags.append(f"stream={stream}")
    return tags
