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
from pathlib import Path
from typing import Any

from drtool.actions.select import FINGERPRINT_STREAM, SnapshotSet
from drtool.config.models import Source
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import UsageError
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
        return {"files": stats.get("total_file_count"), "bytes": stats.get("total_size"), "checks": checks}
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
