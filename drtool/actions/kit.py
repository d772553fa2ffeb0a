"""Use cases: create, verify and revoke a recovery kit.

`create_kit` adds a dedicated escrow key to each repository (restic key add
under a pty: the new password never touches argv, environment or disk), puts
its password into a Kit with the repository and S3 location, the config
bundle location and the signing public key, seals it with the passphrase and
writes it 0600. The escrow key can be revoked alone (`revoke_kit`), without
changing the daily password.

A small registry in the state dir (`kits.json`, 0600, no secrets: key ids,
repository names and the sha256 of each sealed kit) lets `kit revoke FILE`
find the escrow keys of a kit made here without its passphrase.

`verify_kit` needs nothing but the kit and its passphrase: it opens every
repository with the escrow password (read-only commands), reads the config
bundle and lists what can be recovered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drtool.actions.common import restic_host
from drtool.config.loader import Settings
from drtool.crypto.kit import (
    DEFAULT_LOG2_N,
    MIN_PASSPHRASE_CHARS,
    BundleLocation,
    Kit,
    KitError,
    KitRepository,
    KitS3,
    armor,
    dearmor,
    open_kit,
    read_kit,
    seal,
    write_kit,
)
from drtool.engine.restic import RepoAccess, Restic, repo_access
from drtool.errors import DrtoolError, UsageError
from drtool.secrets import Secret

REGISTRY = "kits.json"
_KEY_ID = re.compile(r"^[0-9a-f]{8,64}$")


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


def create_kit(settings: Settings, names: str | Sequence[str], out: Path, passphrase: str, *,
               include_credentials: bool = False, armor_text: bool = False,
               log2_n: int = DEFAULT_LOG2_N) -> dict[str, Any]:
    """Add escrow keys, seal the kit with `passphrase`, write it to `out` (0600); returns a summary.

    If anything fails after an escrow key was added, that key is removed again.
    """
    scope = resolve_scope(settings, names)
    out = Path(out)
    _check_passphrase(passphrase)
    _check_out(out)
    from drtool.crypto.signing import load_or_create_signing_key, public_key_b64

    public_key = public_key_b64(load_or_create_signing_key(settings.state_dir))
    added: list[tuple[RepoAccess, str]] = []
    try:
        entries = []
        for name in scope.repositories:
            access = repo_access(settings, name)
            entry = _escrow(settings, name, access, include_credentials)
            added.append((access, entry.escrow_key_id))
            entries.append(entry)
        kit = Kit(repositories=entries, policies=scope.policies,
                  config_bundle=BundleLocation(repository=scope.repositories[0]),
                  signing_public_key=public_key, hostname=restic_host(settings),
                  notes=f"made by drtool on {settings.config.hostname or os.uname().nodename} "
                        f"from {settings.path}")
        sealed = seal(kit, passphrase, log2_n=log2_n)
        write_kit(out, armor(sealed) if armor_text else sealed)
    except BaseException:
        for access, key_id in added:
            try:
                from drtool.engine.restic_keys import remove_key
                remove_key(access, key_id)
            except DrtoolError:
                pass
        raise
    _register(settings, sealed, kit, out)
    return {"file": str(out), "armored": armor_text, "sha256": hashlib.sha256(sealed).hexdigest(),
            "with_credentials": include_credentials, **kit.summary()}


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


def _escrow(settings: Settings, name: str, access: RepoAccess, include_credentials: bool) -> KitRepository:
    from drtool.engine.restic_keys import add_key

    repo = settings.config.repositories[name]
    password = Secret(secrets.token_urlsafe(32))
    key_id = add_key(access, password)
    s3 = None
    if repo.is_s3:
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
        s3 = KitS3(endpoint=location.endpoint_url, bucket=location.bucket,
                   region=repo.s3.region if repo.s3 else "us-east-1",
                   access_key_id=key_id_value, secret_access_key=secret)
    return KitRepository(name=name, url=repo.url, escrow_password=password, escrow_key_id=key_id, s3=s3)


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
                    "created_at": kit.created_at, "policies": kit.policies,
                    "keys": [{"repository": r.name, "key_id": r.escrow_key_id} for r in kit.repositories]})
    path = _registry_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kits.")
    with os.fdopen(fd, "w") as fh:
        json.dump(entries, fh, indent=1)
    os.replace(tmp, path)


def kit_digest(data: bytes) -> str:
    """sha256 of the sealed bytes, whether the file is binary or armoured."""
    if not data.startswith(b"DRTOOLKT") and b"BEGIN DRTOOL RECOVERY KIT" in data:
        data = dearmor(data.decode("ascii", "replace"))
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- open / verify

def open_kit_file(path: Path, passphrase: str) -> Kit:
    return open_kit(read_kit(Path(path)), passphrase)


def kit_access(entry: KitRepository) -> RepoAccess:
    """How restic reaches a kit repository: the escrow password; S3 keys from the kit, else AWS_* env.

    RESTIC_KEY_HINT makes restic try the escrow key first instead of deriving a
    key (scrypt) for every key of the repository on each call.
    """
    env: dict[str, str] = {"RESTIC_KEY_HINT": entry.escrow_key_id}
    if entry.s3 is not None:
        key_id = entry.s3.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = entry.s3.secret_access_key.reveal() if entry.s3.secret_access_key else os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            env.update({"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret})
        env["AWS_DEFAULT_REGION"] = entry.s3.region
    return RepoAccess(entry.url, entry.escrow_password, env)


def check_s3_credentials(entry: KitRepository, access: RepoAccess) -> None:
    if entry.s3 is not None and "AWS_SECRET_ACCESS_KEY" not in access.env:
        raise KitError(f"the kit holds no S3 credentials for repository {entry.name} ({entry.s3.endpoint}, "
                       f"bucket {entry.s3.bucket}) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set",
                       hint="export the bucket's access key id and secret key, then run again")


def open_repository(entry: KitRepository, cache_dir: Path | None) -> Restic:
    """A Restic on the kit's repository, proven to open with the escrow password (`restic cat config`)."""
    access = kit_access(entry)
    check_s3_credentials(entry, access)
    restic = Restic(access, cache_dir=cache_dir)
    try:
        restic.run(["cat", "config"], timeout=300)
    except DrtoolError as exc:
        raise KitError(f"the kit's escrow key {entry.escrow_key_id} does not open repository {entry.name}: "
                       f"{exc.message}",
                       hint="the escrow key may have been revoked (`drtool kit revoke`), or the storage is "
                            "unreachable; use a newer kit, or the repository password") from None
    return restic


class SnapshotListing:
    """One `restic snapshots` answer, filtered by tags in memory: what `snapshot_sets` needs.

    Listing a repository once instead of once per source saves a round trip to
    the storage for every source.
    """

    def __init__(self, restic: Restic) -> None:
        self.restic = restic
        self.all = restic.snapshots()

    def snapshots(self, tags: Sequence[str] | None = None, host: str | None = None) -> list[Any]:
        wanted = set(tags or ())
        return [s for s in self.all if wanted <= set(s.tags) and (host is None or s.hostname == host)]


def verify_kit(path: Path, passphrase: str, *, host: str | None = None) -> dict[str, Any]:
    """Open each repository with the kit and report what `host` (default: the kit's host) can
    recover from it (read-only)."""
    from drtool.actions.bundle import read_config_bundle
    from drtool.actions.select import snapshot_sets

    kit = open_kit_file(path, passphrase)
    report: dict[str, Any] = {"kit": kit.summary(), "repositories": [], "ok": True}
    with tempfile.TemporaryDirectory(prefix="drtool-kit-verify-") as cache:
        for entry in kit.repositories:
            restic = open_repository(entry, Path(cache))
            listing = SnapshotListing(restic)
            info: dict[str, Any] = {"name": entry.name, "url": entry.url, "escrow_key_id": entry.escrow_key_id,
                                    "opens": True, "snapshots": len(listing.all), "policies": {}}
            try:
                bundle = read_config_bundle(restic, host=host or kit.hostname)
                bundle.verify(kit.signing_public_key)
                info["host"] = wanted = host or kit.hostname or bundle.snapshot.hostname
                settings = bundle.settings(Path(cache) / "bundle")
                info["config_bundle"] = {"snapshot": bundle.snapshot.short_id,
                                         "time": bundle.snapshot.time.isoformat(),
                                         "policies": sorted(settings.policies), "signature": "valid"}
            except DrtoolError as exc:
                info["config_bundle"] = {"error": exc.message}
                report["ok"] = False
                settings = None
            if settings is not None:
                for policy in settings.policies.values():
                    if policy.repository != entry.name:
                        continue
                    sources = {}
                    for source in policy.sources:
                        sets = snapshot_sets(listing, policy, source, host=wanted)  # type: ignore[arg-type]
                        sources[source.name] = {"kind": source.kind, "sets": len(sets),
                                                "newest": sets[-1].time.isoformat() if sets else None,
                                                "newest_run": sets[-1].run_id if sets else None}
                    info["policies"][policy.name] = sources
            missing = [p for p in kit.policies if not any(
                s["sets"] for s in info["policies"].get(p, {}).values())]
            if missing and settings is not None:
                info["nothing_recoverable_for"] = missing
                report["ok"] = False
            report["repositories"].append(info)
    return report


# ---------------------------------------------------------------- revoke

def revoke_kit(settings: Settings, ref: str, *, passphrase: str | None = None) -> dict[str, Any]:
    """Remove the escrow key(s) of a kit: given as the kit FILE or a restic KEYID."""
    from drtool.engine.restic_keys import list_keys, remove_key

    targets = _revoke_targets(settings, ref, passphrase)
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


def _revoke_targets(settings: Settings, ref: str, passphrase: str | None) -> list[tuple[str, str]]:
    path = Path(ref)
    if path.is_file():
        data = read_kit(path)
        digest = kit_digest(data)
        for entry in _load_registry(settings):
            if entry.get("sha256") == digest:
                return [(k["repository"], k["key_id"]) for k in entry.get("keys", [])]
        if passphrase is None:
            raise UsageError(f"{path} was not made with this drtool.yaml's state dir, so its key ids are unknown",
                             hint="give its passphrase (--passphrase-fd N, or on a terminal), or revoke by key id")
        kit = open_kit(data, passphrase)
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
