"""The fleet view's local cache: each site's records as last read and checked, by ETag.

    cache = SiteCache.load(cache_dir, site, keys)
    cache.get(entry)            # the checked record, if the object is unchanged since (same ETag)
    cache.put(entry, record); cache.save(paths_to_keep)

One 0600 JSON file per site under <fleet state_dir>/fleet-cache/. A listing gives every
object's ETag, so an object read before is fetched again only when it changed (an altered
record gets a new ETag, is fetched and fails its check). The cache is bound to the site's
repository and to the trusted keys: when either changes, it is thrown away, because the
signature outcomes it holds were decided against them. A damaged cache file is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.records import HistoryRecord
from drtool.storage.records_reader import CatalogEntry

VERSION = 1


def binding(repository: str, keys: dict[str, str]) -> str:
    """What the cached signature outcomes depend on."""
    text = repository + "\n" + "\n".join(sorted(keys))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class SiteCache:
    path: Path | None                         # None: no cache (--no-cache)
    bound_to: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)   # paths kept beyond the window (newest good backups)

    @classmethod
    def load(cls, cache_dir: Path | None, site: str, bound_to: str) -> SiteCache:
        if cache_dir is None:
            return cls(None, bound_to)
        path = cache_dir / f"{site}.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, bound_to)
        if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("bound_to") != bound_to:
            return cls(path, bound_to)
        entries = doc.get("entries") if isinstance(doc.get("entries"), dict) else {}
        return cls(path, bound_to, entries, set(doc.get("pinned") or []) & set(entries))

    def get(self, entry: CatalogEntry) -> HistoryRecord | None:
        hit = self.entries.get(entry.path)
        if not hit or hit.get("etag") != entry.etag or not isinstance(hit.get("data"), dict):
            return None
        return HistoryRecord(hit["data"], "offsite", hit.get("signature", "invalid"), hit.get("detail", ""))

    def put(self, entry: CatalogEntry, record: HistoryRecord) -> None:
        self.entries[entry.path] = {"etag": entry.etag, "signature": record.signature,
                                    "detail": record.signature_detail, "data": record.data}

    def save(self, keep: set[str], pinned: set[str]) -> None:
        """Keep only `keep` (what is still listed and wanted); write atomically, 0600."""
        self.entries = {p: e for p, e in self.entries.items() if p in keep}
        self.pinned = pinned & set(self.entries)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": VERSION, "bound_to": self.bound_to, "pinned": sorted(self.pinned),
                       "entries": self.entries}, handle, separators=(",", ":"))
        os.replace(tmp, self.path)
