"""Use case: this machine's own restic key for a repository (drtool/engine/machine_key.py).

    machine_key_slot(settings, repo) -> MachineKeySlot | None     what open_repo hands to Restic
    ensure_machine_key(handle, host) -> dict | None               make one once (after a backup)

Made once per repository and machine, after the first successful backup: restic prints the
master key (`restic cat masterkey`, opened with the repository password), drtool seals it with
32 random bytes (drtool/crypto/restic_key.py), writes the key file into the repository, and
keeps it only once restic has opened the repository with it. The random password lives in
state_dir (0600, in the 0700 repos/ folder) beside what already opens the repository on this
machine (the password reference), so it gives nobody a power they did not have; in the
bucket it is a key file that only 256 random bits open. It appears in `restic key list` as
user `drtool`, this machine's host name. `machine_key: false` on a repository turns it off.
"""

from __future__ import annotations

import base64
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


def _state_file(settings: Settings, url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return settings.state_dir / "repos" / f"{digest}.machinekey"


def machine_key_slot(settings: Settings, repo: Any) -> MachineKeySlot | None:
    """The machine key this machine holds for `repo` (a models.Repository), if any."""
    path = _state_file(settings, repo.url)
    if not repo.machine_key or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        key = MachineKey(str(data["key_id"]), Secret(str(data["password"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable machine key file %s (%s); the repository password is used",
                    path, type(exc).__name__)
        return None
    return MachineKeySlot(key, on_rejected=lambda k: _forget(path, k))


def _forget(path: Path, key: MachineKey) -> None:
    """restic no longer accepts the key: drop the file, so the next backup makes a new one."""
    with contextlib.suppress(OSError), _locked(path):
        data = json.loads(path.read_text())
        if data.get("key_id") == key.key_id:          # not one another run made meanwhile
            path.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One maker at a time per repository (two policies of one repository may end together)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_machine_key(handle: Any, host: str) -> dict[str, Any] | None:
    """Make this machine's key for the handle's repository unless it has one restic accepts.
    Returns what was done for the run record (None: nothing to do). Never raises: without a
    machine key every restic process only costs its key derivation again."""
    repo, restic = handle.repository, handle.restic
    slot = restic.machine_key
    if not repo.machine_key or restic.usable_machine_key() is not None:    # waits for the key's check
        return None
    path = _state_file(handle.settings, repo.url)
    try:
        with _locked(path):
            if path.is_file() and slot is None:
                return None                           # another run made it meanwhile
            key = _make(handle, host)
            write_private_json(path, {"key_id": key.key_id, "password": key.password.reveal()})
    except (DrtoolError, OSError, ValueError) as exc:
        message = exc.message if isinstance(exc, DrtoolError) else str(exc)
        log.info("no machine key for %s: %s", repo.url, message.splitlines()[0])
        return {"made": False, "error": message.splitlines()[0][:300]}
    restic.machine_key = MachineKeySlot(key, on_rejected=lambda k: _forget(path, k))
    log.info("made machine key %s for %s", key.key_id[:8], repo.url)
    return {"made": True, "key_id": key.key_id}


def _make(handle: Any, host: str) -> MachineKey:
    from drtool.crypto.restic_key import seal_master_key
    from drtool.storage.repo_files import put_key_file

    restic = handle.restic
    master = restic.run(["--no-lock", "cat", "masterkey"], timeout=120).stdout
    password = Secret(base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    sealed = seal_master_key(master, password.reveal().encode(), username=KEY_USER, hostname=host)
    del master
    put_key_file(handle.repository, restic.access.env, sealed.key_id, sealed.data)
    key = MachineKey(sealed.key_id, password)
    problem = restic.opens_with(key)
    if problem is not None:
        raise problem
    return key
