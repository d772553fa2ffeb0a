"""A machine key: the restic key this machine opens its repositories with.

Every restic process derives its key from the password before it does anything: with the
scrypt parameters restic calibrates at `init` that is ~0.5 s of CPU per process, and a
PostgreSQL backup runs three of them. A machine key (drtool/crypto/restic_key.py) opens the
same repository with a password derived from the repository password and 32 random bytes
this machine keeps, under a small work factor: ~10 ms.

`MachineKeySlot` is how a `Restic` uses one. The key is checked once, by the first restic
process that needs it (`restic --no-lock cat config`, ~20 ms of CPU): if restic no longer
accepts it (someone ran `restic key remove`, the repository was rolled back or made anew),
the slot says so and every command of this run uses the repository password, as before
machine keys existed (a wrong password then fails them as it always did). Any other failure
of the check (storage down...) keeps the key: the command itself then fails with that cause,
exactly as it would have.
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
    def __init__(self, key: MachineKey, *, checked: bool = False) -> None:
        self.key = key                          # the key this machine has for the repository
        self._accepted: bool | None = True if checked else None
        self._lock = threading.Lock()

    def usable(self, probe: Probe) -> MachineKey | None:
        """The key if restic accepts it (checked on the first call; concurrent callers wait
        for that one check), else None: use the repository password."""
        with self._lock:
            if self._accepted is None:
                self._accepted = self._judge(probe(self.key))
            return self.key if self._accepted else None

    @property
    def rejected(self) -> bool:
        return self._accepted is False

    def _judge(self, error: DrtoolError | None) -> bool:
        if not isinstance(error, WrongPassword):
            return True
        log.warning("restic does not accept this machine's key %s for the repository: the repository password "
                    "changed or is wrong, or the key was removed (`restic key remove`, a rolled-back or new "
                    "repository); this run uses the repository password", self.key.key_id[:8])
        return False
