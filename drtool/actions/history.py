"""Use case: a policy's run and drill history, from the local catalog or the signed records offsite.

    load_history(settings, policy, catalog, offsite="auto") -> PolicyHistory

The local catalog answers quickly on the machine that ran the jobs. On a
fresh machine (an empty state dir: the server burned) the same history is
read back from the signed JSON records beside the repository (runs/<id>.json,
drills/<id>.json). Every offsite record's Ed25519 signature is checked: a
record that fails is kept in the history, marked invalid, and never used for
a verdict or a forecast (`usable`), so an edited "passed" cannot turn a
breach into an ok.

The expected signer is this installation's public key when its state dir
holds the signing key; without it (a fresh machine) a signature only proves
the record is unchanged since someone signed it, and the signer's key
fingerprint is shown so a person can compare it with the recovery kit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from drtool.catalog import Catalog
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import DrtoolError
from drtool.records import HistoryRecord, check_signature

log = logging.getLogger(__name__)

OffsiteMode = Literal["auto", "always", "never"]

DRILL_LIMIT = 200          # newest drills considered per policy
RUN_LIMIT = 400            # newest backup/forget/check/copy records per policy (about a year of nightly runs)
RUN_KINDS = ("backup", "forget", "check", "copy")
OFFSITE_LIMITS = {"drills": 500, "runs": 1500}   # newest objects read per repository folder
OFFSITE_READERS = 8


@dataclass
class PolicyHistory:
    policy: str
    drills: list[HistoryRecord] = field(default_factory=list)    # drill reports, oldest first
    runs: list[HistoryRecord] = field(default_factory=list)      # backup/forget/check/copy records, oldest first
    origins: set[str] = field(default_factory=set)
    offsite_error: str | None = None

    def usable_drills(self) -> list[dict[str, Any]]:
        return [r.data for r in self.drills if r.usable]

    def usable_runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r.data for r in self.runs if r.usable and (kind is None or r.data.get("kind") == kind)]

    @property
    def invalid(self) -> list[HistoryRecord]:
        return [r for r in self.drills + self.runs if not r.usable]


class OffsiteCache:
    """Offsite records per repository, read once per command (several policies share a repository)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._records: dict[tuple[str, str], list[HistoryRecord]] = {}
        self.expected_key = local_public_key(settings)

    def records(self, repo_name: str, folder: str, name_filter: str = "") -> list[HistoryRecord]:
        key = (repo_name, folder + "|" + name_filter)
        if key not in self._records:
            self._records[key] = self._read(repo_name, folder, name_filter, OFFSITE_LIMITS.get(folder, 500))
        return self._records[key]

    def _read(self, repo_name: str, folder: str, name_filter: str, limit: int) -> list[HistoryRecord]:
        from drtool.offsite import OffsiteRecords

        from concurrent.futures import ThreadPoolExecutor

        store = OffsiteRecords(self.settings.config.repositories[repo_name])
        # Names start with the run's UTC time: the newest `limit` are the last ones.
        names = [n for n in store.list(folder) if name_filter in n.rsplit("/", 1)[-1]][-limit:]
        # Small objects, one GET each: a few at a time (the S3 client is thread-safe).
        with ThreadPoolExecutor(max_workers=OFFSITE_READERS, thread_name_prefix="offsite-read") as pool:
            documents = list(pool.map(store.get_json, names))
        return [check_signature(d, self.expected_key) for d in documents if isinstance(d, dict)]


def local_public_key(settings: Settings) -> str | None:
    """This installation's public signing key, if its state dir has one (never creates one)."""
    from drtool.crypto.signing import KEY_FILE, SigningKeyError, load_or_create_signing_key, public_key_b64

    if not (settings.state_dir / KEY_FILE).exists():
        return None
    try:
        return public_key_b64(load_or_create_signing_key(settings.state_dir))
    except SigningKeyError as exc:
        log.warning("cannot use the local signing key to check records: %s", exc.message)
        return None


def load_history(settings: Settings, policy: Policy, catalog: Catalog, *, offsite: OffsiteMode = "auto",
                 cache: OffsiteCache | None = None, host: str | None = None) -> PolicyHistory:
    """The policy's history. offsite="auto" reads the offsite records only when the local catalog has
    no drill of this policy (a fresh machine); "always" merges both (the dashboard); "never" is local only."""
    from drtool.actions.common import restic_host

    host = host or restic_host(settings)       # drills of this host's backups, like status's snapshots
    history = PolicyHistory(policy.name)
    local_drills = [r.details for r in catalog.runs(policy=policy.name, kind="drill", limit=DRILL_LIMIT)
                    if r.details and r.details.get("steps") is not None]
    history.drills = [HistoryRecord(d, "catalog") for d in local_drills]
    history.runs = [HistoryRecord(r.to_dict(), "catalog") for kind in RUN_KINDS
                    for r in catalog.runs(policy=policy.name, kind=kind, limit=RUN_LIMIT)]
    if history.drills or history.runs:
        history.origins.add("catalog")
    if offsite == "always" or (offsite == "auto" and not history.drills):
        _merge_offsite(history, settings, policy, cache or OffsiteCache(settings), host,
                       drills_only=offsite == "auto" and bool(history.runs))
    history.drills.sort(key=lambda r: r.started_at)
    history.runs.sort(key=lambda r: r.started_at)
    return history


def _merge_offsite(history: PolicyHistory, settings: Settings, policy: Policy, cache: OffsiteCache,
                   host: str | None, *, drills_only: bool) -> None:
    try:
        drills = [r for r in cache.records(policy.repository, "drills")
                  if r.data.get("policy") == policy.name and (host is None or r.data.get("host") in (None, host))]
        runs = [] if drills_only else [r for r in cache.records(policy.repository, "runs")
                                       if r.data.get("policy") == policy.name]
    except DrtoolError as exc:
        history.offsite_error = exc.message.splitlines()[0][:300]
        return
    known = {r.id for r in history.drills + history.runs}
    new_drills = [r for r in drills if r.id not in known][-DRILL_LIMIT:]
    new_runs = [r for r in runs if r.id not in known and r.data.get("kind") in RUN_KINDS]
    history.drills += new_drills
    history.runs += new_runs[-RUN_LIMIT * 3:]
    if new_drills or new_runs:
        history.origins.add("offsite")
