"""The attack drill on a restic REST repository (rest-server, `rclone serve restic`): with the
production credentials, try to delete and overwrite what the snapshots need, through the
protocol itself. An append-only server refuses every one of them (403).

    attack_rest(client, rescue_dir) -> AttackReport

Targets: the smallest pack, one index and one snapshot file. Their bytes are kept before the
first attempt (in memory and in `rescue_dir`, 0600); an attempt that got through is undone by
writing the original bytes back (restic names these files by the hash of their content).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from drtool.errors import StorageError
from drtool.storage.attempts import Attempt, AttackReport
from drtool.storage.rest import RestClient

GARBAGE = b"drtool attack drill: ransomware would have written this over the file\n"


def attack_rest(client: RestClient, rescue_dir: Path) -> AttackReport:
    pack = _smallest(client, "data")
    index, snapshot = _first(client, "index"), _first(client, "snapshots")
    kept = {path: _read(client, path, rescue_dir) for path in (pack, index, snapshot)}
    plan = [("delete a pack", "DELETE", pack), ("overwrite the pack", "POST", pack),
            ("delete an index", "DELETE", index), ("delete a snapshot", "DELETE", snapshot)]
    attempts = []
    for name, method, path in plan:
        attempts.append(_attempt(client, name, method, path, kept[path]))
    for path, body in kept.items():            # whatever happened, every target is whole again
        if _get(client, path) != body:
            client.request("POST", path, body)
    for body_path in rescue_dir.glob("*"):
        body_path.unlink(missing_ok=True)
    return AttackReport(client.where(), pack, attempts)


def _smallest(client: RestClient, kind: str) -> str:
    items = client.listing(kind)
    if not items:
        raise StorageError(f"no {kind} file at {client.where()} to attack", hint="run a backup first")
    return f"{kind}/{min(items, key=lambda i: i.get('size', 0))['name']}"


def _first(client: RestClient, kind: str) -> str:
    items = client.listing(kind)
    if not items:
        raise StorageError(f"no {kind} file at {client.where()} to attack", hint="run a backup first")
    return f"{kind}/{sorted(i['name'] for i in items)[0]}"


def _get(client: RestClient, path: str) -> bytes | None:
    reply = client.request("GET", path)
    return reply.body if reply.status == 200 else None


def _read(client: RestClient, path: str, rescue_dir: Path) -> bytes:
    body = _get(client, path)
    if body is None or hashlib.sha256(body).hexdigest() != path.rsplit("/", 1)[-1]:
        raise StorageError(f"cannot read {path} from {client.where()} (or it does not match its name)",
                           hint="check the repository with `restic check` before drilling an attack")
    rescue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(rescue_dir / path.replace("/", "-"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
    return body


def _attempt(client: RestClient, name: str, method: str, path: str, original: bytes) -> Attempt:
    call = f"{method} /{path.split('/')[0]}/ID"
    reply = client.request(method, path, GARBAGE if method == "POST" else None)
    answer = f"HTTP {reply.status}"
    if reply.status >= 400:
        return Attempt(name, call, "refused", answer)
    now = _get(client, path)
    if now == original:
        return Attempt(name, call, "intact", f"{answer}, but the file is unchanged")
    put = client.request("POST", path, original)
    restored = "written back from the copy taken before the drill" if put.status < 300 and \
        _get(client, path) == original else f"COULD NOT WRITE IT BACK (HTTP {put.status})"
    return Attempt(name, call, "got-through", f"{answer}: the file is {'gone' if now is None else 'changed'}",
                   restored=restored)
