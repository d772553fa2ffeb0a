"""The daemon's jobs, from the settings, and the pure rules about them.

Every scheduled job is backup/forget/check of a policy, the drill of a playbook, or the
lock extension (with verification) of an Object Lock repository that a policy uses.
`conflicts` says what may not run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from drtool.config.loader import Settings
from drtool.schedule_math import Job, parse_schedule

MAINTENANCE = ("forget", "check")


@dataclass(frozen=True)
class JobInfo:
    job: Job
    policy: str                          # the policy the job works on (a drill's playbook.policy)
    repository: str

    @property
    def kind(self) -> str:
        return self.job.kind


def build_jobs(settings: Settings) -> list[JobInfo]:
    """Every scheduled job: backup/forget/check per policy, drill per playbook."""
    jobs: list[JobInfo] = []
    for policy in settings.policies.values():
        for kind, expr in (("backup", policy.schedule), ("forget", policy.forget_schedule),
                           ("check", policy.check.schedule)):
            if expr:
                jobs.append(JobInfo(Job(f"{kind}:{policy.name}", parse_schedule(expr)), policy.name, policy.repository))
    for playbook in settings.playbooks.values():
        if playbook.schedule and playbook.policy in settings.policies:
            repo = settings.policies[playbook.policy].repository
            jobs.append(JobInfo(Job(f"drill:{playbook.name}", parse_schedule(playbook.schedule)), playbook.policy, repo))
    for name, repository in sorted(settings.config.repositories.items()):
        using = sorted(p.name for p in settings.policies.values() if name in p.repositories)
        if repository.object_lock and using:    # recorded under the first policy using it
            jobs.append(JobInfo(Job(f"lock-extend:{name}", parse_schedule(repository.immutable.schedule)),
                                using[0], name))
    return jobs


def conflicts(a: JobInfo, b: JobInfo) -> bool:
    """May `a` not start while `b` runs?

    - the same job never runs twice at once;
    - a drill of policy P never overlaps P's backup (it would restore a snapshot being made);
    - forget/check never run beside anything else on the same repository
      (prune rewrites packs that a backup, restore or check is reading).
    """
    if a.job.id == b.job.id:
        return True
    if {a.kind, b.kind} == {"backup", "drill"} and a.policy == b.policy:
        return True
    return (a.kind in MAINTENANCE or b.kind in MAINTENANCE) and a.repository == b.repository
