"""Run records and drill reports kept next to the repository, off the server.

S3 repositories: JSON objects under `<prefix>.drtool/` in the same bucket
(drtool.storage.s3). Local-path repositories (tests, USB disks): a sibling
folder `<repo>.drtool/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from drtool.config.models import Repository


class OffsiteRecords:
    def __init__(self, repo: Repository, env: Mapping[str, str] | None = None) -> None:
        self.repo = repo
        self._store = None
        self._dir: Path | None = None
        self._unsupported: str | None = None
        if repo.is_s3:
            from drtool.storage.s3 import store_from_repository
            self._store = store_from_repository(repo, env=env)
        elif repo.url.startswith(("/", "local:")):
            self._dir = Path(repo.url.removeprefix("local:") + ".drtool")
        else:
            # The REST protocol (and sftp: without a folder of ours) stores restic's own files only.
            self._unsupported = (f"{repo.url.split(':', 1)[0]}: repositories hold restic's files only; "
                                 "this run's record is kept in the local catalog")

    def put_json(self, relpath: str, obj: Any) -> None:
        if self._unsupported:
            from drtool.errors import StorageError
            raise StorageError(self._unsupported)
        if self._store is not None:
            self._store.put_json(relpath, obj)
            return
        assert self._dir is not None
        path = self._dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        os.replace(tmp, path)

    def get_json(self, relpath: str) -> Any:
        if self._unsupported:
            return None
        if self._store is not None:
            return self._store.get_json(relpath)
        assert self._dir is not None
        return json.loads((self._dir / relpath).read_text())

    def list(self, relprefix: str) -> list[str]:
        if self._unsupported:
            return []
        if self._store is not None:
            return self._store.list_json(relprefix)
        assert self._dir is not None
        folder = self._dir / relprefix
        if not folder.is_dir():
            return []
        return sorted(f"{relprefix.rstrip('/')}/{p.name}" for p in folder.iterdir() if p.suffix == ".json")
