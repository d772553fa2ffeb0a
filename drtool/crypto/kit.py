"""The recovery kit: everything needed to reach the backups after the server is gone.

A kit names the restic repositories, holds a dedicated escrow password for
each (a separate restic key, so it can be revoked alone), the S3 location
and, only when the admin asks, S3 credentials; plus where the offsite
configuration bundle lives and the public key that signs run records.

Binary format (all integers big-endian; every header byte is authenticated
as AES-GCM associated data, so changing the KDF parameters or the version
makes opening fail instead of silently weakening anything):

    magic        8  b"DRTOOLKT"
    version      1  FORMAT_VERSION
    kdf          1  1 = scrypt
    log2_n       1  scrypt cost, n = 2**log2_n
    r, p         1+1
    ct_len       4  length of ciphertext+tag, to tell truncation from tampering
    salt        16
    nonce       12
    ciphertext  ct_len (JSON of the kit, then the 16-byte GCM tag)

`armor()` turns those bytes into printable text with a checksum on every
line, so a kit typed back from paper points at the line with the typo.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import unicodedata
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drtool.errors import DrtoolError
from drtool.secrets import Secret

MAGIC = b"DRTOOLKT"
FORMAT_VERSION = 1
KIT_VERSION = 1                 # version of the JSON content inside
KDF_SCRYPT = 1
# n = 2**17, r = 8 is 128 MiB of memory and about half a second here: slow
# enough to make offline guessing expensive, fast enough for a person waiting.
DEFAULT_LOG2_N = 17
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSPHRASE_CHARS = 8
_LOG2_N_RANGE = range(14, 21)   # refuse absurd costs read from a damaged header
_PREFIX = struct.Struct(">8sB")
_HEADER = struct.Struct(">8sBBBBBI16s12s")
_TAG_LEN = 16

ARMOR_BEGIN = "-----BEGIN DRTOOL RECOVERY KIT-----"
ARMOR_END = "-----END DRTOOL RECOVERY KIT-----"
ARMOR_LINE_CHARS = 64


class KitError(DrtoolError):
    """The kit cannot be sealed, read or opened; nothing was changed."""


# ---------------------------------------------------------------- content


@dataclass(frozen=True)
class KitS3:
    endpoint: str | None
    bucket: str | None
    region: str = "us-east-1"
    access_key_id: str | None = None          # only when the admin asked for credentials
    secret_access_key: Secret | None = None


@dataclass(frozen=True)
class KitRepository:
    name: str
    url: str
    escrow_password: Secret
    escrow_key_id: str
    s3: KitS3 | None = None


@dataclass(frozen=True)
class BundleLocation:
    """Where the configuration bundle is: a restic snapshot in `repository` with all `tags`."""

    repository: str
    tags: tuple[str, ...] = ("drtool", "kind=config")


@dataclass(frozen=True)
class Kit:
    repositories: list[KitRepository]
    policies: list[str] = field(default_factory=list)
    config_bundle: BundleLocation | None = None
    signing_public_key: str | None = None      # Ed25519, base64 of the raw 32 bytes
    # The restic --host of the backups this kit recovers: a repository may hold several
    # hosts' snapshots of the same policy. None in kits made before drtool recorded it.
    hostname: str | None = None
    notes: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = KIT_VERSION

    def repository(self, name: str) -> KitRepository:
        for repo in self.repositories:
            if repo.name == name:
                return repo
        raise KitError(f"the kit has no repository named {name!r}; it has: "
                       + ", ".join(r.name for r in self.repositories))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, secrets included: only ever encrypted by `seal`."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "policies": list(self.policies),
            "repositories": [_repo_to_dict(r) for r in self.repositories],
            "config_bundle": None if self.config_bundle is None else {
                "repository": self.config_bundle.repository, "tags": list(self.config_bundle.tags)},
            "signing_public_key": self.signing_public_key,
            "hostname": self.hostname,
            "notes": self.notes,
        }

    def summary(self) -> dict[str, Any]:
        """What the kit can recover, without any secret: for `kit verify` output and reports."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "policies": list(self.policies),
            "repositories": [{"name": r.name, "url": r.url, "escrow_key_id": r.escrow_key_id,
                              "s3_credentials": bool(r.s3 and r.s3.secret_access_key)}
                             for r in self.repositories],
            "config_bundle": None if self.config_bundle is None else {
                "repository": self.config_bundle.repository, "tags": list(self.config_bundle.tags)},
            "signing_public_key": self.signing_public_key,
            "hostname": self.hostname,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Kit:
        if not isinstance(data, dict):
            raise KitError("kit content is not a JSON object")
        version = _get(data, "version", int, "kit")
        if version != KIT_VERSION:
            raise KitError(f"kit content version {version} is not supported (this drtool reads {KIT_VERSION})",
                           hint="open it with the drtool version that created it, or a newer one")
        repos = _get(data, "repositories", list, "kit")
        bundle = data.get("config_bundle")
        return cls(
            version=version,
            created_at=_get(data, "created_at", str, "kit"),
            policies=[str(p) for p in _get(data, "policies", list, "kit")],
            repositories=[_repo_from_dict(r, f"repositories[{i}]") for i, r in enumerate(repos)],
            config_bundle=None if bundle is None else BundleLocation(
                repository=_get(bundle, "repository", str, "config_bundle"),
                tags=tuple(_get(bundle, "tags", list, "config_bundle"))),
            signing_public_key=data.get("signing_public_key"),
            hostname=data.get("hostname") if isinstance(data.get("hostname"), str) else None,
            notes=str(data.get("notes") or ""),
        )


def _repo_to_dict(repo: KitRepository) -> dict[str, Any]:
    s3 = None
    if repo.s3 is not None:
        s3 = {"endpoint": repo.s3.endpoint, "bucket": repo.s3.bucket, "region": repo.s3.region,
              "access_key_id": repo.s3.access_key_id,
              "secret_access_key": repo.s3.secret_access_key.reveal() if repo.s3.secret_access_key else None}
    return {"name": repo.name, "url": repo.url, "escrow_password": repo.escrow_password.reveal(),
            "escrow_key_id": repo.escrow_key_id, "s3": s3}


def _repo_from_dict(data: Any, where: str) -> KitRepository:
    if not isinstance(data, dict):
        raise KitError(f"kit content: {where} is not an object")
    s3 = data.get("s3")
    kit_s3 = None
    if s3 is not None:
        secret = s3.get("secret_access_key")
        kit_s3 = KitS3(endpoint=s3.get("endpoint"), bucket=s3.get("bucket"),
                       region=s3.get("region") or "us-east-1", access_key_id=s3.get("access_key_id"),
                       secret_access_key=Secret(secret) if secret else None)
    return KitRepository(
        name=_get(data, "name", str, where),
        url=_get(data, "url", str, where),
        # Wrapping in Secret registers the value, so it is masked in any later error text.
        escrow_password=Secret(_get(data, "escrow_password", str, where)),
        escrow_key_id=_get(data, "escrow_key_id", str, where),
        s3=kit_s3,
    )


def _get(data: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise KitError(f"kit content: {where}.{key} is missing", hint="the kit was written by an incompatible tool")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KitError(f"kit content: {where}.{key} should be {kind.__name__}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- sealing


def seal(kit: Kit, passphrase: str, *, log2_n: int = DEFAULT_LOG2_N) -> bytes:
    """Encrypt the kit with a passphrase. `log2_n` below the default is for tests only."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KitError(f"the kit passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters",
                       hint="use a long passphrase (several words); it is all that protects the escrow key")
    if log2_n not in _LOG2_N_RANGE:
        raise KitError(f"scrypt cost 2**{log2_n} is outside 2**{_LOG2_N_RANGE.start}..2**{_LOG2_N_RANGE.stop - 1}")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    plaintext = json.dumps(kit.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8")
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, KDF_SCRYPT, log2_n, SCRYPT_R, SCRYPT_P,
                          len(plaintext) + _TAG_LEN, salt, nonce)
    key = _derive(passphrase, salt, log2_n, SCRYPT_R, SCRYPT_P)
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def open_kit(data: bytes, passphrase: str) -> Kit:
    """Decrypt and parse a kit, binary or armoured. Each way it can fail has its own message."""
    if not data.startswith(MAGIC) and ARMOR_BEGIN.encode() in data:
        data = dearmor(data.decode("ascii", "replace"))
    header, ciphertext = _split(data)
    _magic, _version, _kdf, log2_n, r, p, _ct_len, salt, nonce = _HEADER.unpack(header)
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = _derive(passphrase, salt, log2_n, r, p)
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        # GCM cannot tell a wrong key from changed bytes; say both.
        raise KitError("cannot open the recovery kit: wrong passphrase, or the kit was altered",
                       hint="check the passphrase (case, keyboard layout); if it is right, use another copy of the kit") from None
    try:
        content = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KitError("the kit decrypted but its content is not valid JSON",
                       hint="the kit was written by an incompatible tool") from None
    return Kit.from_dict(content)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Check the header and the length; return (header, ciphertext+tag)."""
    if not data:
        raise KitError("not a recovery kit: the file is empty")
    if len(data) < _PREFIX.size:
        if MAGIC.startswith(data):
            raise KitError(f"the recovery kit is truncated: only {len(data)} bytes",
                           hint="use another copy of the kit")
        raise KitError("not a recovery kit: the file does not start with the drtool kit marker")
    magic, version = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise KitError("not a recovery kit: the file does not start with the drtool kit marker",
                       hint="give the file written by `drtool kit create` (binary or armoured text)")
    if version != FORMAT_VERSION:
        raise KitError(f"unknown recovery kit format version {version} (this drtool reads version {FORMAT_VERSION})",
                       hint="open it with the drtool version that created it, or a newer one")
    if len(data) < _HEADER.size:
        raise KitError(f"the recovery kit is truncated: {len(data)} bytes, the header alone is {_HEADER.size}",
                       hint="use another copy of the kit")
    header, ciphertext = data[:_HEADER.size], data[_HEADER.size:]
    fields = _HEADER.unpack(header)
    kdf, log2_n, r, p, ct_len = fields[2:7]
    if len(ciphertext) < ct_len:
        raise KitError(f"the recovery kit is truncated: {len(data)} bytes, expected {_HEADER.size + ct_len}",
                       hint="use another copy of the kit")
    if len(ciphertext) > ct_len:
        raise KitError(f"the recovery kit has {len(ciphertext) - ct_len} unexpected bytes after its end",
                       hint="the file was altered or joined with something else; use another copy")
    if kdf != KDF_SCRYPT or log2_n not in _LOG2_N_RANGE or not 1 <= r <= 32 or not 1 <= p <= 16 or ct_len < _TAG_LEN:
        raise KitError("the recovery kit header is damaged (impossible key-derivation parameters)",
                       hint="use another copy of the kit")
    return header, ciphertext


def _derive(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    # NFC: the same passphrase typed years later on another keyboard/OS must give the same bytes.
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    try:
        return Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(secret)
    except (MemoryError, ValueError) as exc:
        raise KitError(f"key derivation (scrypt n=2**{log2_n}, r={r}) failed: {type(exc).__name__}",
                       hint="it needs about 128 MiB of free memory") from None


# ---------------------------------------------------------------- armour


def armor(data: bytes) -> str:
    """Printable form: 64 base64 chars a line, each followed by a checksum of its number and text."""
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i:i + ARMOR_LINE_CHARS] for i in range(0, len(text), ARMOR_LINE_CHARS)]
    body = [f"{line} {_line_check(n, line)}" for n, line in enumerate(lines, 1)]
    return "\n".join([
        ARMOR_BEGIN,
        f"Version: {FORMAT_VERSION}",
        "Comment: drtool recovery kit; each line ends with a 4-digit checksum of that line",
        "",
        *body,
        f"={zlib.crc32(data):08x}",
        ARMOR_END,
        "",
    ])


def dearmor(text: str) -> bytes:
    """Inverse of `armor`, tolerant of case in checksums, extra spaces and surrounding text."""
    lines = [line.strip() for line in text.splitlines()]
    if ARMOR_BEGIN not in lines:
        raise KitError("not an armoured recovery kit: the BEGIN line is missing",
                       hint=f"the text must contain a line {ARMOR_BEGIN!r}")
    start = lines.index(ARMOR_BEGIN)
    if ARMOR_END not in lines[start:]:
        raise KitError("the armoured kit is truncated: the END line is missing",
                       hint="copy the whole text, from the BEGIN line to the END line")
    end = lines.index(ARMOR_END, start)
    headers, body = _armor_sections(lines[start + 1:end])
    if headers.get("version", str(FORMAT_VERSION)) != str(FORMAT_VERSION):
        raise KitError(f"unknown armoured kit version {headers['version']} (this drtool reads {FORMAT_VERSION})",
                       hint="open it with the drtool version that created it, or a newer one")
    if not body or not body[-1].startswith("="):
        raise KitError("the armoured kit is truncated: the final '=' checksum line is missing")
    chunks = [_checked_line(n, line) for n, line in enumerate(body[:-1], 1)]
    try:
        data = base64.b64decode("".join(chunks), validate=True)
    except binascii.Error:
        raise KitError("the armoured kit is incomplete: its base64 text does not end where it should",
                       hint="a line is missing at the end; compare the number of lines with the paper copy") from None
    if f"{zlib.crc32(data):08x}" != body[-1][1:].strip().lower():
        raise KitError("the armoured kit's overall checksum does not match",
                       hint="every line checked out, so the last '=' line may be mistyped or lines are missing")
    return data


def _armor_sections(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split into 'Key: value' headers (up to the first blank line) and non-empty body lines."""
    headers: dict[str, str] = {}
    rest = lines
    if ": " in (lines[0] if lines else ""):
        blank = lines.index("") if "" in lines else len(lines)
        for line in lines[:blank]:
            key, _, value = line.partition(": ")
            headers[key.strip().lower()] = value.strip()
        rest = lines[blank:]
    return headers, [line for line in rest if line]


def _checked_line(number: int, line: str) -> str:
    # People typing from paper add spaces; the last word is the checksum, the rest is data.
    words = line.split()
    data, check = "".join(words[:-1]), (words[-1].lower() if words else "")
    if len(words) < 2 or _line_check(number, data) != check:
        raise KitError(f"armoured kit line {number} does not match its checksum: {line[:16]}...",
                       hint="a character on that line is mistyped (watch 0/O, 1/l/I, case), "
                            "or a line before it is missing or out of order")
    return data


def _line_check(number: int, line: str) -> str:
    # The line number is part of the checksum, so a skipped or swapped line is caught too.
    return f"{binascii.crc_hqx(f'{number}:{line}'.encode('ascii'), 0):04x}"


# ---------------------------------------------------------------- files


def write_kit(path: Path, data: bytes | str) -> None:
    """Write the kit atomically, readable by its owner only (0600)."""
    payload = data.encode("ascii") if isinstance(data, str) else data
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KitError(f"cannot write the recovery kit to {path}: {exc.strerror}",
                       hint="choose a writable path, e.g. --out ./kit.drkit") from None


def read_kit(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KitError(f"cannot read the recovery kit {path}: {exc.strerror}") from None
