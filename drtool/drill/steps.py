"""One function per step kind: restore, verify, sql, command, http, kit.

Each takes the drill context and the step, and returns an `Outcome` (detail,
phases, extra data) or raises: `StepFailed` for a check that did not hold,
any `DrtoolError` for something that went wrong. `run_step` times the call,
applies the step's timeout and turns all of it into a `StepResult`.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from drtool.catalog import utcnow
from drtool.config.durations import format_duration
from drtool.config.models import Step
from drtool.drill.context import DrillContext, Restored
from drtool.drill.model import StepResult, check_expect, phase_dict
from drtool.drill.timing import call_with_timeout
from drtool.errors import DrillFailed, DrtoolError, UsageError
from drtool.secrets import redact
from drtool.sources.base import expected_for  # noqa: F401 - kept importable from here

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 3600.0       # when the step sets none
HTTP_TIMEOUT_S = 60.0
HTTP_BODY_LIMIT = 1 << 20
OUTPUT_TAIL = 2000


class StepFailed(DrillFailed):
    """A step ran and its check did not hold."""

    def __init__(self, message: str, *, data: dict[str, Any] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.data = data or {}


@dataclass
class Outcome:
    detail: str
    phases: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- restore

def restore(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.restore
    source = ctx.policy.source(spec.source)
    chosen = ctx.snapshot_set(source.name)
    if spec.host:
        from drtool.drill import remote
        return remote.restore(ctx, step, chosen)
    if source.kind == "files":
        return _restore_files(ctx, step, chosen)
    return _restore_database(ctx, step, chosen)


def _restore_files(ctx: DrillContext, step: Step, chosen: Any) -> Outcome:
    from drtool.actions.restore import restore_files_set

    spec = step.restore
    scratch = spec.into == "scratch"
    dest = ctx.scratch_dir(spec.source) if scratch else _absolute(spec.into)
    started = time.monotonic()
    restore_files_set(ctx.restic, chosen, dest, force=spec.force)
    took = time.monotonic() - started
    files, nbytes = tree_size(dest)
    ctx.restored[spec.source] = Restored(ctx.policy.source(spec.source), chosen, directory=dest, scratch=scratch)
    phase = phase_dict("download+decrypt+write+verify (restic restore --verify)", took, nbytes)
    return Outcome(f"{files} files, {_mb(nbytes)} from {chosen.primary.short_id} into {dest}; "
                   f"content hashes re-read and verified by restic",
                   [phase], {"target": str(dest), "bytes": nbytes, "files": files})


def _restore_database(ctx: DrillContext, step: Step, chosen: Any) -> Outcome:
    from drtool.actions.restore import parse_db_target
    from drtool.engine.reader import ResticStreamReader
    from drtool.execute import LocalRunner
    from drtool.sources import database_source

    spec = step.restore
    source = ctx.policy.source(spec.source)
    phases = []
    started = time.monotonic()
    fingerprint = ctx.fingerprint(source.name)
    phases.append(phase_dict("read fingerprint", time.monotonic() - started))
    scratch = spec.into == "scratch"
    started = time.monotonic()
    if scratch:
        target = {"postgres": lambda: ctx.scratch_postgres(source.name, fingerprint),
                  "mariadb": lambda: ctx.scratch_mariadb(source.name),
                  "sqlite": lambda: ctx.scratch_sqlite(source.name)}[source.kind]()
        phases.append(phase_dict("start scratch instance", time.monotonic() - started))
    elif source.kind == "sqlite":
        target = parse_db_target("sqlite", str(_absolute(spec.into)))
    else:
        target = parse_db_target(source.kind, spec.into)
    db = database_source(source, LocalRunner())
    reader = ResticStreamReader(ctx.restic, chosen.streams, sizes=fingerprint.get("stream_bytes"))
    result = db.restore(reader, target, force=spec.force)
    phases += [phase_dict(p.name, p.duration_s, p.bytes) for p in result.phases]
    ctx.restored[source.name] = Restored(source, chosen, target=target, databases=list(result.databases),
                                         db=db, fingerprint=fingerprint, scratch=scratch)
    return Outcome(f"{', '.join(result.databases) or 'nothing'} ({_mb(result.bytes)}) from "
                   f"{chosen.primary.short_id} into {target.describe()}",
                   phases, {"target": target.describe(), "databases": list(result.databases), "bytes": result.bytes})


# ---------------------------------------------------------------- verify

def verify(ctx: DrillContext, step: Step) -> Outcome:
    from drtool.drill.remote import RemoteRestored

    restored = ctx.restored_source(step.verify.source)
    if isinstance(restored, RemoteRestored) and restored.directory is not None:
        return _verify_remote_files(ctx, restored)
    if restored.directory is not None:
        return _verify_files(ctx, restored)
    return _verify_database(restored, step.verify.content)


def _verify_files(ctx: DrillContext, restored: Restored) -> Outcome:
    from drtool.actions.restore import verify_files_set

    assert restored.directory is not None
    diff = verify_files_set(ctx.restic, restored.chosen, restored.directory)
    if diff.problems:
        raise StepFailed(f"{len(diff.problems)} differences from the snapshot listing, first: {diff.problems[0]}",
                         data={"problems": diff.problems})
    return Outcome(f"{diff.checked} entries equal to the snapshot listing (paths, types, sizes, modes, "
                   f"symlink targets); {_mb(diff.bytes)} of content verified at restore",
                   data={"checked": diff.checked, "bytes": diff.bytes})


def _verify_remote_files(ctx: DrillContext, restored: Any) -> Outcome:
    from drtool.drill.remote import verify_files

    diff = verify_files(ctx, restored)
    if diff.problems:
        raise StepFailed(f"{len(diff.problems)} differences between host {restored.host} and the snapshot, "
                         f"first: {diff.problems[0]}", data={"problems": diff.problems, "host": restored.host})
    return Outcome(f"{diff.checked} entries on host {restored.host} equal to the snapshot (paths, types, sizes, "
                   f"modes, symlink targets); {_mb(diff.bytes)} of content equal by sha256",
                   data={"checked": diff.checked, "bytes": diff.bytes, "host": restored.host})


def _verify_database(restored: Restored, content: bool = True) -> Outcome:
    from drtool.sources.base import verify_restored

    assert restored.db is not None and restored.target is not None and restored.fingerprint is not None
    check = verify_restored(restored.db, restored.target, restored.databases, restored.fingerprint, content=content)
    if check.problems:
        raise StepFailed(f"{len(check.problems)} differences from the backup fingerprint, first: {check.problems[0]}",
                         data={"problems": check.problems})
    return Outcome(check.summary(), data=check.data())


# ---------------------------------------------------------------- sql

def sql(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.sql
    restored = ctx.restored_source(spec.source)
    if restored.db is None or restored.target is None:
        raise UsageError(f"source {spec.source!r} is files; sql steps need a database source")
    database = spec.database or (restored.databases[0] if restored.databases else None)
    rows = restored.db.query(restored.target, spec.query, database)
    value = rows[0][0] if rows and rows[0] else None
    ex = spec.expect
    problems = check_expect(value, ex.equals, ex.min, ex.max, ex.regex)
    shown = "no row" if value is None else repr(value[:200])
    if problems:
        raise StepFailed(f"{'; '.join(problems)} (query: {spec.query.strip()[:200]})", data={"value": value})
    return Outcome(f"got {shown}, as expected", data={"value": value})


# ---------------------------------------------------------------- command

def command(ctx: DrillContext, step: Step) -> Outcome:
    from drtool.execute import LocalRunner

    spec = step.command
    # Our own subprocess timeout is a little longer than the step's: the step timer
    # fires first and reports timed_out.
    timeout = (step.timeout + 5.0) if step.timeout else COMMAND_TIMEOUT_S
    if spec.host:
        from drtool.drill.remote import run_command
        return run_command(ctx, step, timeout)
    env = {**ctx.command_env(), **spec.env}
    result = LocalRunner().run(spec.argv, env=env, timeout=timeout, check=False)
    out = redact(result.stdout.decode("utf-8", "replace"))[-OUTPUT_TAIL:]
    err = redact(result.stderr.decode("utf-8", "replace"))[-OUTPUT_TAIL:]
    data = {"exit_code": result.returncode, "stdout_tail": out, "stderr_tail": err}
    if result.returncode != 0:
        last = (err.strip() or out.strip()).splitlines()[-1:] or ["no output"]
        raise StepFailed(f"{spec.argv[0]} exited with code {result.returncode}: {last[0][:300]}", data=data)
    last = out.strip().splitlines()[-1:] or ["no output"]
    return Outcome(f"{spec.argv[0]} exited 0: {last[0][:300]}", data=data)


# ---------------------------------------------------------------- http

def http(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.http
    url = urlparse(spec.url)
    if url.scheme not in ("http", "https"):
        raise UsageError(f"http step URL must be http:// or https://, got {spec.url!r}")
    timeout = step.timeout or HTTP_TIMEOUT_S
    # No proxies: a drill checks the restored service directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(spec.url, method="GET"), timeout=timeout) as resp:
            status, body = resp.status, resp.read(HTTP_BODY_LIMIT)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(HTTP_BODY_LIMIT) if exc.fp else b""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StepFailed(f"GET {redact(spec.url)} failed: {reason}") from None
    text = body.decode("utf-8", "replace")
    problems = []
    if status != spec.status:
        problems.append(f"status {status}, expected {spec.status}")
    if spec.body_regex and re.search(spec.body_regex, text) is None:
        problems.append(f"body does not match /{spec.body_regex}/")
    data = {"status": status, "bytes": len(body)}
    if problems:
        raise StepFailed(f"GET {redact(spec.url)}: {'; '.join(problems)}", data=data)
    return Outcome(f"GET {redact(spec.url)}: status {status}" + (", body matches" if spec.body_regex else ""),
                   data=data)


# ---------------------------------------------------------------- kit

def kit(ctx: DrillContext, step: Step) -> Outcome:
    """Prove the recovery credentials open the repository, and say what they can recover."""
    from drtool.actions.select import snapshot_sets
    from drtool.engine.restic import RepoAccess, Restic

    spec = step.kit
    if spec.file:
        if spec.passphrase is None:
            raise UsageError("a kit step with file: needs passphrase: (a secret reference)")
        from drtool.crypto.kit import open_kit, read_kit

        from drtool.actions.kit import kit_access

        kit_file = Path(spec.file)
        if not kit_file.is_absolute() and ctx.playbook_path:   # relative to the playbook file
            kit_file = Path(ctx.playbook_path).parent / kit_file
        opened = open_kit(read_kit(kit_file), spec.passphrase.resolve().reveal())
        entry = opened.repository(ctx.policy.repository)
        access = kit_access(entry)   # the kit's own S3 keys (if it holds them) and the escrow key hint
        if "AWS_SECRET_ACCESS_KEY" not in access.env:
            access = RepoAccess(access.url, access.password, {**ctx.restic.access.env, **access.env})
        how = f"the escrow key {entry.escrow_key_id} from recovery kit {kit_file}"
    else:
        access = ctx.restic.access
        how = "the configured repository password (no recovery kit given)"
    with_kit = Restic(access, cache_dir=None)
    with_kit.run(["cat", "config"], timeout=300)
    if spec.file:
        # A kit is only as good as the configuration it leads to: the bundle must be there
        # and signed by the key the kit names.
        from drtool.actions.bundle import read_config_bundle
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


# ---------------------------------------------------------------- running one step

STEP_FUNCTIONS: dict[str, Callable[[DrillContext, Step], Outcome]] = {
    "restore": restore, "verify": verify, "sql": sql, "command": command, "http": http, "kit": kit,
}


def run_step(ctx: DrillContext, step: Step) -> StepResult:
    function = STEP_FUNCTIONS[step.kind]
    started_at = utcnow()
    timed = call_with_timeout(lambda: function(ctx, step), step.timeout, ctx.cancel)
    result = StepResult(step.name, step.kind, "passed", started_at, timed.duration_s)
    if timed.timed_out:
        result.status = "timed_out"
        result.detail = (f"did not finish within its timeout of {format_duration(step.timeout)}; "
                         f"stopped {timed.stopped} of its processes")
        if timed.still_running:
            result.detail += " (its work did not stop; drtool moved on)"
        return result
    error = timed.error
    if error is None:
        outcome: Outcome = timed.value
        result.detail, result.phases, result.data = outcome.detail, outcome.phases, outcome.data
    elif isinstance(error, StepFailed):
        result.status, result.detail, result.data = "failed", error.message, error.data
    elif isinstance(error, DrtoolError):
        result.status, result.detail = "failed", _one_paragraph(str(error))
    elif isinstance(error, KeyboardInterrupt):
        raise error
    elif isinstance(error, Exception):
        log.error("drill step %r crashed", step.name, exc_info=error)
        result.status, result.detail = "failed", redact(f"internal error: {type(error).__name__}: {error}")[:1000]
    else:
        raise error
    return result


def tree_size(root: Path) -> tuple[int, int]:
    files = total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            files += 1
            total += st.st_size
    return files, total


def _absolute(path: str) -> Path:
    p = Path(path)
    if not p.is_absolute():
        raise UsageError(f"into: must be scratch, a server URL or an absolute path, got {path!r}")
    return p


def _mb(nbytes: int | None) -> str:
    value = float(nbytes or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _one_paragraph(text: str, limit: int = 1500) -> str:
    return redact(text.strip())[:limit]
