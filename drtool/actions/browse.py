"""Use case: browse what one snapshot set of a source holds (`drtool ls`).

Files: the snapshot's entries from `restic ls --json` (streamed), with type, mode, size and
modification time: an absolute PATH and its direct children; a pattern (relative, or with
wildcards) lists the entries it selects (what `restore --path` would restore) and the
contents of selected directories; `recursive` lists everything below. Databases: the set's streams with their sizes, and per
database its tables with the row counts (and whether a content hash was recorded) from
fingerprint.json.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from drtool.actions.common import open_repo, restic_host
from drtool.actions.dry_run import read_set_fingerprint
from drtool.actions.restore import find_set
from drtool.actions.select import SnapshotSet
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.engine.reader import ResticStreamReader
from drtool.engine.restic import Restic
from drtool.errors import UsageError
from drtool.sources.patterns import check_pattern, matches

GLOB = "*?["


@dataclass
class Listing:
    source: str
    kind: str
    snapshot: SnapshotSet
    entries: list[dict[str, Any]] = field(default_factory=list)     # files
    streams: list[dict[str, Any]] = field(default_factory=list)     # databases
    tables: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "kind": self.kind, "snapshot": self.snapshot.to_dict()}
        if self.kind == "files":
            out["entries"] = self.entries
        else:
            out.update(streams=self.streams, tables=self.tables)
        return out


def list_snapshot(settings: Settings, policy: Policy, source_name: str, *, selector: Any = "latest",
                  path: str | None = None, recursive: bool = False, host: str | None = None) -> Listing:
    try:
        source = policy.source(source_name)
    except KeyError:
        names = ", ".join(s.name for s in policy.sources)
        raise UsageError(f"policy {policy.name!r} has no source {source_name!r} (it has: {names})") from None
    if path is not None:
        check_pattern(path)
    handle = open_repo(settings, policy.repository)
    chosen = find_set(handle, policy, source, selector, host=host or restic_host(settings))
    listing = Listing(source.name, source.kind, chosen)
    if source.kind == "files":
        if chosen.files is None:
            raise UsageError(f"set {chosen.primary.short_id} of {source.name} is a tar stream (taken over SSH "
                             "without restic): it can be restored whole, not browsed")
        listing.entries = list(_files(handle.restic, chosen.files.id, path, recursive))
    else:
        _databases(handle.restic, chosen, path, listing)
    return listing


def _files(restic: Restic, snapshot_id: str, path: str | None, recursive: bool) -> Iterator[dict[str, Any]]:
    pattern = any(c in (path or "") for c in GLOB) or (path is not None and not path.startswith("/"))
    where = posixpath.normpath(path) if path and not pattern else None
    for node in restic.ls(snapshot_id):
        p = node["path"]
        if path is None:
            keep = True
        elif pattern:   # what the pattern selects, and the contents of selected directories
            keep = matches([path], p) and (recursive or not matches([path], posixpath.dirname(posixpath.dirname(p))))
        else:
            keep = p == where or posixpath.dirname(p) == where or (recursive and p.startswith(where + "/"))
        if keep:
            yield {"path": p, "type": node.get("type"), "size": node.get("size"), "mode": node.get("mode"),
                   "mtime": node.get("mtime")}


def _databases(restic: Restic, chosen: SnapshotSet, path: str | None, listing: Listing) -> None:
    fp = read_set_fingerprint(restic, chosen)
    reader = ResticStreamReader(restic, chosen.streams, sizes=fp.get("stream_bytes"))
    listing.streams = [{"stream": name, "bytes": reader.size(name), "time": chosen.streams[name].time.isoformat(),
                        "snapshot": chosen.streams[name].short_id} for name in reader.names()]
    content = fp.get("content", {})
    for db, tables in fp.get("databases", {}).items():
        hashed = content.get(db, {}).get("tables", {})
        for table, rows in tables.items():
            if path is None or fnmatch.fnmatchcase(db, path) or fnmatch.fnmatchcase(f"{db}.{table}", path):
                listing.tables.append({"database": db, "table": table, "rows": rows, "content_hash": table in hashed})
