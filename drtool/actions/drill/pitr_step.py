"""The `restore` step with `at:` (PITR sources): base backup + WAL into a throwaway cluster.

    - {name: recover to now, restore: {source: siak-db, into: scratch, at: latest}}
    - {name: a random moment, restore: {source: siak-db, into: scratch, at: {random_within: 7d}}}

The same recovery as `drtool restore --at` (drtool/actions/pitr.py), into a RecoveryPostgres
torn down with the drill (replay tuned for speed: nothing of it survives). The step records
the data loss a real recovery would have had: for `latest`, the time from the step's start
(the moment of the "fire") to the newest canary row in the recovered cluster; for a past
moment, from that moment to the newest canary before it. That measured RPO becomes the
drill's RPO achieved. Later `sql` and `command` steps reach the cluster like any scratch
restore; `verify` does not apply (the backup's row counts are of the base backup's time).
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from drtool.actions.drill.context import DrillContext, Restored
from drtool.actions.drill.model import Outcome, phase_dict
from drtool.actions.pitr import Chain, plan_for, read_chain, recover_into
from drtool.actions.select import snapshot_sets
from drtool.config.models import Step
from drtool.errors import UsageError
from drtool.execute import LocalRunner
from drtool.scratch.common import free_port
from drtool.scratch.pg_recovery import RecoveryPostgres
from drtool.sources.wal_chain import analyse


def restore_at(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.restore
    source = ctx.policy.source(spec.source)
    if source.kind != "postgres" or source.spec.pitr is None:  # type: ignore[union-attr]
        raise UsageError(f"restore step {step.name!r}: `at:` needs a PostgreSQL source with pitr:, "
                         f"and {source.name!r} has none", hint="drop `at:` to restore its newest snapshot set")
    if spec.into != "scratch" or spec.host:
        raise UsageError(f"restore step {step.name!r}: a point-in-time recovery goes into: scratch on this machine")
    fire = datetime.now(timezone.utc)
    started = time.monotonic()
    chain = read_chain(ctx.restic, ctx.policy, source, host=ctx.host, cache_dir=ctx.settings.state_dir / "pitr")
    at = moment(spec.at, chain, fire)
    plan = plan_for(chain, at)
    phases = [phase_dict("plan (base backups + WAL batches listed)", time.monotonic() - started)]
    server = ctx._enter(RecoveryPostgres(plan.base.major or 15, keep=ctx.keep), source.name)
    result = recover_into(server, ctx.restic, ctx.policy, source, plan, port=free_port(), reference=at or fire)
    started = time.monotonic()
    server.settle()
    phases += [*result.phases, phase_dict("settle (recovery settings out)", time.monotonic() - started)]
    from drtool.sources import database_source

    chosen = next(s for s in snapshot_sets(ctx.restic, ctx.policy, source, host=ctx.host) if s.run_id == plan.base.run_id)
    ctx.restored[source.name] = Restored(source, chosen, target=server.target(),
                                         databases=source.spec.database_names,  # type: ignore[union-attr]
                                         db=database_source(source, LocalRunner()), scratch=True)
    info = result.to_dict()
    loss = f"; data loss measured: {result.achieved_rpo_s:.1f}s ({result.rpo_method})" \
        if result.achieved_rpo_s is not None else ""
    return Outcome(f"{source.name} recovered to {info['target']} ({info['recovered_to']}) from base backup "
                   f"{plan.base.run_id} + {result.wal_files} WAL file(s) in {result.batches_fetched} batch(es)"
                   f"{loss}", phases,
                   {"pitr": info, "rpo_achieved_s": info["achieved_rpo_s"], "target": server.target().describe()})


def moment(at: Any, chain: Chain, now: datetime, rng: random.Random | None = None) -> datetime | None:
    """`latest` -> None; a time as given; {random_within: D}: a random recoverable moment of the last D."""
    if at in (None, "latest"):
        return None
    if isinstance(at, datetime):
        return at
    within = timedelta(seconds=at.random_within)
    spans = [(max(a, now - within), b) for a, b in analyse(chain.bases, chain.batches).windows if b >= now - within]
    total = sum((b - a).total_seconds() for a, b in spans)
    if not spans:
        raise UsageError(f"no recoverable moment within the last {at.random_within:.0f}s to choose from",
                         hint="drtool status shows the PITR window")
    pick = (rng or random.Random()).uniform(0, total)
    for a, b in spans:
        length = (b - a).total_seconds()
        if pick <= length:
            return a + timedelta(seconds=pick)
        pick -= length
    return spans[-1][1]
