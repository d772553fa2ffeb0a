"""Write one of restic's own files into a repository, whatever its backend.

drtool writes exactly one kind: a key file under `keys/` (a machine key,
drtool/engine/machine_key.py). restic names key files by the SHA-256 of their bytes, so a
file is written once and never overwritten: an append-only server accepts it too.

    s3:...     boto3, under the repository's prefix
    rest:...   the REST protocol's POST /keys/<name>
    /path      a file, read-only as restic writes them
Other backends (sftp:...) raise StorageError: the caller goes on without.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drtool.errors import StorageError


def put_key_file(repo: Any, env: Mapping[str, str], key_id: str, data: bytes) -> None:
    """Store `data` as keys/<key_id> of `repo` (a models.Repository; `env`: restic's credentials)."""
    relpath = f"keys/{key_id}"
    if repo.is_s3:
        from drtool.storage.s3 import store_from_repository

        store = store_from_repository(repo, env=env)
        assert store is not None
        store.put_repository_file(relpath, data)
    elif repo.is_rest:
        _post_rest(repo, relpath, data)
    elif repo.url.startswith(("/", "local:")):
        _write_local(Path(repo.url.removeprefix("local:")) / relpath, data)
    else:
        raise StorageError(f"drtool cannot write a key file to a {repo.url.split(':', 1)[0]}: repository",
                           hint="only s3:, rest: and local repositories get a machine key")


def _post_rest(repo: Any, relpath: str, data: bytes) -> None:
    from drtool.storage.rest import RestClient

    rest = repo.rest
    client = RestClient(repo.url, rest.username if rest else None,
                        rest.password.resolve() if rest and rest.password else None)
    reply = client.request("POST", relpath, data)
    if reply.status != 200:
        raise StorageError(f"the REST server {client.where()} answered HTTP {reply.status} to writing {relpath}",
                           hint="check the REST credentials (rest.username / rest.password)")


def _write_local(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
