"""What a restore, a drill or a recovery would do, without doing any of it (`--dry-run`).

Each plan says which snapshot set would be restored, into where, how many bytes would be
read, and which checks would run afterwards. Only the repository is read (the listing,
fingerprint.json, `restic stats` / `restic ls` for sizes); nothing is written anywhere, no
target is created or connected to, no scratch server is started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drtool.actions.select import FINGERPRINT_STREAM, SnapshotSet
from drtool.config.models import Source
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import DrtoolError, UsageError
from drtool.secrets import redact
from drtool.sources.base import Fingerprint, content_methods
from drtool.sources.patterns import matches

SCRATCH = {"postgres": "a new scratch PostgreSQL server", "mariadb": "a new scratch MariaDB server",
           "sqlite": "a file in a new scratch directory", "files": "a new scratch directory"}


def read_set_fingerprint(restic: Restic, chosen: SnapshotSet) -> Fingerprint:
    return json.loads(ResticStreamReader(restic, chosen.streams).read_bytes(FINGERPRINT_STREAM))


def database_plan(restic: Restic, source: Source, chosen: SnapshotSet, *, tables: Sequence[str] = (),
                  schemas: Sequence[str] = (), fingerprint: Fingerprint | None = None) -> dict[str, Any]:
    """Streams and bytes of a database set, and the checks a verify would run on it."""
    fp = fingerprint if fingerprint is not None else read_set_fingerprint(restic, chosen)
    reader = ResticStreamReader(restic, chosen.streams, sizes=fp.get("stream_bytes"))
    streams = {name: reader.size(name) for name in reader.names()}
    counted = {db: list(t) for db, t in fp.get("databases", {}).items()}
    hashed = {db: len(entry.get("tables", {})) for db, entry in fp.get("content", {}).items()}
    checks = [f"row counts of {sum(len(t) for t in counted.values())} tables against fingerprint.json"]
    checks.append(f"content hashes of {sum(hashed.values())} tables ({', '.join(sorted(set(content_methods(fp).values())))})"
                  if hashed else "no content hashes in this backup's fingerprint: counts only")
    plan: dict[str, Any] = {"streams": streams, "bytes": sum(n or 0 for n in streams.values()),
                            "databases": counted, "checks": checks}
    if tables or schemas:
        plan["tables"] = matching_tables(fp, tables, schemas)
        plan["checks"] = [f"row counts{' and content hashes' if hashed else ''} of the "
                          f"{len(plan['tables'])} restored tables"]
        plan["note"] = "the whole dump stream is read; only the chosen tables are loaded"
    return plan


def matching_tables(fp: Fingerprint, tables: Sequence[str], schemas: Sequence[str]) -> list[str]:
    """Fingerprint keys (PostgreSQL schema.table, MariaDB table) named by --table / --schema."""
    keys = [t for tabs in fp.get("databases", {}).values() for t in tabs if not t.startswith("(")]
    found: list[str] = []
    for wanted in tables:
        hits = [k for k in keys if k == wanted or (fp.get("kind") == "postgres" and "." not in wanted
                                                   and k.split(".", 1)[-1] == wanted)]
        if not hits:
            raise UsageError(f"the backup holds no table {wanted!r} (it has: {', '.join(keys[:20]) or 'none'}"
                              f"{' ...' if len(keys) > 20 else ''})",
                              hint="list them with `drtool ls POLICY --source SOURCE`")
        found += hits
    for schema in schemas:
        hits = [k for k in keys if k.split(".", 1)[0] == schema]
        if not hits:
            raise UsageError(f"the backup holds no table in schema {schema!r}")
        found += hits
    return sorted(set(found))


def files_plan(restic: Restic, chosen: SnapshotSet, paths: Sequence[str] = ()) -> dict[str, Any]:
    """Entries and bytes a files restore would write (the part --path selects, if given)."""
    checks = ["restic restore --verify: content hashes of every restored file"]
    if chosen.files is None:            # a tar stream taken from a host without restic
        [(name, snap)] = chosen.streams.items()
        size = ResticStreamReader(restic, chosen.streams).size(name)
        return {"stream": name, "bytes": size, "checks": ["tar extraction, then every entry against the archive"]}
    if not paths:
        stats = restic.stats(chosen.files.id)
        # restore-size counts every node restic writes (files, directories, links)
        return {"entries": stats.get("total_file_count"), "bytes": stats.get("total_size"), "checks": checks}
    files = entries = size = 0
    for node in restic.ls(chosen.files.id):
        if matches(paths, node["path"]):
            entries += 1
            if node.get("type") == "file":
                files += 1
                size += int(node.get("size", 0))
    checks.append("the restored tree against the part of the snapshot listing the patterns select")
    return {"paths": list(paths), "entries": entries, "files": files, "bytes": size, "checks": checks}


def target_state(path: Path) -> str:
    """What a restore into `path` would meet (a local stat; nothing is created)."""
    if not os.path.lexists(path):
        return "does not exist: would be created"
    if not path.is_dir():
        return "exists and is not a directory: the restore would be refused"
    if any(path.iterdir()):
        return "exists and is not empty: the restore would be refused without --force"
    return "exists and is empty"


# ---------------------------------------------------------------- drills

def plan_drill(settings: Any, playbook: Any, *, host: str | None = None,  # noqa: ANN401 - Settings, Playbook
               now: datetime | None = None) -> dict[str, Any]:
    """Each step of a drill as it would run: sets, targets, bytes, checks. Nothing starts."""
    from drtool.actions.common import open_repo, restic_host
    from drtool.actions.select import choose, snapshot_sets

    now = now or datetime.now(timezone.utc)
    policy = settings.policy(playbook.policy)
    handle = open_repo(settings, policy.repository)
    whose = host or restic_host(settings)
    sets: dict[str, SnapshotSet | str] = {}
    for step in playbook.steps:
        name = getattr(step.spec, "source", None)
        if name and name not in sets:
            try:
                sets[name] = choose(snapshot_sets(handle.restic, policy, policy.source(name), host=whose),
                                    playbook.snapshot, now=now)
            except DrtoolError as exc:
                sets[name] = exc.message
    plans: dict[str, dict[str, Any]] = {}
    steps = [_plan_step(handle.restic, policy, step, sets, plans) for step in playbook.steps]
    chosen = [s for s in sets.values() if isinstance(s, SnapshotSet)]
    oldest = min(chosen, key=lambda s: s.time) if chosen else None
    return {"dry_run": True, "playbook": playbook.name, "policy": policy.name, "host": whose,
            "snapshot": oldest.to_dict() if oldest else None,
            "rpo_if_run_now_s": (now - oldest.time).total_seconds() if oldest else None,
            "bytes": sum(p.get("bytes") or 0 for p in plans.values()), "steps": steps,
            "runnable": all(s["runnable"] for s in steps)}


def _plan_step(restic: Restic, policy: Any, step: Any, sets: dict[str, Any],  # noqa: ANN401
               plans: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": step.name, "kind": step.kind, "runnable": True}
    spec = step.spec
    source_name = getattr(spec, "source", None)
    chosen = sets.get(source_name) if source_name else None
    if isinstance(chosen, str):
        return {**out, "runnable": False, "would": f"cannot run: {chosen}"}
    if step.kind == "restore":
        source = policy.source(source_name)
        plan = (files_plan(restic, chosen, spec.paths) if source.kind == "files" else
                database_plan(restic, source, chosen, tables=spec.tables, schemas=spec.schemas))
        plans[source_name] = plan
        where = SCRATCH[source.kind] + " (not started in a dry run)" if spec.into == "scratch" else spec.into
        where += f" on host {spec.host}" if spec.host else ""
        what = f"{len(plan['tables'])} table(s) of {source_name}" if "tables" in plan else source_name
        return {**out, "would": f"restore {what} from set {chosen.primary.short_id} (run {chosen.run_id}, "
                                f"{chosen.time:%Y-%m-%d %H:%M} UTC) into {where}",
                "snapshot": chosen.to_dict(), "bytes": plan.get("bytes"), "streams": plan.get("streams"),
                **({"tables": plan["tables"]} if "tables" in plan else {})}
    if step.kind == "verify":
        checks = plans.get(source_name, {}).get("checks", [])
        if policy.source(source_name).kind == "files":
            checks = [*checks, "every restored entry against the snapshot listing (paths, types, sizes, modes)"]
        elif not spec.content:
            checks = [c for c in checks if not c.startswith("content hashes")] + ["content: false (counts only)"]
        return {**out, "would": f"verify {source_name}", "checks": checks}
    return {**out, "would": _describe_other(step)}


def _describe_other(step: Any) -> str:  # noqa: ANN401
    spec = step.spec
    if step.kind == "sql":
        return f"run {spec.query.strip()[:200]!r} on restored {spec.source}, expect {spec.expect.model_dump(exclude_none=True)}"
    if step.kind == "command":
        return redact(f"run {' '.join(spec.argv)[:300]}") + (f" on host {spec.host}" if spec.host else "")
    if step.kind == "http":
        return f"GET {redact(spec.url)}, expect status {spec.status}" + (f" and /{spec.body_regex}/" if spec.body_regex else "")
    if step.kind == "kit":
        return f"open the repository with {'recovery kit ' + spec.file if spec.file else 'the configured password'}"
    return step.kind
