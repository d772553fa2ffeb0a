"""restic's key file format, written and read with the `cryptography` package (pure, no I/O).

A restic repository's data is encrypted with one master key. Each file under `keys/` holds that
master key encrypted with a key derived from one password by scrypt(N, r, p, 64-byte salt):
the first 32 derived bytes are the AES-256-CTR key, the next 32 the Poly1305-AES MAC key (k, r).
The sealed data is nonce (16) || AES-256-CTR(JSON of the master key) || MAC (16), where the MAC
is Poly1305 over the ciphertext with the one-time key r || AES_k(nonce). A key file is named
by the SHA-256 of its bytes. (restic: internal/repository/key.go, internal/crypto/crypto.go.)

drtool writes such a file for a *machine key* (drtool/engine/machine_key.py), whose password
is derived from the repository password and 32 random bytes that this machine keeps
(`machine_password`). scrypt's work factor slows the guessing of a password; this one is
only as guessable as the repository password is *and* the 256-bit salt is known, so the
machine key uses a small factor and restic opens the repository in milliseconds instead of the
~0.5 s of CPU its own calibrated parameters cost each process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone

SALT_BYTES = 64           # restic refuses any other salt length
NONCE_BYTES = 16
MAC_BYTES = 16


@dataclass(frozen=True)
class KdfParams:
    n: int
    r: int
    p: int


# 4 MiB of memory and ~10 ms: someone who has the bucket and this machine's salt, but not the
# repository password, still pays a scrypt per guess of it (restic's own key: ~0.5 s).
MACHINE_KDF = KdfParams(n=4096, r=8, p=1)
MACHINE_SALT_BYTES = 32
_MACHINE_CONTEXT = b"drtool machine key v1\0"


def machine_password(repository_password: bytes, salt: bytes) -> str:
    """The machine key's password: HMAC-SHA256 of the salt under the repository password. It
    changes when the repository password does, so a wrong or rotated password never opens the
    repository through an old machine key, and the salt alone (not secret) opens nothing."""
    import hmac

    if len(salt) != MACHINE_SALT_BYTES:
        raise KeyFileError(f"a machine key salt has {MACHINE_SALT_BYTES} bytes, not {len(salt)}")
    digest = hmac.new(repository_password, _MACHINE_CONTEXT + salt, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class KeyFileError(ValueError):
    """A key file that is not restic's format, or a password that does not open it."""


@dataclass(frozen=True)
class SealedKey:
    key_id: str          # the file's name under keys/: SHA-256 of its bytes
    data: bytes          # the key file


def seal_master_key(master_json: bytes, password: bytes, *, username: str, hostname: str,
                    params: KdfParams = MACHINE_KDF, created: datetime | None = None,
                    salt: bytes | None = None) -> SealedKey:
    """A restic key file that opens the repository whose master key is `master_json`
    (what `restic cat masterkey` prints) with `password`."""
    master = _compact_master(master_json)
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    enc, mac_k, mac_r = _derive(password, salt, params)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = _ctr(enc, nonce, master)
    sealed = nonce + ciphertext + _mac(mac_k, mac_r, nonce, ciphertext)
    doc = {
        "created": (created or datetime.now(timezone.utc)).isoformat(),
        "username": username,
        "hostname": hostname,
        "kdf": "scrypt",
        "N": params.n,
        "r": params.r,
        "p": params.p,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(sealed).decode(),
    }
    data = json.dumps(doc).encode()
    return SealedKey(hashlib.sha256(data).hexdigest(), data)


def open_key_file(data: bytes, password: bytes) -> bytes:
    """The master key (compact JSON) inside a restic key file; KeyFileError if the password
    does not open it or the file is not restic's format."""
    try:
        doc = json.loads(data)
        if doc.get("kdf") != "scrypt":
            raise KeyFileError(f"unsupported KDF {doc.get('kdf')!r}")
        params = KdfParams(int(doc["N"]), int(doc["r"]), int(doc["p"]))
        salt, sealed = base64.b64decode(doc["salt"]), base64.b64decode(doc["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"not a restic key file: {exc}") from None
    if len(salt) != SALT_BYTES or len(sealed) < NONCE_BYTES + MAC_BYTES:
        raise KeyFileError("not a restic key file: wrong salt or data length")
    enc, mac_k, mac_r = _derive(password, salt, params)
    nonce, ciphertext, tag = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:-MAC_BYTES], sealed[-MAC_BYTES:]
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    try:
        Poly1305.verify_tag(_poly_key(mac_k, mac_r, nonce), ciphertext, tag)
    except InvalidSignature:
        raise KeyFileError("the password does not open this key") from None
    return _compact_master(_ctr(enc, nonce, ciphertext))


def _compact_master(master_json: bytes) -> bytes:
    """The master key as compact JSON, after checking it has restic's three parts."""
    try:
        master = json.loads(master_json)
        parts = (master["mac"]["k"], master["mac"]["r"], master["encrypt"])
        lengths = tuple(len(base64.b64decode(p)) for p in parts)
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"not a restic master key: {exc}") from None
    if lengths != (16, 16, 32):
        raise KeyFileError(f"not a restic master key: part lengths {lengths}")
    return json.dumps({"mac": {"k": parts[0], "r": parts[1]}, "encrypt": parts[2]},
                      separators=(",", ":")).encode()


def _derive(password: bytes, salt: bytes, params: KdfParams) -> tuple[bytes, bytes, bytes]:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    derived = Scrypt(salt=salt, length=64, n=params.n, r=params.r, p=params.p).derive(password)
    return derived[:32], derived[32:48], derived[48:64]


def _ctr(key: bytes, nonce: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(data)


def _poly_key(mac_k: bytes, mac_r: bytes, nonce: bytes) -> bytes:
    """Poly1305-AES: the one-time key is r || AES_k(nonce) (Poly1305 clamps r itself)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    s = Cipher(algorithms.AES(mac_k), modes.ECB()).encryptor().update(nonce)   # one block: ECB is AES_k
    return mac_r + s


def _mac(mac_k: bytes, mac_r: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    return Poly1305.generate_tag(_poly_key(mac_k, mac_r, nonce), ciphertext)
