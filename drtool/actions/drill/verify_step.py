"""The `verify` step: does what was restored hold exactly what was backed up?

- files: every path, type, size, mode and symlink target against the snapshot (content
  was verified by restic while restoring); on a host, against the snapshot's tar, with the
  sha256 of every file computed there;
- databases: the tables and exact row counts of the fingerprint recorded at backup time,
  read from the restored database through the same runner that restored it.
"""

from __future__ import annotations

from drtool.actions.drill.context import DrillContext, Restored
from drtool.actions.drill.model import Outcome, StepFailed
from drtool.actions.restore import verify_files_at
from drtool.config.models import Step
from drtool.execute import LocalRunner
from drtool.report.units import human_bytes
from drtool.errors import DrillFailed
from drtool.sources.base import expected_for, verify_restored  # noqa: F401 - expected_for kept importable here


def verify(ctx: DrillContext, step: Step) -> Outcome:
    restored = ctx.restored_source(step.verify.source)
    if restored.directory is not None:
        return _files(ctx, restored)
    return _database(restored, step.verify.content)


def _files(ctx: DrillContext, restored: Restored) -> Outcome:
    assert restored.directory is not None
    runner = restored.runner or LocalRunner()
    diff = verify_files_at(ctx.restic, restored.chosen, str(restored.directory), runner, restored.paths or ())
    if diff.problems:
        raise StepFailed(f"{len(diff.problems)} differences on {restored.where} from the snapshot, first: "
                         f"{diff.problems[0]}", data={"problems": diff.problems, "host": restored.host})
    how = ("content equal by sha256" if restored.host else "content verified at restore")
    return Outcome(f"{diff.checked} entries on {restored.where} equal to the snapshot (paths, types, sizes, modes, "
                   f"symlink targets); {human_bytes(diff.bytes)} of {how}",
                   data={"checked": diff.checked, "bytes": diff.bytes, "host": restored.host})


def _database(restored: Restored, content: bool = True) -> Outcome:
    """Counts, and the content hashes recorded at backup time (unless `content: false`)."""
    if restored.fingerprint is None:          # a point-in-time recovery: no snapshot's counts describe it
        raise DrillFailed(f"{restored.source.name} was recovered to a point in time: there are no backup row counts "
                          "to compare with", hint="check it with `sql:` steps instead of `verify:`")
    assert restored.db is not None and restored.target is not None
    check = verify_restored(restored.db, restored.target, restored.databases, restored.fingerprint, content=content,
                            tables=restored.tables)
    if check.problems:
        raise StepFailed(f"{len(check.problems)} differences from the backup fingerprint, first: {check.problems[0]}",
                         data={"problems": check.problems})
    return Outcome(check.summary(), data=check.data())
