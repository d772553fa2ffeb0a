"""Use case: this machine's own restic key for a repository (drtool/engine/machine_key.py).

    machine_key_slot(settings, repo, password) -> MachineKeySlot | None   what open_repo hands Restic
    ensure_machine_key(handle, host) -> dict | None                      make one once per machine

A machine key belongs to the password it is derived from: the repository password (backups,
drills, restores: label "repository") or an escrow password (`drtool recover` from a kit:
label "escrow:<key id>"). Each label has its own entry in the state file, so a recovery and the
recovered server's later backups never take each other's key for a rotated password.

Made once per repository and machine (the first backup, `drtool init-repo`, `drtool recover`):
restic prints the master key (`restic cat masterkey`, opened with the repository password),
drtool seals it (drtool/crypto/restic_key.py) with a password derived from the repository
password and 32 random bytes, writes the key file into the repository, and keeps it only once
restic has opened the repository with it. This machine stores the random bytes and the key's
id (state_dir/repos/*.machinekey, 0600): no secret. Without the repository password they open
nothing; with a wrong or rotated one the derived password no longer opens the key, so a wrong
password still stops a run, and a rotated one gets a new key (the old one is removed). The
key appears in `restic key list` as user `drtool`, this machine's host name.
`machine_key: false` on a repository turns it off.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drtool.config.loader import Settings
from drtool.engine.machine_key import MachineKey, MachineKeySlot
from drtool.errors import DrtoolError
from drtool.rotation import write_private_json
from drtool.secrets import Secret

log = logging.getLogger(__name__)

KEY_USER = "drtool"
REPOSITORY = "repository"


def _state_file(settings: Settings, url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return settings.state_dir / "repos" / f"{digest}.machinekey"


def machine_key_slot(settings: Settings, repo: Any, password: Secret,
                     label: str = REPOSITORY) -> MachineKeySlot | None:
    """The machine key this machine made for `repo` (a models.Repository) under `label`, opened
    with `password`; None when there is none (or it is turned off)."""
    path = _state_file(settings, repo.url)
    if not repo.machine_key or not path.is_file():
        return None
    try:
        entry = _entries(json.loads(path.read_text()))[label]
        key = _key(str(entry["key_id"]), base64.b64decode(entry["salt"], validate=True), password)
    except KeyError:
        return None                                    # none for this password yet
    except (OSError, ValueError, TypeError, binascii.Error) as exc:
        log.warning("ignoring the unreadable machine key file %s (%s); the repository password is used",
                    path, type(exc).__name__)
        return None
    return MachineKeySlot(key)


def _entries(data: Any) -> dict[str, dict[str, Any]]:
    """The file's keys by label (a file of one key, as first written, is the repository's)."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    if "key_id" in data or "salt" in data:
        if "salt" not in data:
            raise ValueError("no salt")
        return {REPOSITORY: data}
    return data


def _key(key_id: str, salt: bytes, password: Secret) -> MachineKey:
    from drtool.crypto.restic_key import machine_password

    return MachineKey(key_id, Secret(machine_password(password.reveal().encode(), salt)))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One maker at a time per repository (two policies of one repository may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_machine_key(handle: Any, host: str, label: str = REPOSITORY) -> dict[str, Any] | None:
    """Make this machine's key for the handle's repository (for the password `label` names)
    unless it has one restic accepts. Returns what was done, for the run record (None: nothing
    to do). Never raises: without a machine key every restic process only costs its key
    derivation again, and a password that opens nothing fails the run's own restic processes
    with that cause."""
    repo, restic = handle.repository, handle.restic
    if not repo.machine_key or restic.usable_machine_key() is not None:    # waits for the key's check
        return None
    path = _state_file(handle.settings, repo.url)
    old = restic.machine_key.key.key_id if restic.machine_key is not None else None
    try:
        with _locked(path):
            if restic.machine_key is None:
                made_meanwhile = machine_key_slot(handle.settings, repo, restic.access.password, label)
                if made_meanwhile is not None and made_meanwhile.usable(restic.opens_with) is not None:
                    restic.machine_key = made_meanwhile        # by another run of this repository
                    return None
            key, salt = _make(handle, host)
            _save(path, label, {"key_id": key.key_id, "salt": base64.b64encode(salt).decode()})
    except (DrtoolError, OSError, ValueError) as exc:
        message = exc.message if isinstance(exc, DrtoolError) else str(exc)
        log.info("no machine key for %s: %s", repo.url, message.splitlines()[0])
        return {"made": False, "error": message.splitlines()[0][:300]}
    restic.machine_key = MachineKeySlot(key, checked=True)
    log.info("made machine key %s for %s", key.key_id[:8], repo.url)
    made: dict[str, Any] = {"made": True, "key_id": key.key_id}
    if old is not None and old != key.key_id:
        made["replaced"] = {"key_id": old, "removed": _remove_old(restic, old)}
    return made


def _save(path: Path, label: str, entry: dict[str, Any]) -> None:
    try:
        entries = _entries(json.loads(path.read_text())) if path.is_file() else {}
    except (OSError, ValueError, TypeError):
        entries = {}                                   # unreadable: replaced whole
    write_private_json(path, {**entries, label: entry})


def _make(handle: Any, host: str) -> tuple[MachineKey, bytes]:
    from drtool.crypto.restic_key import MACHINE_SALT_BYTES, seal_master_key
    from drtool.storage.repo_files import put_key_file

    restic = handle.restic
    master = restic.run(["--no-lock", "cat", "masterkey"], timeout=120).stdout
    salt = os.urandom(MACHINE_SALT_BYTES)
    password = _key("", salt, restic.access.password).password
    sealed = seal_master_key(master, password.reveal().encode(), username=KEY_USER, hostname=host)
    del master
    put_key_file(handle.repository, restic.access.env, sealed.key_id, sealed.data)
    key = MachineKey(sealed.key_id, password)
    problem = restic.opens_with(key)
    if problem is not None:
        raise problem
    return key, salt


def _remove_old(restic: Any, key_id: str) -> bool:
    """The machine key of the repository's previous password: revoked, as a password rotation
    means (unless it is gone already). Best effort: an append-only or locked store may refuse."""
    from drtool.engine.restic_keys import list_keys, remove_key

    try:
        if key_id[:8] not in {str(k.get("id", ""))[:8] for k in list_keys(restic.access)}:
            return True                                  # removed already (that is why it was refused)
        remove_key(restic.access, key_id)
        return True
    except DrtoolError as exc:
        log.warning("the old machine key %s is still in the repository (%s): remove it with "
                    "`restic key remove %s`", key_id[:8], exc.message.splitlines()[0], key_id[:8])
        return False
