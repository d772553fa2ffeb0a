"""Opening a recovery kit and reaching its repositories: what `kit verify`, `recover` and drills share.

Nothing here needs a drtool.yaml: a kit file and its passphrase (or a
custodian's age / SSH identity) are enough.

S3 credentials, in this order (the first that is complete wins, and the
answer says which one was used):

1. the kit's own (`kit create --with-credentials`);
2. the old configuration's references recorded in the kit ({env: NAME} or
   {file: PATH}), resolved on this machine;
3. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drtool.crypto.kit import Kit, KitError, KitRepository, open_kit, read_kit
from drtool.engine.restic import RepoAccess, Restic
from drtool.errors import DrtoolError
from drtool.secrets import Secret

KIT_CREDENTIALS = "the recovery kit"
ENV_CREDENTIALS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment"


@dataclass(frozen=True)
class KitKey:
    """What opens a kit: its passphrase, or a custodian's identity file (age or SSH private key)."""

    passphrase: str | None = None
    identity_file: Path | None = None

    def identities(self) -> list[Any]:
        if self.identity_file is None:
            return []
        from drtool.crypto.kit_age import load_identities
        return load_identities(self.identity_file)


def open_kit_file(path: Path, passphrase: str | None = None, *, identity: Path | None = None) -> Kit:
    key = KitKey(passphrase, identity)
    return open_kit(read_kit(Path(path)), key.passphrase, identities=key.identities())


# ---------------------------------------------------------------- credentials

@dataclass(frozen=True)
class S3Credentials:
    env: dict[str, str]
    source: str | None          # which of the three places they came from; None: none found
    tried: tuple[str, ...] = ()  # references that could not be resolved, and why


def s3_credentials(entry: KitRepository, environ: dict[str, str] | None = None) -> S3Credentials:
    """The kit's credentials, else the configuration's references, else AWS_* (module docstring)."""
    environ = dict(os.environ) if environ is None else environ
    s3 = entry.s3
    if s3 is None:
        return S3Credentials({}, None)
    if s3.access_key_id and s3.secret_access_key:
        return S3Credentials({"AWS_ACCESS_KEY_ID": s3.access_key_id,
                              "AWS_SECRET_ACCESS_KEY": s3.secret_access_key.reveal()}, KIT_CREDENTIALS)
    tried: list[str] = []
    if s3.access_key_ref and s3.secret_key_ref:
        refs = (s3.access_key_ref, s3.secret_key_ref)
        where = " and ".join(_describe_ref(r) for r in refs)
        try:
            key_id, secret = (_resolve_ref(r, environ) for r in refs)
            return S3Credentials({"AWS_ACCESS_KEY_ID": key_id.reveal(), "AWS_SECRET_ACCESS_KEY": secret.reveal()},
                                 f"the configuration's references ({where})")
        except DrtoolError as exc:
            tried.append(f"{where}: {exc.message}")
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return S3Credentials({"AWS_ACCESS_KEY_ID": environ["AWS_ACCESS_KEY_ID"],
                              "AWS_SECRET_ACCESS_KEY": environ["AWS_SECRET_ACCESS_KEY"]}, ENV_CREDENTIALS, tuple(tried))
    return S3Credentials({}, None, tuple(tried))


def _describe_ref(ref: dict[str, str]) -> str:
    kind, target = next(iter(ref.items()))
    return f"{kind}:{target}"


def _resolve_ref(ref: dict[str, str], environ: dict[str, str]) -> Secret:
    from drtool.errors import ConfigError

    if "env" in ref:
        if not environ.get(ref["env"]):
            raise ConfigError(f"env:{ref['env']} is not set")
        return Secret(environ[ref["env"]])
    from drtool.config.secrets import SecretRef
    return SecretRef(file=ref["file"]).resolve()


def kit_access(entry: KitRepository) -> RepoAccess:
    """How restic reaches a kit repository: the escrow password and the S3 credentials above.

    RESTIC_KEY_HINT makes restic try the escrow key first instead of deriving a
    key (scrypt) for every key of the repository on each call.
    """
    return kit_access_with_source(entry)[0]


def kit_access_with_source(entry: KitRepository) -> tuple[RepoAccess, S3Credentials]:
    env: dict[str, str] = {"RESTIC_KEY_HINT": entry.escrow_key_id}
    creds = s3_credentials(entry)
    env.update(creds.env)
    if entry.s3 is not None:
        env["AWS_DEFAULT_REGION"] = entry.s3.region
    return RepoAccess(entry.url, entry.escrow_password, env), creds


def check_s3_credentials(entry: KitRepository, creds: S3Credentials) -> None:
    if entry.s3 is not None and creds.source is None:
        tried = "".join(f"; tried {t}" for t in creds.tried)
        raise KitError(f"the kit holds no S3 credentials for repository {entry.name} ({entry.s3.endpoint}, "
                       f"bucket {entry.s3.bucket}), none of the configuration's references resolve here and "
                       f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set{tried}",
                       hint="export the bucket's access key id and secret key, then run again")


def open_repository(entry: KitRepository, cache_dir: Path | None) -> Restic:
    """A Restic on the kit's repository, proven to open with the escrow password (`restic cat config`)."""
    return open_repository_with_source(entry, cache_dir)[0]


def open_repository_with_source(entry: KitRepository, cache_dir: Path | None) -> tuple[Restic, S3Credentials]:
    from drtool.tools import require

    require("restic")
    access, creds = kit_access_with_source(entry)
    check_s3_credentials(entry, creds)
    restic = Restic(access, cache_dir=cache_dir)
    try:
        restic.run(["--no-lock", "cat", "config"], timeout=300)      # only reads: no lock (~0.3 s on S3)
    except DrtoolError as exc:
        raise KitError(f"the kit's escrow key {entry.escrow_key_id} does not open repository {entry.name}: "
                       f"{exc.message}",
                       hint="the escrow key may have been revoked (`drtool kit revoke`), or the storage is "
                            "unreachable; use a newer kit, or the repository password") from None
    return restic, creds


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


# ---------------------------------------------------------------- verify

def verify_kit(path: Path, passphrase: str | None, *, host: str | None = None,
               identity: Path | None = None) -> dict[str, Any]:
    """Open each repository with the kit and report what `host` (default: the kit's host) can
    recover from it (read-only)."""
    kit = open_kit_file(path, passphrase, identity=identity)
    report: dict[str, Any] = {"kit": kit.summary(), "repositories": [], "ok": True}
    with tempfile.TemporaryDirectory(prefix="drtool-kit-verify-") as cache:
        for entry in kit.repositories:
            info = _verify_repository(kit, entry, Path(cache), host)
            report["ok"] = report["ok"] and info.pop("_ok")
            report["repositories"].append(info)
    return report


def _verify_repository(kit: Kit, entry: KitRepository, cache: Path, host: str | None) -> dict[str, Any]:
    from drtool.actions.bundle import read_config_bundle
    from drtool.actions.select import snapshot_sets

    restic, creds = open_repository_with_source(entry, cache)
    listing = SnapshotListing(restic)
    info: dict[str, Any] = {"name": entry.name, "url": entry.url, "escrow_key_id": entry.escrow_key_id,
                            "opens": True, "credentials": creds.source, "snapshots": len(listing.all),
                            "policies": {}, "_ok": True}
    try:
        bundle = read_config_bundle(restic, host=host or kit.hostname)
        bundle.verify(kit.signing_public_key)
        info["host"] = wanted = host or kit.hostname or bundle.snapshot.hostname
        settings = bundle.settings(cache / "bundle")
        info["config_bundle"] = {"snapshot": bundle.snapshot.short_id, "time": bundle.snapshot.time.isoformat(),
                                 "policies": sorted(settings.policies), "signature": "valid"}
    except DrtoolError as exc:
        info["config_bundle"] = {"error": exc.message}
        info["_ok"] = False
        return info
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
    missing = [p for p in kit.policies if not any(s["sets"] for s in info["policies"].get(p, {}).values())]
    if missing:
        info["nothing_recoverable_for"] = missing
        info["_ok"] = False
    return info
