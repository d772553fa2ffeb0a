"""The `kit` step: prove the recovery credentials open the repository, and what they recover.

With `file:` (a recovery kit) and `passphrase:`, the kit's escrow key must open the
repository and the configuration bundle must be signed by the key the kit names; without
a kit, the configured password is proved. Either way every source of the policy must
have at least one complete snapshot set of this drill's host.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from drtool.actions.bundle import read_config_bundle
from drtool.actions.drill.context import DrillContext
from drtool.actions.drill.model import Outcome, StepFailed
from drtool.actions.kit import kit_access
from drtool.actions.select import snapshot_sets
from drtool.config.models import Step
from drtool.crypto.kit import open_kit, read_kit
from drtool.engine.restic import Restic
from drtool.errors import UsageError


def kit(ctx: DrillContext, step: Step) -> Outcome:
    """Prove the recovery credentials open the repository, and say what they can recover."""
    spec = step.kit
    if spec.file:
        if spec.passphrase is None:
            raise UsageError("a kit step with file: needs passphrase: (a secret reference)")
        kit_file = Path(spec.file)
        if not kit_file.is_absolute() and ctx.playbook_path:   # relative to the playbook file
            kit_file = Path(ctx.playbook_path).parent / kit_file
        opened = open_kit(read_kit(kit_file), spec.passphrase.resolve().reveal())
        entry = opened.repository(ctx.policy.repository)
        access = kit_access(entry)   # the kit's own S3 keys (if it holds them) and the escrow key hint
        if "AWS_SECRET_ACCESS_KEY" not in access.env:
            access = replace(access, env={**ctx.restic.access.env, **access.env})
        how = f"the escrow key {entry.escrow_key_id} from recovery kit {kit_file}"
    else:
        access = ctx.restic.access
        how = "the configured repository password (no recovery kit given)"
    with_kit = Restic(access, cache_dir=None)
    with_kit.run(["cat", "config"], timeout=300)
    if spec.file:
        # A kit is only as good as the configuration it leads to: the bundle must be there
        # and signed by the key the kit names.
        read_config_bundle(with_kit, host=ctx.host).verify(opened.signing_public_key)
    recoverable = {}
    for source in ctx.policy.sources:
        sets = snapshot_sets(with_kit, ctx.policy, source, host=ctx.host)
        recoverable[source.name] = {"sets": len(sets), "newest": sets[-1].time.isoformat() if sets else None}
    missing = [name for name, info in recoverable.items() if not info["sets"]]
    summary = ", ".join(f"{n}: {i['sets']} sets" for n, i in recoverable.items())
    if missing:
        raise StepFailed(f"repository opens with {how}, but nothing is recoverable for {', '.join(missing)} "
                         f"({summary})", data={"recoverable": recoverable})
    return Outcome(f"repository opens with {how}; recoverable: {summary}", data={"recoverable": recoverable})
