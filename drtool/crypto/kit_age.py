"""age encryption of recovery kits (pyrage), and their printable paper form.

A kit is a standard age file (https://age-encryption.org/v1), so Debian's
`age -d` opens it on any machine without drtool:

* passphrase mode (scrypt, work factor calibrated by rage to about a second,
  2**19 here: within the 2**22 that `age -d` accepts), one passphrase per
  file, as age allows no other recipient beside a passphrase;
* recipient mode: age X25519 public keys (`age1...`) or SSH public keys
  (`ssh-ed25519 ...`, `ssh-rsa ...`), opened with `age -d -i IDENTITY`.

The paper form is age's own ASCII armour with a 4-digit checksum of its line
number and text appended to every body line, between drtool comment lines:

    # drtool recovery kit: age-encrypted. Open by hand: ...
    -----BEGIN AGE ENCRYPTED FILE-----
    YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IHNjcnlwdCBQYmZqM2I0M0dQYlFqZjFT 3f1a
    ...
    -----END AGE ENCRYPTED FILE-----
    # check: 7 lines, crc32 0a1b2c3d

Stripping the checksums (`sed -E 's/ [0-9a-f]{4}$//'`) and the comment lines
gives exactly the armour `age -d` reads; drtool reads it as it is and points
at the line with a typo.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drtool.crypto.kit import KitError, line_check

AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
AGE_END = "-----END AGE ENCRYPTED FILE-----"
ARMOR_LINE_CHARS = 64
HAND_OPEN = "sed -E 's/ [0-9a-f]{4}$//' FILE | sed -n '/^-----BEGIN AGE/,/^-----END AGE/p' | age -d"
_CHECK_LINE = re.compile(r"^# check: (\d+) lines, crc32 ([0-9a-fA-F]{8})$")


def is_age(data: bytes) -> bool:
    return data.startswith(AGE_MAGIC) or AGE_BEGIN.encode() in data


def normalise(passphrase: str) -> str:
    # NFC: the same passphrase typed years later on another keyboard/OS must give the same bytes.
    return unicodedata.normalize("NFC", passphrase)


# ---------------------------------------------------------------- encrypt / decrypt

def encrypt_passphrase(plaintext: bytes, passphrase: str) -> bytes:
    import pyrage

    try:
        return pyrage.passphrase.encrypt(plaintext, normalise(passphrase))
    except pyrage.EncryptError as exc:
        raise KitError(f"age encryption failed: {exc}") from None


def encrypt_recipients(plaintext: bytes, recipients: Sequence[str]) -> bytes:
    import pyrage

    parsed = [parse_recipient(r) for r in recipients]
    try:
        return pyrage.encrypt(plaintext, parsed)
    except pyrage.EncryptError as exc:
        raise KitError(f"age encryption failed: {exc}") from None


def decrypt(data: bytes, *, passphrase: str | None = None, identities: Sequence[Any] = ()) -> bytes:
    """The plaintext of an age file (binary or armoured); one clear message per failure."""
    import pyrage

    binary = to_binary(data)
    stanza = _first_stanza(binary)
    if stanza == "scrypt":
        if passphrase is None:
            raise KitError("this kit is sealed with a passphrase; none was given",
                           hint="give it with --passphrase-fd N, or on the terminal")
        return _decrypt_passphrase(binary, normalise(passphrase))
    if not identities:
        raise KitError("this kit is sealed to a public key (age recipients); no identity was given",
                       hint="give the custodian's age identity or SSH private key with --identity FILE")
    try:
        return pyrage.decrypt(binary, list(identities))
    except pyrage.DecryptError as exc:
        raise KitError(f"cannot open the recovery kit with the identity given: {exc}",
                       hint="use the private key of one of the custodians the kit was made for, "
                            "or another copy of the kit") from None


EXCESSIVE_WORK_TRIES = 3


def _decrypt_passphrase(binary: bytes, passphrase: str) -> bytes:
    import pyrage

    for attempt in range(EXCESSIVE_WORK_TRIES):
        try:
            return pyrage.passphrase.decrypt(binary, passphrase)
        except pyrage.DecryptError as exc:
            # age refuses a work factor over 16x what it measures this machine can do in a second;
            # that short measurement goes wrong on a machine busy for a moment, so measure again.
            if "Excessive work" not in str(exc):
                break
            if attempt == EXCESSIVE_WORK_TRIES - 1:
                raise KitError("age refused to open the kit: its passphrase work factor would take this machine "
                               "too long (age measured it as too slow, " + str(exc).splitlines()[-1].strip() + ")",
                               hint="try again when the machine is less busy, or open the kit on a faster "
                                    "machine") from None
    # age cannot tell a wrong passphrase from changed bytes; say both.
    raise KitError("cannot open the recovery kit: wrong passphrase, or the kit was altered or truncated",
                   hint="check the passphrase (case, keyboard layout); if it is right, "
                        "use another copy of the kit")


def _first_stanza(binary: bytes) -> str:
    lines = binary.split(b"\n", 3)
    if len(lines) < 3 or not lines[1].startswith(b"-> "):
        raise KitError("the age kit's header is damaged (no recipient stanza)", hint="use another copy of the kit")
    return lines[1][3:].split(b" ", 1)[0].decode("ascii", "replace")


# ---------------------------------------------------------------- keys

def parse_recipient(text: str) -> Any:
    """An age X25519 public key (age1...) or an SSH public key line; a file holding one."""
    import pyrage

    value = text.strip()
    path = Path(value)
    if not value.startswith(("age1", "ssh-")) and path.is_file():
        value = path.read_text().strip().splitlines()[0].strip()
    try:
        if value.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(value)
        if value.startswith("ssh-"):
            return pyrage.ssh.Recipient.from_str(value)
    except pyrage.RecipientError as exc:
        raise KitError(f"not a usable public key: {value[:40]}... ({exc})",
                       hint="give an age public key (age1...) or an SSH public key line (ssh-ed25519 ...)") from None
    raise KitError(f"not a public key or a file holding one: {text[:60]!r}",
                   hint="give an age public key (age1...), an SSH public key line, or the path of a .pub file")


def load_identities(path: Path) -> list[Any]:
    """age identities (AGE-SECRET-KEY-... lines) or an unencrypted SSH private key, from a file."""
    import pyrage

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KitError(f"cannot read the identity file {path}: {exc.strerror}") from None
    try:
        if b"PRIVATE KEY-----" in raw:
            return [pyrage.ssh.Identity.from_buffer(raw)]
        keys = [line.strip() for line in raw.decode("ascii").splitlines()
                if line.strip().startswith("AGE-SECRET-KEY-")]
        if keys:
            return [pyrage.x25519.Identity.from_str(k) for k in keys]
    except (pyrage.IdentityError, UnicodeDecodeError, ValueError) as exc:
        raise KitError(f"{path} holds no usable identity: {exc}",
                       hint="SSH keys protected by a passphrase are not supported; use `age -d -i` by hand") from None
    raise KitError(f"{path} holds no age identity (AGE-SECRET-KEY-...) and no SSH private key")


# ---------------------------------------------------------------- armour and paper

def to_binary(data: bytes) -> bytes:
    """The age binary of a kit given as binary, age armour or drtool's paper form."""
    if data.startswith(AGE_MAGIC):
        return data
    return from_paper(data.decode("ascii", "replace"))


def to_paper(binary: bytes) -> str:
    text = base64.b64encode(binary).decode("ascii")
    lines = [text[i:i + ARMOR_LINE_CHARS] for i in range(0, len(text), ARMOR_LINE_CHARS)]
    return "\n".join([
        "# drtool recovery kit (age). Each line below ends with a 4-digit checksum of that line.",
        f"# Open by hand: {HAND_OPEN}",
        AGE_BEGIN,
        *(f"{line} {line_check(n, line)}" for n, line in enumerate(lines, 1)),
        AGE_END,
        f"# check: {len(lines)} lines, crc32 {zlib.crc32(binary):08x}",
        "",
    ])


def from_paper(text: str) -> bytes:
    """Inverse of `to_paper`; also reads plain age armour (no checksums). Tolerant of spacing."""
    lines = [line.strip() for line in text.splitlines()]
    if AGE_BEGIN not in lines:
        raise KitError("not an age recovery kit: the BEGIN AGE ENCRYPTED FILE line is missing")
    start = lines.index(AGE_BEGIN)
    if AGE_END not in lines[start:]:
        raise KitError("the armoured kit is truncated: the END AGE ENCRYPTED FILE line is missing",
                       hint="copy the whole text, from the BEGIN line to the END line")
    end = lines.index(AGE_END, start)
    body = [line for line in lines[start + 1:end] if line]
    checked = any(len(line.split()) > 1 for line in body)
    chunks = [_checked_line(n, line) if checked else line for n, line in enumerate(body, 1)]
    try:
        binary = base64.b64decode("".join(chunks), validate=True)
    except binascii.Error:
        raise KitError("the armoured kit is incomplete: its base64 text does not end where it should",
                       hint="a line is missing at the end; compare the number of lines with the paper copy") from None
    trailer = next((m for m in map(_CHECK_LINE.match, lines[end + 1:]) if m), None)
    if trailer is not None:
        count, crc = int(trailer.group(1)), trailer.group(2).lower()
        if count != len(body):
            raise KitError(f"the armoured kit has {len(body)} lines, its check line says {count}",
                           hint="a line is missing or doubled; compare with the paper copy")
        if f"{zlib.crc32(binary):08x}" != crc:
            raise KitError("the armoured kit's overall checksum does not match",
                           hint="every line checked out, so the '# check:' line may be mistyped")
    if not binary.startswith(AGE_MAGIC):
        raise KitError("the armoured text is not an age file")
    return binary


def _checked_line(number: int, line: str) -> str:
    # People typing from paper add spaces; the last word is the checksum, the rest is data.
    words = line.split()
    data, check = "".join(words[:-1]), (words[-1].lower() if words else "")
    if len(words) < 2 or line_check(number, data) != check:
        raise KitError(f"armoured kit line {number} does not match its checksum: {line[:16]}...",
                       hint="a character on that line is mistyped (watch 0/O, 1/l/I, case), "
                            "or a line before it is missing or out of order")
    return data
