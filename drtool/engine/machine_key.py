"""A machine key: the restic key this machine opens its repositories with.

Every restic process derives its key from the password before it does anything: with the
scrypt parameters restic calibrates at `init` that is ~0.5 s of CPU per process, and a
PostgreSQL backup runs three of them. A machine key (drtool/crypto/restic_key.py) opens the
same repository with a 256-bit random password and a small work factor: ~3 ms.

`MachineKeySlot` is how a `Restic` uses one. The key is checked once, by the first restic
process that needs it (`restic --no-lock cat config`, ~20 ms of CPU): if restic no longer
accepts it (someone ran `restic key remove`, the repository was rolled back or made anew),
the slot drops it, says so, and every command of this run uses the repository password,
as before machine keys existed. Any other failure of the check (storage down...) keeps the
key: the command itself then fails with that cause, exactly as it would have.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from drtool.errors import DrtoolError, WrongPassword
from drtool.secrets import Secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MachineKey:
    key_id: str
    password: Secret

    def __repr__(self) -> str:
        return f"MachineKey({self.key_id[:8]})"


Probe = Callable[[MachineKey], "DrtoolError | None"]


class MachineKeySlot:
    def __init__(self, key: MachineKey, on_rejected: Callable[[MachineKey], None] | None = None) -> None:
        self._key: MachineKey | None = key
        self._on_rejected = on_rejected
        self._checked = False
        self._lock = threading.Lock()

    def usable(self, probe: Probe) -> MachineKey | None:
        """The key if restic accepts it (checked on the first call; concurrent callers wait
        for that one check), else None: use the repository password."""
        with self._lock:
            if not self._checked:
                self._checked = True
                assert self._key is not None
                self._judge(self._key, probe(self._key))
            return self._key

    @property
    def rejected(self) -> bool:
        return self._checked and self._key is None

    def _judge(self, key: MachineKey, error: DrtoolError | None) -> None:
        if not isinstance(error, WrongPassword):
            return
        log.warning("restic no longer accepts this machine's key %s for the repository (removed with "
                    "`restic key remove`, or the repository was rolled back or made anew); this run uses "
                    "the repository password, and the next successful backup makes a new machine key",
                    key.key_id[:8])
        self._key = None
        if self._on_rejected is not None:
            self._on_rejected(key)
