"""Use case: the Prometheus samples of every policy and playbook, from the catalog.

The catalog holds every run (CLI, units, daemon), so metrics written after any run
agree with each other; no process keeps its own copy. The newest snapshot's time is
the start of the last successful backup (the watchdog reads the repository itself
when it checks the RPO).
"""

from __future__ import annotations

from drtool.catalog import Catalog
from drtool.config.loader import Settings
from drtool.report.prometheus import PlaybookMetrics, PolicyMetrics


def collect(settings: Settings, catalog: Catalog) -> tuple[list[PolicyMetrics], list[PlaybookMetrics]]:
    policies = [_policy(settings, catalog, name) for name in sorted(settings.policies)]
    playbooks = [_playbook(catalog, settings, name) for name in sorted(settings.playbooks)]
    return policies, playbooks


def _policy(settings: Settings, catalog: Catalog, name: str) -> PolicyMetrics:
    policy = settings.policies[name]
    last = catalog.last_run(name, "backup")
    good = catalog.last_run(name, "backup", status="success")
    check = catalog.last_run(name, "check")
    forget = catalog.last_run(name, "forget")
    return PolicyMetrics(
        name, policy.repository, last_success=good.finished_at if good else None,
        last_duration_s=last.duration_s if last else None, last_bytes_added=last.bytes_added if last else None,
        last_ok=last.ok if last else None, newest_snapshot=good.started_at if good else None,
        rpo_target_s=policy.targets.rpo, last_check_ok=check.ok if check else None,
        last_forget_ok=forget.ok if forget else None)


def _playbook(catalog: Catalog, settings: Settings, name: str) -> PlaybookMetrics:
    playbook = settings.playbooks[name]
    last = last_drill_of(catalog, playbook.policy, name)
    rto = (last.details.get("rto") or {}) if last else {}
    target = (playbook.targets.rto if playbook.targets else None) or rto.get("target_s")
    if target is None and playbook.policy in settings.policies:
        target = settings.policies[playbook.policy].targets.rto
    return PlaybookMetrics(name, playbook.policy, last_run=last.started_at if last else None,
                           rto_achieved_s=rto.get("achieved_s"), rto_target_s=target,
                           passed=last.ok if last else None)


def last_drill_of(catalog: Catalog, policy: str, playbook: str, window: int = 50):  # noqa: ANN201 - RunRecord | None
    """The newest drill run of `playbook` (drill records of a policy carry their playbook's name)."""
    for run in catalog.runs(policy=policy, kind="drill", limit=window):
        if (run.details or {}).get("playbook") == playbook:
            return run
    return None
