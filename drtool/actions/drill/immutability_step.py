"""The `immutability` step: the attack drill. With the repository's production credentials (the
ones this server holds, which ransomware on it would hold too) try to delete a pack by version
id, bulk-delete it, shorten its lock, overwrite and delete it, suspend versioning and remove the
bucket's Object Lock configuration (S3), or delete and overwrite packs, indexes and snapshots
through the REST protocol (an append-only rest-server / rclone serve restic). Every attempt and
its result is in the step's data; the step passes only when each one was refused or left the
locked version intact, and otherwise fails naming what got through. What `status` counts as
"immutable" in 3-2-1-1-0 is this step's last result, not the configuration.
"""

from __future__ import annotations

from drtool.actions.common import state_path
from drtool.actions.drill.context import DrillContext
from drtool.actions.drill.model import Outcome, StepFailed
from drtool.config.models import Step
from drtool.errors import UsageError

ENFORCING = ("AWS S3 with Object Lock, or an append-only REST server (rest-server --append-only, "
             "rclone serve restic --append-only); see the README for which servers enforce")


def immutability(ctx: DrillContext, step: Step) -> Outcome:
    name = step.immutability.repository or ctx.handle.name
    repo = ctx.settings.config.repositories[name]
    rescue = state_path(ctx.settings, "attack-drill", name, "x").parent
    if repo.is_s3:
        from drtool.storage.s3 import store_from_repository
        from drtool.storage.s3_attack import attack_s3
        report = attack_s3(store_from_repository(repo), rescue)
    elif repo.is_rest:
        from drtool.storage.rest import RestClient
        from drtool.storage.rest_attack import attack_rest
        rest = repo.rest
        report = attack_rest(RestClient(repo.url, rest.username if rest else None,
                                        rest.password.resolve() if rest and rest.password else None), rescue)
    else:
        raise UsageError(f"the attack drill needs an s3: or rest: repository; {name} is {repo.url}",
                         hint="a local or sftp: repository is as deletable as the files of this server")
    data = {"repository": name, "configured": repo.immutable.mode if repo.immutable else None, **report.to_dict()}
    if not report.passed:
        through = report.through
        what = "; ".join(f"{a.name} [{a.call}]: {a.detail}" + (f" (drtool: {a.restored})" if a.restored else "")
                         for a in through)
        raise StepFailed(f"{len(through)} of {len(report.attempts)} attacks with the production credentials of "
                         f"{name} got through at {report.store}: {what}", data=data,
                         hint=f"this store does not enforce immutability; use one that does: {ENFORCING}")
    return Outcome(f"{report.summary()}, with the production credentials of {name} at {report.store}: "
                   "every attempt was refused or left the locked data intact", data=data)
