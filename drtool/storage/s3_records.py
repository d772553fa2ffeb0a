"""drtool's own small objects beside the repository (`<prefix>.drtool/`): run records, drill
reports, copy records. JSON, bounded in size, every text passed through `redact` first:

    s3:http://127.0.0.1:9000/bucket/hosts/db1     restic repository (restic's folders)
    bucket/hosts/db1.drtool/runs/<run id>.json     drtool run records
    bucket/hosts/db1.drtool/drills/<id>.json       drtool drill reports
"""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

from drtool.errors import StorageError
from drtool.secrets import Secret, redact
from drtool.storage.s3_client import MISSING_KEY_CODES, S3Client, client_code

# Catalog objects are small; a bigger one is a bug or tampering, not data to load into memory.
MAX_OBJECT_BYTES = 16 * 1024 * 1024
DEFAULT_LIST_LIMIT = 10_000


class RecordsMixin(S3Client):
    def catalog_key(self, relpath: str) -> str:
        """The object key of a catalog path such as 'runs/<id>.json'."""
        parts = relpath.split("/")
        if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in relpath:
            raise StorageError(f"invalid catalog path {relpath!r}",
                               hint="use a relative path like runs/<run id>.json without '..' or empty parts")
        return self.location.catalog_prefix + relpath

    def put_bytes(self, relpath: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if len(data) > MAX_OBJECT_BYTES:
            raise StorageError(f"catalog object {relpath} is {len(data)} bytes, above the {MAX_OBJECT_BYTES} limit")
        key = self.catalog_key(relpath)
        if self._client is None:
            # Most runs write one record and nothing else to S3: not worth loading boto3 for.
            self.put_object_light(key, data, content_type)
            return
        self._call(f"write {key}", lambda c: c.put_object(
            Bucket=self.location.bucket, Key=key, Body=data, ContentType=content_type))

    def get_bytes(self, relpath: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        key = self.catalog_key(relpath)
        try:
            reply = self._call(f"read {key}", lambda c: c.get_object(Bucket=self.location.bucket, Key=key))
        except StorageError as exc:
            if client_code(exc) in MISSING_KEY_CODES:
                return None
            raise
        return self._read_body(key, reply)

    def _read_body(self, key: str, reply: dict[str, Any]) -> bytes:
        body = reply["Body"]
        try:
            # Read one byte past the limit: memory stays bounded and an oversize object is detected.
            data = self._call(f"read {key}", lambda _c: body.read(MAX_OBJECT_BYTES + 1))
        finally:
            body.close()
        if len(data) > MAX_OBJECT_BYTES:
            raise StorageError(f"catalog object {key} in {self.location.where()} is larger than "
                               f"{MAX_OBJECT_BYTES} bytes", hint="it is not a drtool record; remove it")
        return data

    def put_json(self, relpath: str, obj: Any) -> None:
        # redact(): a record must never carry a secret offsite, whatever a caller put in it.
        text = redact(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))
        self.put_bytes(relpath, text.encode(), content_type="application/json")

    def get_json(self, relpath: str) -> Any:
        """The decoded object, or None when it does not exist."""
        data = self.get_bytes(relpath)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"catalog object {self.catalog_key(relpath)} in {self.location.where()} "
                               f"is not valid JSON: {exc}", hint="delete or repair the object") from None

    def list_json(self, relprefix: str = "", *, limit: int = DEFAULT_LIST_LIMIT) -> list[str]:
        """Catalog paths (relative, e.g. 'runs/x.json') of the JSON objects under relprefix, sorted."""
        rel = relprefix.strip("/")
        prefix = self.catalog_key(rel) + "/" if rel else self.location.catalog_prefix
        found: list[str] = []
        token: str | None = None
        while True:
            page = self._list_page(prefix, token)
            found.extend(o["Key"][len(self.location.catalog_prefix):] for o in page.get("Contents", [])
                         if o["Key"].endswith(".json"))
            if len(found) > limit:
                raise StorageError(f"more than {limit} catalog objects under {prefix} in {self.location.where()}",
                                   hint="prune old records or ask for a narrower prefix")
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return sorted(found)

    def _list_page(self, prefix: str, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix, "MaxKeys": self.page_size}
        if token:
            kwargs["ContinuationToken"] = token
        return self._call(f"list {prefix}", lambda c: c.list_objects_v2(**kwargs))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Secret):
        return repr(value)  # "Secret(***)": the value itself never travels
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} in a catalog JSON object")
