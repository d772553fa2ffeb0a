"""The `verify` step: does what was restored hold exactly what was backed up?

- files: every path, type, size, mode and symlink target against the snapshot (content
  was verified by restic while restoring); on a host, against the snapshot's tar, with the
  sha256 of every file computed there;
- databases: the tables and exact row counts of the fingerprint recorded at backup time,
  read from the restored database through the same runner that restored it.
"""

from __future__ import annotations

from typing import Any

from drtool.actions.drill.context import DrillContext, Restored
from drtool.actions.drill.model import Outcome, StepFailed
from drtool.actions.restore import verify_files_at
from drtool.config.models import Step
from drtool.execute import LocalRunner
from drtool.report.units import human_bytes
from drtool.errors import DrillFailed
from drtool.sources.base import compare_fingerprints


def verify(ctx: DrillContext, step: Step) -> Outcome:
    restored = ctx.restored_source(step.verify.source)
    if restored.directory is not None:
        return _files(ctx, restored)
    return _database(restored)


def _files(ctx: DrillContext, restored: Restored) -> Outcome:
    assert restored.directory is not None
    runner = restored.runner or LocalRunner()
    diff = verify_files_at(ctx.restic, restored.chosen, str(restored.directory), runner)
    if diff.problems:
        raise StepFailed(f"{len(diff.problems)} differences on {restored.where} from the snapshot, first: "
                         f"{diff.problems[0]}", data={"problems": diff.problems, "host": restored.host})
    how = ("content equal by sha256" if restored.host else "content verified at restore")
    return Outcome(f"{diff.checked} entries on {restored.where} equal to the snapshot (paths, types, sizes, modes, "
                   f"symlink targets); {human_bytes(diff.bytes)} of {how}",
                   data={"checked": diff.checked, "bytes": diff.bytes, "host": restored.host})


def _database(restored: Restored) -> Outcome:
    if restored.fingerprint is None:          # a point-in-time recovery: no snapshot's counts describe it
        raise DrillFailed(f"{restored.source.name} was recovered to a point in time: there are no backup row counts "
                          "to compare with", hint="check it with `sql:` steps instead of `verify:`")
    assert restored.db is not None and restored.target is not None
    actual = restored.db.fingerprint_target(restored.target, restored.databases)
    expected = expected_for(restored.fingerprint, restored.databases)
    problems = compare_fingerprints(expected, actual)
    if problems:
        raise StepFailed(f"{len(problems)} differences from the backup fingerprint, first: {problems[0]}",
                         data={"problems": problems})
    tables = sum(len(t) for t in expected["databases"].values())
    rows = sum(sum(t.values()) for t in expected["databases"].values())
    return Outcome(f"{tables} tables, {rows} rows: exactly the counts recorded at backup time",
                   data={"tables": tables, "rows": rows})


def expected_for(fingerprint: dict[str, Any], restored: list[str]) -> dict[str, Any]:
    """The backup fingerprint keyed by restored database names (one database may be renamed)."""
    original = fingerprint.get("databases", {})
    if len(original) == 1 and len(restored) == 1:
        return {"databases": {restored[0]: next(iter(original.values()))}}
    return {"databases": {db: original.get(db, {}) for db in restored}}
