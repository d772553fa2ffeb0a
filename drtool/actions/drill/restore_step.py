"""The `restore` step: one source into a scratch instance, a named server or a directory,
on this machine or (with `host:`) on a standby host over SSH. One code path: the context's
runner for the host decides where programs run; the source and the restore actions do the rest.

- files: `restic restore --verify` here; `restic dump SNAP / | tar -x -C DIR` on a host
  (a non-empty DIR is refused unless force);
- databases: the source's own restore with the host's runner (pg_restore / the mariadb
  client run there, fed over the channel; `into:` is a server URL as that host sees it);
  `into: scratch` starts a throwaway instance here (scratch instances are local only).
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

from drtool.actions.drill.context import DrillContext, Restored
from drtool.actions.drill.model import Outcome, phase_dict
from drtool.actions.restore import Part, parse_db_target, refuse_missing_paths, restore_files_to
from drtool.actions.select import SnapshotSet
from drtool.config.models import Source, Step
from drtool.engine.reader import ResticStreamReader
from drtool.errors import UsageError
from drtool.execute import Runner
from drtool.report.units import human_bytes

RESTORE_TIMEOUT_S = 24 * 3600.0


def restore(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.restore
    if spec.at is not None:                   # point-in-time recovery (PITR sources)
        from drtool.actions.drill.pitr_step import restore_at
        return restore_at(ctx, step)
    source = ctx.policy.source(spec.source)
    chosen = ctx.snapshot_set(source.name)
    if spec.host and spec.into == "scratch":
        what = "an absolute directory on that host" if source.kind in ("files", "sqlite") else \
            "a server URL as seen from that host, e.g. postgresql://postgres@127.0.0.1:5432/name"
        raise UsageError(f"restore step {step.name!r} targets host {spec.host!r}: into: must be {what}, not scratch",
                         hint="scratch instances are started on this machine only")
    Part.of_step(spec).check(source)           # as `drtool restore --path/--table`: before anything is read
    runner = ctx.runner(spec.host)
    if source.kind == "files":
        return _files(ctx, step, source, chosen, runner)
    return _database(ctx, step, source, chosen, runner)


def _files(ctx: DrillContext, step: Step, source: Source, chosen: SnapshotSet, runner: Runner) -> Outcome:
    spec = step.restore
    scratch = spec.into == "scratch"
    dest = str(ctx.scratch_dir(source.name)) if scratch else _absolute(spec.into, spec.host)
    timeout = (step.timeout + 5.0) if step.timeout else RESTORE_TIMEOUT_S
    started = time.monotonic()
    refuse_missing_paths(ctx.restic, chosen, spec.paths)              # nothing written yet
    done = restore_files_to(ctx.restic, chosen, dest, runner, force=spec.force, timeout=timeout, include=spec.paths)
    took = time.monotonic() - started
    where = f" on host {spec.host}" if spec.host else ""
    ctx.restored[source.name] = Restored(source, chosen, directory=Path(dest) if not spec.host else PurePosixPath(dest),
                                         scratch=scratch, host=spec.host, runner=runner, paths=spec.paths or None)
    phase = phase_dict(done.phase, took, done.bytes)
    what = f" matching {', '.join(spec.paths)}" if spec.paths else ""
    return Outcome(f"{done.describe()}{what} from {chosen.primary.short_id} into {dest}{where}; {done.checked}",
                   [phase], {"target": dest, "bytes": done.bytes, "files": done.files,
                             **({"paths": spec.paths} if spec.paths else {}),
                             **({"host": spec.host} if spec.host else {})})


def _database(ctx: DrillContext, step: Step, source: Source, chosen: SnapshotSet, runner: Runner) -> Outcome:
    from drtool.sources import database_source

    spec = step.restore
    phases = []
    started = time.monotonic()
    fingerprint = ctx.fingerprint(source.name)
    phases.append(phase_dict("read fingerprint", time.monotonic() - started))
    scratch = spec.into == "scratch"
    started = time.monotonic()
    if scratch:
        target = ctx.scratch_target(source, fingerprint)
        phases.append(phase_dict("start scratch instance", time.monotonic() - started))
    elif source.kind == "sqlite":
        target = parse_db_target("sqlite", _absolute(spec.into, spec.host))
    else:
        target = parse_db_target(source.kind, spec.into)
    db = database_source(source, runner)
    reader = ResticStreamReader(ctx.restic, chosen.streams, sizes=fingerprint.get("stream_bytes"))
    result = db.restore(reader, target, force=spec.force, **Part.of_step(spec).restore_kwargs(fingerprint))
    phases += [phase_dict(p.name, p.duration_s, p.bytes) for p in result.phases]
    part = list(result.tables) if spec.tables or spec.schemas else None
    ctx.restored[source.name] = Restored(source, chosen, target=target, databases=list(result.databases), db=db,
                                         fingerprint=fingerprint, scratch=scratch, host=spec.host, runner=runner,
                                         tables=part)
    where = f" on host {spec.host}" if spec.host else ""
    what = f"{len(part)} table(s) of " if part is not None else ""
    return Outcome(f"{what}{', '.join(result.databases) or 'nothing'} ({human_bytes(result.bytes)}) from "
                   f"{chosen.primary.short_id} into {target.describe()}{where}", phases,
                   {"target": target.describe(), "databases": list(result.databases), "bytes": result.bytes,
                    **({"tables": part, "skipped": list(result.skipped)} if part is not None else {}),
                    **({"host": spec.host} if spec.host else {})})


def _absolute(path: str, host: str | None) -> str:
    if not path.startswith("/"):
        where = f" on host {host}" if host else ""
        raise UsageError(f"into: must be scratch, a server URL or an absolute path{where}, got {path!r}")
    return str(PurePosixPath(path))
