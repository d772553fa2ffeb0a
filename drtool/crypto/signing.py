"""Ed25519 signatures on run records and drill reports.

The private key lives in the state dir (0600); its public key goes into the
recovery kit and the offsite config bundle, so an auditor who has either can
check that a drill result was produced by this installation and not edited.

A signed record is the record plus a `signature` block:

    {"alg": "ed25519", "public_key": "<b64 raw 32 bytes>", "value": "<b64 64 bytes>"}

computed over the canonical JSON of the record without that block: sorted
keys, no whitespace, ASCII only, NaN refused. A record read back from a JSON
file gives the same bytes, so the check works on the file an auditor holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drtool.errors import DrtoolError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

ALG = "ed25519"
SIGNATURE_FIELD = "signature"
KEY_FILE = "signing-key.pem"


class SignatureInvalid(DrtoolError):
    """A record is unsigned, altered after signing, or signed by an unexpected key."""


class SigningKeyError(DrtoolError):
    """The signing key in the state dir cannot be read, created or trusted."""


# ---------------------------------------------------------------- keys


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The installation's signing key: read it, or create it once (0600, in a 0700 state dir)."""
    path = Path(state_dir) / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    return _load_key_file(path)


def _create_key_file(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SigningKeyError(f"cannot create the state dir {path.parent}: {exc.strerror}",
                              hint="set state_dir in drtool.yaml to a directory drtool may write") from None
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if another process created the key meanwhile: then theirs wins,
        # and both processes sign with the same key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SigningKeyError(f"cannot write the signing key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _load_key_file(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
    if mode & 0o077:
        # Anyone who can read it can forge drill results; do not use a key that may have leaked.
        raise SigningKeyError(f"the signing key {path} is readable by others (mode {mode:04o})",
                              hint=f"chmod 600 {path}; if others may have copied it, delete it so a new one is made")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"the signing key {path} is not a valid PEM private key",
                              hint="restore it from backup, or delete it so a new one is made "
                                   "(old records then verify only against the old public key)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key {path} is not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte public key: short enough for a kit, a report or paper."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "private_bytes") else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_fingerprint(public_key: str) -> str:
    """A short, comparable name for a public key (SHA-256, first 16 hex digits)."""
    return hashlib.sha256(public_key.encode("ascii")).hexdigest()[:16]


# ---------------------------------------------------------------- records


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: the record without its signature block."""
    body = {k: v for k, v in record.items() if k != SIGNATURE_FIELD}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        # Anything that would not survive a JSON round trip could not be verified later.
        raise SignatureInvalid(f"the record cannot be signed: it is not plain JSON ({exc})",
                               hint="convert datetimes, paths and NaN to strings before signing") from None


def sign_record(record: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `record` carrying a signature block; any earlier signature is replaced."""
    signature = key.sign(canonical_bytes(record))
    signed = {k: v for k, v in record.items() if k != SIGNATURE_FIELD}
    signed[SIGNATURE_FIELD] = {
        "alg": ALG,
        "public_key": public_key_b64(key),
        "value": base64.b64encode(signature).decode("ascii"),
    }
    return signed


def verify_record(record: dict[str, Any], public_key_b64: str | None = None) -> None:
    """Raise SignatureInvalid unless `record` is intact and signed (by `public_key_b64`, if given).

    Without an expected key this only proves the record is unchanged since
    *someone* signed it; pass the key from the kit or config bundle to prove who.
    """
    block = _signature_block(record)
    signer = block["public_key"]
    if public_key_b64 is not None and signer != public_key_b64:
        raise SignatureInvalid(
            f"the record is signed by key {key_fingerprint(signer)}, not the expected key {key_fingerprint(public_key_b64)}",
            hint="it was signed by another installation or re-signed after editing; "
                 "compare with the public key in the recovery kit or config bundle")
    public, signature = _decode_block(block)
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(signature, canonical_bytes(record))
    except InvalidSignature:
        raise SignatureInvalid(
            f"the record was altered after it was signed (signature by key {key_fingerprint(signer)} does not match)",
            hint="do not trust this record; fetch the original from the offsite catalog") from None


def _signature_block(record: Any) -> dict[str, str]:
    if not isinstance(record, dict):
        raise SignatureInvalid("not a signed record: expected a JSON object")
    block = record.get(SIGNATURE_FIELD)
    if block is None:
        raise SignatureInvalid("the record is not signed: it has no 'signature' block",
                               hint="records written by drtool carry one; this one was made or edited elsewhere")
    if not isinstance(block, dict) or not all(isinstance(block.get(k), str) for k in ("alg", "public_key", "value")):
        raise SignatureInvalid("the record's signature block is malformed (needs alg, public_key, value)")
    if block["alg"] != ALG:
        raise SignatureInvalid(f"the record is signed with {block['alg']!r}; drtool only accepts {ALG}")
    return block


def _decode_block(block: dict[str, str]) -> tuple[Ed25519PublicKey, bytes]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw_key = base64.b64decode(block["public_key"], validate=True)
        signature = base64.b64decode(block["value"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw_key)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("the record's signature block is malformed (bad base64 or key length)") from None
    return public, signature
