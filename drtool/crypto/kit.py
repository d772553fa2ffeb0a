"""The recovery kit: everything needed to reach the backups after the server is gone.

A kit names the restic repositories, holds a dedicated escrow password for
each (a separate restic key per custodian, so one can be revoked alone), the
S3 location and, only when the admin asks, S3 credentials; plus where the
offsite configuration bundle lives, the public key that signs run records
and the restic --host of the backups it recovers.

The file is a standard age file (drtool.crypto.kit_age): `age -d` opens it
without drtool. Its plaintext is the JSON of `Kit.to_dict()`, documented in
the README ("What a kit holds"). Kits of the first format (scrypt +
AES-GCM, drtool.crypto.kit_legacy) still open; `drtool kit upgrade` rewrites
one as age.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drtool.errors import DrtoolError
from drtool.secrets import Secret

KIT_VERSION = 1                 # version of the JSON content inside
MIN_PASSPHRASE_CHARS = 8


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
    # The configuration's own references ({"env": NAME} or {"file": PATH}, never values):
    # tried on the new machine when the kit holds no credentials.
    access_key_ref: dict[str, str] | None = None
    secret_key_ref: dict[str, str] | None = None


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
    custodian: str | None = None               # who holds this copy (its own escrow keys)
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
            "custodian": self.custodian,
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
            "custodian": self.custodian,
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
            custodian=data.get("custodian") if isinstance(data.get("custodian"), str) else None,
            notes=str(data.get("notes") or ""),
        )


def _repo_to_dict(repo: KitRepository) -> dict[str, Any]:
    s3 = None
    if repo.s3 is not None:
        s3 = {"endpoint": repo.s3.endpoint, "bucket": repo.s3.bucket, "region": repo.s3.region,
              "access_key_id": repo.s3.access_key_id,
              "secret_access_key": repo.s3.secret_access_key.reveal() if repo.s3.secret_access_key else None,
              "access_key_ref": repo.s3.access_key_ref, "secret_key_ref": repo.s3.secret_key_ref}
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
                       secret_access_key=Secret(secret) if secret else None,
                       access_key_ref=_ref(s3.get("access_key_ref")), secret_key_ref=_ref(s3.get("secret_key_ref")))
    return KitRepository(
        name=_get(data, "name", str, where),
        url=_get(data, "url", str, where),
        # Wrapping in Secret registers the value, so it is masked in any later error text.
        escrow_password=Secret(_get(data, "escrow_password", str, where)),
        escrow_key_id=_get(data, "escrow_key_id", str, where),
        s3=kit_s3,
    )


def _ref(value: Any) -> dict[str, str] | None:
    """A secret reference kept in a kit: {"env": NAME} or {"file": PATH} only (never a command)."""
    if isinstance(value, dict) and len(value) == 1:
        kind, target = next(iter(value.items()))
        if kind in ("env", "file") and isinstance(target, str):
            return {kind: target}
    return None


def _get(data: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise KitError(f"kit content: {where}.{key} is missing", hint="the kit was written by an incompatible tool")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KitError(f"kit content: {where}.{key} should be {kind.__name__}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- sealing (age)


def seal(kit: Kit, passphrase: str | None = None, *, recipients: Sequence[str] = ()) -> bytes:
    """The kit as an age file: for one passphrase, or for age / SSH public keys."""
    from drtool.crypto import kit_age

    plaintext = content_bytes(kit)
    if passphrase is not None:
        if recipients:
            raise KitError("age seals a file for a passphrase or for public keys, not both",
                           hint="make one kit per custodian")
        check_passphrase(passphrase)
        return kit_age.encrypt_passphrase(plaintext, passphrase)
    if not recipients:
        raise KitError("a kit needs a passphrase or at least one public key to seal it for")
    return kit_age.encrypt_recipients(plaintext, recipients)


def content_bytes(kit: Kit) -> bytes:
    # Indented, one field a line: what a person reads after `age -d` must be easy to scan.
    return (json.dumps(kit.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KitError(f"the kit passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters",
                       hint="use a long passphrase (several words); it is all that protects the escrow key")


def kit_format(data: bytes) -> str:
    """'age', 'age-armored' (plain or paper form), 'legacy' or 'legacy-armored'; raises otherwise."""
    from drtool.crypto import kit_age, kit_legacy

    if data.startswith(kit_age.AGE_MAGIC):
        return "age"
    if data.startswith(kit_legacy.MAGIC):
        return "legacy"
    if kit_age.AGE_BEGIN.encode() in data:
        return "age-armored"
    if kit_legacy.ARMOR_BEGIN.encode() in data:
        return "legacy-armored"
    if not data:
        raise KitError("not a recovery kit: the file is empty")
    if kit_age.AGE_MAGIC.startswith(data) or kit_legacy.MAGIC.startswith(data):
        raise KitError(f"the recovery kit is truncated: only {len(data)} bytes", hint="use another copy of the kit")
    raise KitError("not a recovery kit: neither an age file nor a drtool kit",
                   hint="give the file written by `drtool kit create` (binary or armoured text)")


def open_kit(data: bytes, passphrase: str | None = None, *, identities: Sequence[Any] = ()) -> Kit:
    """Decrypt and parse a kit of any format drtool has written. Each failure has its own message."""
    return Kit.from_dict(open_content(data, passphrase, identities=identities))


def open_content(data: bytes, passphrase: str | None = None, *, identities: Sequence[Any] = ()) -> dict[str, Any]:
    from drtool.crypto import kit_age, kit_legacy

    if kit_format(data).startswith("legacy"):
        if passphrase is None:
            raise KitError("this kit (first drtool format) needs its passphrase")
        return kit_legacy.open_content(data, passphrase)
    plaintext = kit_age.decrypt(data, passphrase=passphrase, identities=identities)
    try:
        return json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KitError("the kit decrypted but its content is not valid JSON",
                       hint="the kit was written by an incompatible tool") from None


def payload_digest(data: bytes) -> str:
    """sha256 of the sealed bytes, whether the file is binary or armoured (paper) text."""
    from drtool.crypto import kit_age, kit_legacy

    fmt = kit_format(data)
    if fmt == "age-armored":
        data = kit_age.to_binary(data)
    elif fmt == "legacy-armored":
        data = kit_legacy.dearmor(data.decode("ascii", "replace"))
    return hashlib.sha256(data).hexdigest()


def armor(binary: bytes) -> str:
    """The printable paper form of a sealed kit (per-line checksums), for either format."""
    from drtool.crypto import kit_age, kit_legacy

    return kit_legacy.armor(binary) if binary.startswith(kit_legacy.MAGIC) else kit_age.to_paper(binary)


def line_check(number: int, line: str) -> str:
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
