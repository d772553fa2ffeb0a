"""restic's key file format (drtool/crypto/restic_key.py) and the machine key slot (pure logic).

restic itself opening the key files drtool writes is tested in
tests/integration/test_machine_key.py; here: a key file written by restic 0.14 (for the
throwaway password below, in tests/unit/data) opens to its master key, and what drtool seals
opens again only with its own password.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path

import pytest

from drtool.crypto.restic_key import MACHINE_KDF, KeyFileError, machine_password, open_key_file, seal_master_key
from drtool.engine.machine_key import MachineKey, MachineKeySlot
from drtool.errors import StorageUnreachable, WrongPassword
from drtool.secrets import Secret

DATA = Path(__file__).parent / "data"
RESTIC_KEY = (DATA / "restic-0.14-key.json").read_bytes()
RESTIC_PASSWORD = b"userpassword-weak"
MASTER = json.dumps(json.loads((DATA / "restic-0.14-masterkey.json").read_text()), separators=(",", ":")).encode()


def test_a_key_file_written_by_restic_opens_to_its_master_key() -> None:
    assert open_key_file(RESTIC_KEY, RESTIC_PASSWORD) == MASTER


def test_a_wrong_password_does_not_open_a_restic_key_file() -> None:
    with pytest.raises(KeyFileError, match="does not open"):
        open_key_file(RESTIC_KEY, b"userpassword-weak ")


def test_sealed_key_opens_with_its_password_only_and_is_named_by_its_hash() -> None:
    sealed = seal_master_key(MASTER, b"machine-pw", username="drtool", hostname="siak-db")
    assert sealed.key_id == hashlib.sha256(sealed.data).hexdigest()
    assert open_key_file(sealed.data, b"machine-pw") == MASTER
    with pytest.raises(KeyFileError):
        open_key_file(sealed.data, b"machine-pW")
    doc = json.loads(sealed.data)
    assert (doc["kdf"], doc["N"], doc["r"], doc["p"]) == ("scrypt", MACHINE_KDF.n, MACHINE_KDF.r, MACHINE_KDF.p)
    assert (doc["username"], doc["hostname"]) == ("drtool", "siak-db")
    assert len(base64.b64decode(doc["salt"])) == 64                   # restic refuses any other length
    assert b"machine-pw" not in sealed.data and MASTER not in sealed.data


def test_two_seals_of_one_master_key_share_nothing_but_the_master_key() -> None:
    a = seal_master_key(MASTER, b"pw", username="u", hostname="h")
    b = seal_master_key(MASTER, b"pw", username="u", hostname="h")
    assert a.key_id != b.key_id                                       # fresh salt and nonce
    assert json.loads(a.data)["salt"] != json.loads(b.data)["salt"]


def test_a_flipped_byte_in_the_sealed_data_is_refused() -> None:
    sealed = seal_master_key(MASTER, b"pw", username="u", hostname="h")
    doc = json.loads(sealed.data)
    raw = bytearray(base64.b64decode(doc["data"]))
    raw[20] ^= 1
    doc["data"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(KeyFileError, match="does not open"):
        open_key_file(json.dumps(doc).encode(), b"pw")


@pytest.mark.parametrize("bad", [b"", b"{}", b'{"kdf": "argon2"}', b'{"mac": {"k": "AA=="}, "encrypt": "AA=="}'])
def test_what_is_not_a_restic_master_key_or_key_file_is_refused(bad: bytes) -> None:
    with pytest.raises(KeyFileError):
        seal_master_key(bad, b"pw", username="u", hostname="h")
    with pytest.raises(KeyFileError):
        open_key_file(bad, b"pw")


KEY = MachineKey("ab" * 32, Secret("machine-key-password-for-tests"))


def test_the_slot_checks_once_even_when_many_commands_start_at_once() -> None:
    calls = []
    slot = MachineKeySlot(KEY)
    gate = threading.Event()

    def probe(key: MachineKey):  # noqa: ANN202
        calls.append(key)
        gate.wait(2)
        return None

    threads = [threading.Thread(target=lambda: slot.usable(probe)) for _ in range(5)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == [KEY] and slot.usable(probe) == KEY and not slot.rejected


def test_a_key_restic_refuses_is_not_used_and_checked_once() -> None:
    slot = MachineKeySlot(KEY)
    refusal = WrongPassword("restic could not open repository X: wrong password or no key found")
    assert slot.usable(lambda key: refusal) is None
    assert slot.rejected and slot.key == KEY                 # kept: a password fixed tomorrow opens it again
    assert slot.usable(lambda key: pytest.fail("checked twice")) is None


def test_a_storage_that_is_down_keeps_the_key() -> None:
    # The command that follows fails with that cause, exactly as it would with the password.
    slot = MachineKeySlot(KEY)
    assert slot.usable(lambda key: StorageUnreachable("cannot reach the storage")) == KEY
    assert not slot.rejected


def test_a_key_just_made_and_proven_is_not_checked_again() -> None:
    assert MachineKeySlot(KEY, checked=True).usable(lambda key: pytest.fail("checked")) == KEY


def test_the_machine_password_follows_the_repository_password_and_the_salt() -> None:
    salt, other = b"\x01" * 32, b"\x02" * 32
    pw = machine_password(b"repo-password", salt)
    assert pw == machine_password(b"repo-password", salt) and len(pw) == 43          # 256 bits, base64
    assert pw != machine_password(b"repo-passworD", salt)    # a rotated (or wrong) password: another key
    assert pw != machine_password(b"repo-password", other)
    assert "repo-password" not in pw
    with pytest.raises(KeyFileError, match="32 bytes"):
        machine_password(b"repo-password", b"short")


def test_the_key_password_is_never_in_its_repr() -> None:
    assert "machine-key-password" not in repr(KEY) and "machine-key-password" not in str(KEY)
