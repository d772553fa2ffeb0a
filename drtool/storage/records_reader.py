"""Reading other sites' catalog objects (their signed run and drill records), many sites at once.

    store = RecordStore.for_site(url, access_key, secret_key, region)
    entries = store.list_entries("runs")          # [CatalogEntry(path, etag, size)], oldest first
    record = store.get_json(entries[-1].path)

The fleet view reads hundreds of buckets, each with its own read-only credentials, so each
site gets its own boto3 client. They are all made from one shared boto3 session: a fresh
session per client costs about 190 ms of CPU (botocore loads its service data again), a
client from a shared session about 10 ms. Listings carry each object's ETag, so a record
read before and unchanged since need not be fetched again (drtool.actions.fleet.cache).
Only reads: this module never writes to a site's bucket.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from drtool.secrets import Secret
from drtool.storage.s3 import S3Store, parse_s3_url

_session: Any = None
_session_lock = threading.Lock()


@dataclass(frozen=True)
class CatalogEntry:
    path: str          # relative to the catalog prefix, e.g. runs/20261201T020000Z-backup-1a2b3c.json
    etag: str
    size: int


def _shared_session() -> Any:
    global _session
    import boto3

    if _session is None:
        _session = boto3.session.Session()
    return _session


class RecordStore(S3Store):
    """An S3Store for reading a site's records: shared session, listings with ETags."""

    @classmethod
    def for_site(cls, url: str, access_key: Secret | None, secret_key: Secret | None, region: str,
                 **kwargs: Any) -> RecordStore:
        return cls(parse_s3_url(url), access_key, secret_key, region, **kwargs)

    def _make_client(self) -> Any:
        from botocore.config import Config

        access, secret = self._credentials()
        config = Config(connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                        retries={"max_attempts": self.max_attempts, "mode": "standard"},
                        s3={"addressing_style": "path"}, max_pool_connections=4)
        # Explicit keys: boto3 never walks its credential chain or probes the metadata address.
        # Client creation from one session is not thread-safe; using the clients is.
        with _session_lock:
            return _shared_session().client(
                "s3", endpoint_url=self.location.endpoint_url, config=config, region_name=self.region,
                aws_access_key_id=access.reveal(), aws_secret_access_key=secret.reveal())

    def list_entries(self, relprefix: str = "") -> list[CatalogEntry]:
        """Every JSON object under the catalog folder `relprefix` (default: the whole catalog), sorted by path."""
        rel = relprefix.strip("/")
        prefix = self.catalog_key(rel) + "/" if rel else self.location.catalog_prefix
        found: list[CatalogEntry] = []
        token: str | None = None
        while True:
            page = self._list_page(prefix, token)
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".json"):
                    found.append(CatalogEntry(obj["Key"][len(self.location.catalog_prefix):],
                                              str(obj.get("ETag", "")).strip('"'), int(obj.get("Size") or 0)))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return sorted(found, key=lambda e: e.path)
