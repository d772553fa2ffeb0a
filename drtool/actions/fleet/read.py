"""Reading one site's newest records straight from its bucket (read-only), through the cache.

    read_site(fleet, site, cache_dir) -> SiteRead

1. list `<prefix>.drtool/runs/` and `drills/` (one request per 1,000 objects; names start
   with the run's UTC time, so they sort oldest first and carry the run's kind);
2. pick the newest records of each kind (fleet `records:` window) plus the pinned ones (each
   policy's newest good backup, kept even when newer failures push it out of the window);
3. take every unchanged one (same ETag) from the cache, fetch the rest;
4. check every fetched record's Ed25519 signature against the site's key and the fleet's
   trusted keys: unsigned and altered records are kept, marked, and never used.

A site whose bucket cannot be listed keeps its cached records (shown, marked unreachable).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from drtool.actions.fleet.cache import SiteCache, binding
from drtool.config.fleet import Fleet, RecordWindow, Site
from drtool.errors import DrtoolError
from drtool.records import HistoryRecord, check_signature_by
from drtool.storage.records_reader import CatalogEntry, RecordStore

NAME_RE = re.compile(r"^(?P<folder>runs|drills)/\d{8}T\d{6}Z-(?P<kind>[a-z][a-z-]*)-[0-9a-f]{6}\.json$")
FOLDERS = ("runs", "drills")


@dataclass
class SiteRead:
    site: str
    records: list[HistoryRecord] = field(default_factory=list)
    error: str | None = None               # the bucket could not be read (cached records are kept)
    listed: int = 0                        # objects listed
    fetched: int = 0                       # records fetched now
    cached: int = 0                        # records taken from the cache
    seconds: float = 0.0
    paths: dict[int, str] = field(default_factory=dict)      # id(record) -> its path (for pinning)


def trusted_keys(fleet: Fleet, site: Site) -> dict[str, str]:
    keys = {k: "a trusted key of the fleet" for k in fleet.trusted_keys}
    keys[site.signing_key] = "the site's key"
    return keys


def select_newest(entries: list[CatalogEntry], window: RecordWindow, pinned: set[str] = frozenset()) -> list[CatalogEntry]:
    """Pure: the newest entries of each kind (backup, check, forget; drills), plus the pinned ones,
    oldest first. Names drtool did not write are left out."""
    limits = {("runs", "backup"): window.backups, ("runs", "check"): window.checks,
              ("runs", "forget"): window.forgets}
    groups: dict[tuple[str, str], list[CatalogEntry]] = {}
    for entry in entries:
        found = NAME_RE.match(entry.path)
        if not found:
            continue
        folder, kind = found.group("folder"), found.group("kind")
        key = ("drills", "drill") if folder == "drills" else (folder, kind)
        if key in limits or key == ("drills", "drill"):
            groups.setdefault(key, []).append(entry)
    chosen: dict[str, CatalogEntry] = {}
    for key, group in groups.items():
        limit = window.drills if key == ("drills", "drill") else limits[key]
        for entry in sorted(group, key=lambda e: e.path)[-limit:]:
            chosen[entry.path] = entry
    for entry in entries:
        if entry.path in pinned:
            chosen.setdefault(entry.path, entry)
    return sorted(chosen.values(), key=lambda e: e.path)


def site_store(site: Site) -> RecordStore:
    access = site.s3.access_key_id.resolve() if site.s3 else None
    secret = site.s3.secret_access_key.resolve() if site.s3 else None
    return RecordStore.for_site(site.repository, access, secret, site.s3.region if site.s3 else "us-east-1",
                                connect_timeout=3.0, read_timeout=20.0, max_attempts=2)


def read_site(fleet: Fleet, site: Site, cache_dir: Path | None) -> SiteRead:
    started = time.monotonic()
    keys = trusted_keys(fleet, site)
    cache = SiteCache.load(cache_dir, site.name, binding(site.repository, keys))
    out = SiteRead(site.name)
    try:
        store = site_store(site)
        # One listing of the whole catalog (runs/ and drills/ together): one request per 1,000 objects.
        entries = [e for e in store.list_entries() if e.path.split("/", 1)[0] in FOLDERS]
    except DrtoolError as exc:
        out.error = exc.message.splitlines()[0][:300]
        out.records = [r for r in (cache.get(_entry(p, e)) for p, e in cache.entries.items()) if r is not None]
        out.cached = len(out.records)
        out.seconds = time.monotonic() - started
        return out
    out.listed = len(entries)
    wanted = select_newest(entries, fleet.records, cache.pinned)
    for entry in wanted:
        record = cache.get(entry)
        if record is None:
            try:
                record = _fetch(store, entry, keys)
            except DrtoolError as exc:
                out.error = f"{entry.path}: {exc.message.splitlines()[0][:250]}"
                continue
            if record is None:
                continue                      # deleted between the listing and now
            cache.put(entry, record)
            out.fetched += 1
        else:
            out.cached += 1
        out.records.append(record)
        out.paths[id(record)] = entry.path
    out.records.sort(key=lambda r: r.started_at)
    cache.save({e.path for e in wanted}, pinned_paths(out))
    out.seconds = time.monotonic() - started
    return out


def _entry(path: str, cached: dict) -> CatalogEntry:
    return CatalogEntry(path, str(cached.get("etag", "")), 0)


def _fetch(store: RecordStore, entry: CatalogEntry, keys: dict[str, str]) -> HistoryRecord | None:
    data = store.get_json(entry.path)
    if data is None:
        return None
    if not isinstance(data, dict):
        return HistoryRecord({"id": entry.path}, "offsite", "invalid", "not a JSON object")
    return check_signature_by(data, keys)


def pinned_paths(read: SiteRead) -> set[str]:
    """Each policy's newest usable successful backup: kept in the cache beyond the window."""
    newest: dict[str, HistoryRecord] = {}
    for record in read.records:
        data = record.data
        if record.usable and data.get("kind") == "backup" and data.get("status") == "success":
            newest[str(data.get("policy"))] = record          # records are oldest first
    return {read.paths[id(r)] for r in newest.values() if id(r) in read.paths}
