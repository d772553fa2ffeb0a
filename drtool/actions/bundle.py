"""The configuration bundle: drtool's own configuration, kept offsite inside the repository.

After every backup run the current drtool.yaml, policies/*.yaml and
playbooks/*.yaml (secrets are only references in them, never values), the
signing public key and a generated runbook per policy are stored as one tar
stream, a restic snapshot tagged `drtool`, `kind=config`, `run=<id>`. A new
machine with the recovery kit finds the latest one and needs no file from
the lost server.

Layout of `drtool-config.tar` (regular files only, mode 0600):

    MANIFEST.json               what is inside, sha256 of each file; Ed25519-signed
    drtool.yaml
    policies/<file>.yaml
    playbooks/<file>.yaml
    signing-public-key.txt      base64 raw Ed25519 key that signs run records
    runbooks/<policy>.md        bare-tool recovery steps (drtool.actions.runbook)

Only the YAML files drtool itself loaded and validated are taken (a symlink
counts by its target's content); anything else in those folders is skipped
and named in the result.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.config.loader import Settings, parse_document, validate
from drtool.config.models import Config, Playbook, Policy
from drtool.engine.pipeline import backup_bytes
from drtool.engine.restic import Restic, Snapshot
from drtool.errors import ConfigError, DrtoolError

log = logging.getLogger(__name__)

BUNDLE_FILENAME = "drtool-config.tar"
BUNDLE_TAGS = ("drtool", "kind=config")
MANIFEST = "MANIFEST.json"
PUBLIC_KEY_FILE = "signing-public-key.txt"
MAX_FILE_BYTES = 1 << 20           # a drtool YAML file is a few KiB
MAX_BUNDLE_BYTES = 32 << 20
YAML_SUFFIXES = (".yaml", ".yml")
_FOLDERS = ("policies", "playbooks", "runbooks")


class BundleError(DrtoolError):
    """The configuration bundle cannot be built, found or read."""


# ---------------------------------------------------------------- building

def build_bundle(settings: Settings, *, run_id: str | None = None, host: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """The bundle as tar bytes, and its manifest."""
    files: dict[str, bytes] = {"drtool.yaml": _read_yaml(settings.path)}
    skipped: list[str] = []
    for folder, loaded in (("policies", settings.policies.values()), ("playbooks", settings.playbooks.values())):
        wanted = {Path(item.path).resolve() for item in loaded if item.path}
        directory = settings.policies_dir if folder == "policies" else settings.playbooks_dir
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if path.resolve() in wanted and path.suffix in YAML_SUFFIXES and path.is_file():
                files[f"{folder}/{path.name}"] = _read_yaml(path)
            else:
                skipped.append(f"{folder}/{path.name}")
    files[PUBLIC_KEY_FILE] = (_public_key(settings) + "\n").encode("ascii")
    from drtool.actions.runbook import render_runbook

    for policy in settings.policies.values():
        repository = settings.config.repositories[policy.repository]
        files[f"runbooks/{policy.name}.md"] = render_runbook(policy, repository, host=host).encode("utf-8")
    manifest: dict[str, Any] = {
        "format": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": run_id,
        "host": host,
        "policies": {p.name: {"repository": p.repository, "file": f"policies/{Path(p.path).name}" if p.path else None}
                     for p in settings.policies.values()},
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        "skipped": skipped,
    }
    signed = _sign(settings, manifest)
    files[MANIFEST] = json.dumps(signed, indent=1, sort_keys=True).encode("utf-8")
    return _tar(files), signed


def _read_yaml(path: Path) -> bytes:
    if path.suffix not in YAML_SUFFIXES:
        raise BundleError(f"{path} is not a .yaml file; only YAML configuration goes into the bundle")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BundleError(f"{path} is larger than {MAX_FILE_BYTES} bytes; is it really drtool configuration?")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path} for the configuration bundle: {exc.strerror}") from None
    # It was validated when loaded; re-parse so a file replaced since then is not stored blindly.
    try:
        parse_document(data.decode("utf-8"), path)
    except (UnicodeDecodeError, ConfigError) as exc:
        raise BundleError(f"{path} is no longer valid YAML: {exc}", hint="fix it and run `drtool validate`") from None
    return data


def _public_key(settings: Settings) -> str:
    from drtool.crypto.signing import load_or_create_signing_key, public_key_b64

    return public_key_b64(load_or_create_signing_key(settings.state_dir))


def _sign(settings: Settings, manifest: dict[str, Any]) -> dict[str, Any]:
    from drtool.crypto.signing import load_or_create_signing_key, sign_record

    return sign_record(manifest, load_or_create_signing_key(settings.state_dir))


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, now
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def store_config_bundle(settings: Settings, handle: Any, *, host: str, run_id: str) -> dict[str, Any]:
    """Store the bundle in `handle`'s repository as its own tagged snapshot; returns what was stored."""
    data, manifest = build_bundle(settings, run_id=run_id, host=host)
    snapshot = backup_bytes(handle.restic, data, filename=BUNDLE_FILENAME,
                            tags=[*BUNDLE_TAGS, f"run={run_id}"], host=host)
    if manifest["skipped"]:
        log.info("configuration bundle: skipped %s", ", ".join(manifest["skipped"]))
    return {"snapshot": snapshot, "bytes": len(data), "files": sorted(manifest["files"]),
            "skipped": manifest["skipped"]}


# ---------------------------------------------------------------- reading back

@dataclass
class Bundle:
    """A configuration bundle read back from a repository."""

    snapshot: Snapshot
    files: dict[str, bytes]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> str | None:
        raw = self.files.get(PUBLIC_KEY_FILE)
        return raw.decode("ascii").strip() if raw else None

    def verify(self, expected_public_key: str | None) -> None:
        """The manifest's signature holds (by the kit's key, when given) and every file matches it."""
        from drtool.crypto.signing import verify_record

        verify_record(self.manifest, expected_public_key)
        listed = self.manifest.get("files") or {}
        for name, data in self.files.items():
            if name == MANIFEST:
                continue
            if listed.get(name) != hashlib.sha256(data).hexdigest():
                raise BundleError(f"configuration bundle {self.snapshot.short_id}: {name} does not match its signed manifest",
                                  hint="the bundle was altered; try an older one (drtool recover --bundle ID)")
        missing = sorted(set(listed) - set(self.files))
        if missing:
            raise BundleError(f"configuration bundle {self.snapshot.short_id} lacks {', '.join(missing)}")

    def settings(self, root: Path) -> Settings:
        """In-memory Settings from the bundle's YAML, as if drtool.yaml were at root/drtool.yaml.

        Nothing is read from or written to `root`; it only anchors relative paths.
        """
        config = validate(Config, parse_document(self._text("drtool.yaml"), root / "drtool.yaml"), what="drtool.yaml")
        policies: dict[str, Policy] = {}
        playbooks: dict[str, Playbook] = {}
        for name in sorted(self.files):
            folder, _, base = name.partition("/")
            if folder not in ("policies", "playbooks") or not base.endswith(YAML_SUFFIXES):
                continue
            model = Policy if folder == "policies" else Playbook
            item = validate(model, parse_document(self._text(name), root / name), what=folder[:-1])
            (policies if folder == "policies" else playbooks)[item.name] = item  # type: ignore[index]
        return Settings(root / "drtool.yaml", config, policies, playbooks)

    def _text(self, name: str) -> str:
        try:
            return self.files[name].decode("utf-8")
        except KeyError:
            raise BundleError(f"configuration bundle {self.snapshot.short_id} has no {name}") from None


def latest_bundle_snapshot(restic: Restic, tags: tuple[str, ...] | list[str] = BUNDLE_TAGS, *,
                           host: str | None = None) -> Snapshot:
    """The newest bundle of `host`; without a host, of the only host that stored bundles."""
    snaps = restic.snapshots(tags=list(tags), host=host)
    if not snaps:
        whose = f" of host {host!r}" if host else ""
        raise BundleError(f"no configuration bundle{whose} (snapshots tagged {','.join(tags)}) in {restic.access.url}",
                          hint="bundles are stored by every `drtool backup` run; run one, or recover with the "
                               "runbook and the repository alone")
    hosts = sorted({s.hostname for s in snaps})
    if len(hosts) > 1:
        raise BundleError(f"{restic.access.url} holds configuration bundles of several hosts ({', '.join(hosts)})",
                          hint="name the host whose backups to use with --host NAME")
    return snaps[-1]


def read_config_bundle(restic: Restic, tags: tuple[str, ...] | list[str] = BUNDLE_TAGS,
                       snapshot: Snapshot | None = None, *, host: str | None = None) -> Bundle:
    """Fetch and unpack the latest bundle of `host` (or the given one) in memory."""
    snap = snapshot or latest_bundle_snapshot(restic, tags, host=host)
    result = restic.run(["dump", snap.id, "/" + BUNDLE_FILENAME], timeout=600)
    if len(result.stdout) > MAX_BUNDLE_BYTES:
        raise BundleError(f"configuration bundle {snap.short_id} is larger than {MAX_BUNDLE_BYTES} bytes")
    files = _untar(result.stdout, snap)
    try:
        manifest = json.loads(files.get(MANIFEST, b"{}"))
    except ValueError:
        raise BundleError(f"configuration bundle {snap.short_id}: {MANIFEST} is not JSON") from None
    return Bundle(snap, files, manifest)


def _untar(data: bytes, snap: Snapshot) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile() or not _safe_name(member.name):
                    log.warning("configuration bundle %s: ignoring entry %r", snap.short_id, member.name)
                    continue
                extracted = tar.extractfile(member)
                if extracted is None or member.size > MAX_FILE_BYTES:
                    raise BundleError(f"configuration bundle {snap.short_id}: {member.name} is too large")
                files[member.name] = extracted.read()
    except tarfile.TarError as exc:
        raise BundleError(f"configuration bundle {snap.short_id} is not a readable tar ({exc})") from None
    return files


def _safe_name(name: str) -> bool:
    """drtool.yaml, MANIFEST.json, signing-public-key.txt or folder/file in a known folder."""
    if name != posixpath.normpath(name) or name.startswith(("/", "..")):
        return False
    parts = name.split("/")
    if len(parts) == 1:
        return name in ("drtool.yaml", MANIFEST, PUBLIC_KEY_FILE)
    return len(parts) == 2 and parts[0] in _FOLDERS and parts[1] not in ("", ".", "..")


def fetch_config_bundle(restic: Restic, dest_dir: Path, tags: tuple[str, ...] | list[str] = BUNDLE_TAGS, *,
                        host: str | None = None) -> Path:
    """Write the latest bundle's files under `dest_dir` (0700 dirs, 0600 files); returns dest_dir/drtool.yaml.

    Refuses a non-empty `dest_dir`, so nothing is ever overwritten.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise BundleError(f"{dest_dir} exists and is not an empty directory; nothing was written",
                          hint="give a new or empty directory")
    bundle = read_config_bundle(restic, tags, host=host)
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data in bundle.files.items():
        path = dest_dir / name
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return dest_dir / "drtool.yaml"


__all__ = ["BUNDLE_FILENAME", "BUNDLE_TAGS", "Bundle", "BundleError", "build_bundle",
           "fetch_config_bundle", "latest_bundle_snapshot", "read_config_bundle", "store_config_bundle"]
