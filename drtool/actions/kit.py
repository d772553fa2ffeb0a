"""Use cases: create, revoke and upgrade recovery kits (verify: drtool.actions.kit_open).

`create_kit` makes one kit file per custodian. Each custodian gets its own
escrow key in every repository (restic key add under a pty: the new password
never touches argv, environment or disk), so revoking one custodian's kit
(`revoke_kit`) removes only that custodian's keys: the other custodians'
kits and the daily password keep working. A custodian holds a passphrase or
age / SSH public keys; the kit is an age file either way.

A small registry in the state dir (`kits.json`, 0600, no secrets: custodian,
key ids, repository names and the sha256 of each sealed kit) lets `kit
revoke FILE` or `kit revoke --custodian NAME` find the escrow keys of a kit
made here without opening it.

`upgrade_kit` rewrites a kit of the first format as an age file, with the
same content and escrow keys; it needs no drtool.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.actions.common import restic_host
from drtool.actions.kit_open import (  # noqa: F401 - re-exported: recover and drills open kits through here
    SnapshotListing,
    check_s3_credentials,
    kit_access,
    open_kit_file,
    open_repository,
    verify_kit,
)
from drtool.config.loader import Settings
from drtool.crypto.kit import (
    MIN_PASSPHRASE_CHARS,
    BundleLocation,
    Kit,
    KitRepository,
    KitS3,
    armor,
    kit_format,
    open_kit,
    payload_digest,
    read_kit,
    seal,
    write_kit,
)
from drtool.engine.restic import RepoAccess, repo_access
from drtool.errors import DrtoolError, UsageError
from drtool.secrets import Secret

REGISTRY = "kits.json"
_KEY_ID = re.compile(r"^[0-9a-f]{8,64}$")
_CUSTODIAN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Custodian:
    """Who holds one copy: a passphrase, or age / SSH public keys (age1..., ssh-ed25519 ..., a .pub file)."""

    name: str | None
    passphrase: str | None = None
    recipients: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.name is not None and not _CUSTODIAN.match(self.name):
            raise UsageError(f"custodian name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if (self.passphrase is None) == (not self.recipients):
            raise UsageError(f"custodian {self.name or '(default)'} needs a passphrase or public keys, not both")
        if self.passphrase is not None:
            _check_passphrase(self.passphrase)


# ---------------------------------------------------------------- create

@dataclass
class KitScope:
    repositories: list[str]
    policies: list[str]


def resolve_scope(settings: Settings, names: str | Sequence[str]) -> KitScope:
    """NAME(s) of policies or repositories -> the repositories to escrow and the policies covered."""
    wanted = [names] if isinstance(names, str) else list(names)
    if not wanted:
        raise UsageError("name a policy or a repository for the kit")
    repos: list[str] = []
    policies: list[str] = []
    for name in wanted:
        if name in settings.policies:
            found_repos, found_policies = [settings.policies[name].repository], [name]
        elif name in settings.config.repositories:
            found_repos = [name]
            found_policies = sorted(p.name for p in settings.policies.values() if p.repository == name)
        else:
            known = ", ".join(sorted({*settings.policies, *settings.config.repositories})) or "none"
            raise UsageError(f"{name!r} is neither a policy nor a repository (known: {known})")
        repos += [r for r in found_repos if r not in repos]
        policies += [p for p in found_policies if p not in policies]
    return KitScope(repos, policies)


def kit_path(out: Path, custodian: str | None, several: bool) -> Path:
    """siak.age -> siak.alice.age when several custodians share one --out."""
    if not several or custodian is None:
        return out
    return out.with_name(f"{out.stem}.{custodian}{out.suffix}" if out.suffix else f"{out.name}.{custodian}")


def create_kit(settings: Settings, names: str | Sequence[str], out: Path, passphrase: str | None = None, *,
               custodians: Sequence[Custodian] = (), include_credentials: bool = False,
               armor_text: bool = False) -> dict[str, Any]:
    """One kit per custodian (or one for `passphrase`), each with its own escrow keys; returns a summary.

    If anything fails after an escrow key was added, every key added and every file written is
    removed again.
    """
    scope = resolve_scope(settings, names)
    holders = list(custodians) or [Custodian(None, passphrase=passphrase or "")]
    if len({c.name for c in holders}) != len(holders):
        raise UsageError("each custodian needs its own name")
    paths = [kit_path(Path(out), c.name, len(holders) > 1) for c in holders]
    for path in paths:
        _check_out(path)
    from drtool.crypto.signing import load_or_create_signing_key, public_key_b64

    public_key = public_key_b64(load_or_create_signing_key(settings.state_dir))
    added: list[tuple[RepoAccess, str]] = []
    written: list[Path] = []
    made: list[dict[str, Any]] = []
    try:
        for holder, path in zip(holders, paths):
            made.append(_make_one(settings, scope, holder, path, public_key, include_credentials, armor_text, added))
            written.append(path)
    except BaseException:
        _undo(added, written)
        raise
    for entry in made:
        _register(settings, entry.pop("_sealed"), entry.pop("_kit"), Path(entry["file"]))
    first = made[0]
    return {**first, "kits": [{k: m[k] for k in ("file", "custodian", "sha256", "repositories")} for m in made]}


def _make_one(settings: Settings, scope: KitScope, holder: Custodian, path: Path, public_key: str,
              include_credentials: bool, armor_text: bool, added: list[tuple[RepoAccess, str]]) -> dict[str, Any]:
    entries = []
    for name in scope.repositories:
        access = repo_access(settings, name)
        entry = _escrow(settings, name, access, include_credentials, holder.name)
        added.append((access, entry.escrow_key_id))
        entries.append(entry)
    kit = Kit(repositories=entries, policies=scope.policies,
              config_bundle=BundleLocation(repository=scope.repositories[0]),
              signing_public_key=public_key, hostname=restic_host(settings), custodian=holder.name,
              notes=f"made by drtool on {settings.config.hostname or os.uname().nodename} from {settings.path}")
    sealed = seal(kit, holder.passphrase, recipients=holder.recipients)
    write_kit(path, armor(sealed) if armor_text else sealed)
    return {"file": str(path), "custodian": holder.name, "armored": armor_text, "format": "age",
            "sealed_for": "passphrase" if holder.passphrase is not None else f"{len(holder.recipients)} public key(s)",
            "sha256": hashlib.sha256(sealed).hexdigest(), "with_credentials": include_credentials,
            **kit.summary(), "_sealed": sealed, "_kit": kit}


def _undo(added: list[tuple[RepoAccess, str]], written: list[Path]) -> None:
    from drtool.engine.restic_keys import remove_key

    for access, key_id in added:
        try:
            remove_key(access, key_id)
        except DrtoolError:
            pass
    for path in written:
        path.unlink(missing_ok=True)


def _check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise UsageError(f"the kit passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters",
                         hint="use a long passphrase (several words); it is all that protects the escrow key")


def _check_out(out: Path) -> None:
    if out.exists():
        raise UsageError(f"{out} already exists; a kit is never overwritten",
                         hint="choose a new file name, or revoke and delete the old kit first")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write the kit to {out}: {out.parent} is not a writable directory")


def _escrow(settings: Settings, name: str, access: RepoAccess, include_credentials: bool,
            custodian: str | None) -> KitRepository:
    from drtool.engine.restic_keys import add_key

    repo = settings.config.repositories[name]
    s3 = _kit_s3(name, repo, access, include_credentials) if repo.is_s3 else None
    password = Secret(secrets.token_urlsafe(32))
    key_id = add_key(access, password)
    return KitRepository(name=name, url=repo.url, escrow_password=password, escrow_key_id=key_id, s3=s3)


def _kit_s3(name: str, repo: Any, access: RepoAccess, include_credentials: bool) -> KitS3:
    from drtool.storage.s3 import parse_s3_url

    location = parse_s3_url(repo.url)
    key_id_value, secret = None, None
    if include_credentials:
        key_id_value = access.env.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret_value = access.env.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key_id_value or not secret_value:
            raise UsageError(f"--with-credentials: repository {name} has no S3 credentials to put in the kit",
                             hint="set s3.access_key_id / secret_access_key in drtool.yaml or export AWS_*")
        secret = Secret(secret_value)
    s3 = repo.s3
    return KitS3(endpoint=location.endpoint_url, bucket=location.bucket, region=s3.region if s3 else "us-east-1",
                 access_key_id=key_id_value, secret_access_key=secret,
                 access_key_ref=_plain_ref(s3.access_key_id if s3 else None),
                 secret_key_ref=_plain_ref(s3.secret_access_key if s3 else None))


def _plain_ref(ref: Any) -> dict[str, str] | None:
    """The reference itself (never its value), when a new machine can resolve it: env or file."""
    if ref is None:
        return None
    if ref.env is not None:
        return {"env": ref.env}
    if ref.file is not None:
        return {"file": ref.file}
    return None


# ---------------------------------------------------------------- registry (no secrets)

def _registry_path(settings: Settings) -> Path:
    return settings.state_dir / REGISTRY


def _load_registry(settings: Settings) -> list[dict[str, Any]]:
    path = _registry_path(settings)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        raise DrtoolError(f"the kit registry {path} is unreadable",
                          hint="revoke by key id instead (`drtool kit revoke KEYID`)") from None
    return data if isinstance(data, list) else []


def _register(settings: Settings, sealed: bytes, kit: Kit, out: Path) -> None:
    entries = _load_registry(settings)
    entries.append({"sha256": hashlib.sha256(sealed).hexdigest(), "file": str(out.resolve()),
                    "created_at": kit.created_at, "policies": kit.policies, "custodian": kit.custodian,
                    "keys": [{"repository": r.name, "key_id": r.escrow_key_id} for r in kit.repositories]})
    path = _registry_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kits.")
    with os.fdopen(fd, "w") as fh:
        json.dump(entries, fh, indent=1)
    os.replace(tmp, path)


def kit_digest(data: bytes) -> str:
    """sha256 of the sealed bytes, whether the file is binary or armoured."""
    return payload_digest(data)


def list_kits(settings: Settings) -> list[dict[str, Any]]:
    return _load_registry(settings)


# ---------------------------------------------------------------- revoke

def revoke_kit(settings: Settings, ref: str | None, *, passphrase: str | None = None,
               identity: Path | None = None, custodian: str | None = None) -> dict[str, Any]:
    """Remove the escrow key(s) of one kit: the kit FILE, a restic KEYID, or every kit of `custodian`."""
    from drtool.engine.restic_keys import list_keys, remove_key

    if custodian is not None:
        targets = [(k["repository"], k["key_id"]) for e in _load_registry(settings)
                   if e.get("custodian") == custodian for k in e.get("keys", [])]
        if not targets:
            raise UsageError(f"no kit of custodian {custodian!r} was made with this state dir",
                             hint="give the kit file or the escrow key id instead")
    elif ref is None:
        raise UsageError("name the kit to revoke: FILE, KEYID or --custodian NAME")
    else:
        targets = _revoke_targets(settings, ref, passphrase, identity)
    removed: list[dict[str, str]] = []
    for repo_name, key_id in targets:
        if repo_name not in settings.config.repositories:
            raise UsageError(f"the kit's repository {repo_name!r} is not in {settings.path}",
                             hint="revoke with a drtool.yaml that configures it")
        access = repo_access(settings, repo_name)
        keys = list_keys(access)
        full = [k["id"] for k in keys if str(k.get("id", "")).startswith(key_id)]
        if not full:
            raise DrtoolError(f"repository {repo_name} has no key {key_id}",
                              hint="it may already be revoked; `restic key list` shows the keys left")
        if any(k.get("current") for k in keys if k["id"] in full):
            raise UsageError(f"key {key_id} is the one drtool.yaml's password opens {repo_name} with; "
                             "it is not an escrow key and is never revoked here")
        remove_key(access, full[0])
        removed.append({"repository": repo_name, "key_id": full[0]})
    return {"revoked": removed}


def _revoke_targets(settings: Settings, ref: str, passphrase: str | None,
                    identity: Path | None) -> list[tuple[str, str]]:
    path = Path(ref)
    if path.is_file():
        data = read_kit(path)
        digest = kit_digest(data)
        for entry in _load_registry(settings):
            if entry.get("sha256") == digest:
                return [(k["repository"], k["key_id"]) for k in entry.get("keys", [])]
        if passphrase is None and identity is None:
            raise UsageError(f"{path} was not made with this drtool.yaml's state dir, so its key ids are unknown",
                             hint="give its passphrase (--passphrase-fd N, or on a terminal) or --identity FILE, "
                                  "or revoke by key id")
        kit = open_kit_file(path, passphrase, identity=identity)
        return [(r.name, r.escrow_key_id) for r in kit.repositories]
    if _KEY_ID.match(ref):
        found = [(k["repository"], k["key_id"]) for e in _load_registry(settings) for k in e.get("keys", [])
                 if k["key_id"].startswith(ref)]
        if found:
            return found[:1]
        # Not made here: look for the key in every configured repository.
        from drtool.engine.restic_keys import list_keys
        for name in settings.config.repositories:
            try:
                if any(str(k.get("id", "")).startswith(ref) for k in list_keys(repo_access(settings, name))):
                    return [(name, ref)]
            except DrtoolError:
                continue
        raise DrtoolError(f"no repository in {settings.path} has a key {ref}",
                          hint="it may already be revoked; `restic key list` shows the keys")
    raise UsageError(f"{ref!r} is neither a kit file nor a restic key id (8 to 64 hex digits)")


# ---------------------------------------------------------------- upgrade

def upgrade_kit(old: Path, out: Path, passphrase: str, *, recipients: Sequence[str] = (),
                armor_text: bool = False) -> dict[str, Any]:
    """Rewrite a kit of the first format as an age file: same content, same escrow keys.

    Sealed with the same passphrase, or for `recipients` instead. The old file is left as it is:
    destroy it once the new one has been checked (`drtool kit verify NEW`).
    """
    data = read_kit(Path(old))
    if not kit_format(data).startswith("legacy"):
        raise UsageError(f"{old} is already an age kit; nothing to upgrade")
    _check_out(Path(out))
    kit = open_kit(data, passphrase)
    sealed = seal(kit, None if recipients else passphrase, recipients=recipients)
    write_kit(Path(out), armor(sealed) if armor_text else sealed)
    return {"file": str(out), "from": str(old), "format": "age", "armored": armor_text,
            "sha256": hashlib.sha256(sealed).hexdigest(), **kit.summary()}
