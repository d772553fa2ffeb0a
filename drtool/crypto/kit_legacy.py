"""The first recovery kit format (drtool 0.1): scrypt + AES-256-GCM in a drtool-only container.

Kits are now age files (drtool.crypto.kit); this module only keeps old kits
opening (`open_content`) and lets `drtool kit upgrade` rewrite them. `seal`
stays for tests that build an old kit to upgrade.

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
from typing import TYPE_CHECKING, Any

from drtool.crypto.kit import MIN_PASSPHRASE_CHARS, KitError, line_check

if TYPE_CHECKING:
    from drtool.crypto.kit import Kit

MAGIC = b"DRTOOLKT"
FORMAT_VERSION = 1
KDF_SCRYPT = 1
# n = 2**17, r = 8 is 128 MiB of memory and about half a second here.
DEFAULT_LOG2_N = 17
SCRYPT_R = 8
SCRYPT_P = 1
_LOG2_N_RANGE = range(14, 21)   # refuse absurd costs read from a damaged header
_PREFIX = struct.Struct(">8sB")
_HEADER = struct.Struct(">8sBBBBBI16s12s")
_TAG_LEN = 16

ARMOR_BEGIN = "-----BEGIN DRTOOL RECOVERY KIT-----"
ARMOR_END = "-----END DRTOOL RECOVERY KIT-----"
ARMOR_LINE_CHARS = 64


def is_legacy(data: bytes) -> bool:
    return data.startswith(MAGIC) or ARMOR_BEGIN.encode() in data


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


def open_content(data: bytes, passphrase: str) -> dict[str, Any]:
    """Decrypt an old kit, binary or armoured, to its JSON content. Each failure has its own message."""
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
    return content


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
    body = [f"{line} {line_check(n, line)}" for n, line in enumerate(lines, 1)]
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
    if len(words) < 2 or line_check(number, data) != check:
        raise KitError(f"armoured kit line {number} does not match its checksum: {line[:16]}...",
                       hint="a character on that line is mistyped (watch 0/O, 1/l/I, case), "
                            "or a line before it is missing or out of order")
    return data
