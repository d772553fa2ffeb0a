"""What every action needs: the repository of a policy, its tags, the run's host name."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from drtool.actions.machine_key import machine_key_slot
from drtool.config.loader import Settings
from drtool.engine.restic import Restic, repo_access
from drtool.errors import DrtoolError, RepositoryMissing
from drtool.tags import policy_tags
from drtool.events import Notice

__all__ = ["RepoHandle", "checked_preflight", "open_repo", "policy_tags", "preflight", "preflight_once",
           "publish_offsite", "restic_host", "signed", "state_path"]

log = logging.getLogger(__name__)
_offsite_lock = threading.Lock()


@dataclass
class RepoHandle:
    name: str
    restic: Restic
    settings: Settings

    @property
    def repository(self):  # noqa: ANN201 - models.Repository
        return self.settings.config.repositories[self.name]

    def offsite(self):  # noqa: ANN201 - OffsiteRecords, imported lazily (boto3)
        # One per handle: the S3 client is built once (and may be warmed up in the background).
        with _offsite_lock:
            cached = self.__dict__.get("_offsite")
            if cached is None:
                from drtool.offsite import OffsiteRecords
                # The credentials restic was given (resolved once, or taken from a recovery kit).
                cached = self.__dict__["_offsite"] = OffsiteRecords(self.repository, self.restic.access.env)
        return cached


def open_repo(settings: Settings, repo_name: str) -> RepoHandle:
    cache = settings.state_dir / "restic-cache"
    repo = settings.config.repositories[repo_name]
    access = repo_access(settings, repo_name)
    hint = _key_hint_path(settings, repo.url)
    if hint.is_file():
        # restic tries the key the password opened last time first, instead of deriving every key
        # in turn (each escrow key of a recovery kit would add ~0.5 s to every restic process).
        access = replace(access, env={**access.env, "RESTIC_KEY_HINT": hint.read_text().strip()})
    restic = Restic(access, cache_dir=cache, wait_unavailable=repo.wait_unavailable,
                    lock_wait=repo.lock_wait, machine_key=machine_key_slot(settings, repo, access.password))
    restic.check_machine_key_soon()      # overlaps the run's set-up instead of delaying its first restic
    return RepoHandle(repo_name, restic, settings)


def _key_hint_path(settings: Settings, url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return settings.state_dir / "repos" / f"{digest}.keyhint"


def learn_key_hint(handle: RepoHandle) -> str | None:
    """Remember which restic key the configured password opens (`restic key list`: current).
    Once per repository and machine; a hint gone stale only costs restic its old search."""
    path = _key_hint_path(handle.settings, handle.repository.url)
    if path.is_file():
        return path.read_text().strip()
    from drtool.engine.restic_keys import list_keys

    try:
        current = next((k["id"] for k in list_keys(handle.restic.access) if k.get("current")), None)
    except DrtoolError as exc:
        log.info("key hint not learned: %s", exc.message.splitlines()[0])
        return None
    if current:
        state_path(handle.settings, "repos", path.name).write_text(current + "\n")
    return current


def restic_host(settings: Settings) -> str:
    return settings.config.hostname or socket.gethostname()


def _known_marker(handle: RepoHandle) -> Path:
    digest = hashlib.sha256(handle.repository.url.encode()).hexdigest()[:16]
    return state_path(handle.settings, "repos", f"{digest}.ok")


def preflight_once(handle: RepoHandle, *, on_event=None) -> dict:  # noqa: ANN001
    """Full preflight (bucket, repository, init) the first time a repository is used from this
    machine; afterwards nothing here.

    No separate probe on later runs (it would cost a key derivation and an S3 round trip,
    ~0.6 s per run): every `restic backup` opens the repository *before* it reads a byte of
    its stdin, so a wrong password, a missing repository or an unreachable storage stops the
    stream, and its producer, within the first 64 KiB (tests/integration/test_pipeline_gate.py);
    a transient cause is then retried by the run (`retries`, `retry_wait`).
    """
    marker = _known_marker(handle)
    if marker.exists():
        return {"checked": "earlier"}
    return checked_preflight(handle, on_event=on_event)


def checked_preflight(handle: RepoHandle, *, on_event=None) -> dict:  # noqa: ANN001
    """The full preflight, creating what is missing, remembered for later runs (`drtool init-repo`)."""
    info = preflight(handle, create=True, on_event=on_event)
    _known_marker(handle).write_text(handle.repository.url + "\n")
    return info


def preflight(handle: RepoHandle, *, create: bool, on_event=None) -> dict:  # noqa: ANN001
    """Check the bucket (S3) and the restic repository; initialise when allowed."""
    info: dict = {}
    repo = handle.repository
    if repo.is_s3:
        from drtool.storage.s3 import store_from_repository
        store = store_from_repository(repo)
        if store is not None:
            status = store.preflight(create_bucket=create and (repo.s3.create_bucket if repo.s3 else True))
            info["bucket"] = status.describe()
            if status.created and on_event:
                on_event(Notice(f"created bucket for {repo.url}"))
    if not handle.restic.exists():
        if not create:
            raise RepositoryMissing(f"no restic repository at {repo.url}",
                                    hint=f"run `drtool init-repo {handle.name}` first")
        handle.restic.init()
        info["initialised"] = True
        if on_event:
            on_event(Notice(f"initialised a new restic repository at {repo.url}"))
    return info


def state_path(settings: Settings, *parts: str) -> Path:
    path = settings.state_dir.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def signed(settings: Settings, record: dict) -> dict:
    """The record with an Ed25519 signature, so an auditor can trust the offsite copy."""
    from drtool.crypto.signing import load_or_create_signing_key, sign_record

    return sign_record(record, load_or_create_signing_key(settings.state_dir))


def publish_offsite(handle: RepoHandle, relpath: str, record: dict, extra: dict, on_event=None) -> None:  # noqa: ANN001
    """Put a signed record next to the repository. A failure is noted in `extra`, never raised:
    the bucket may be the very thing that is down, and the local catalog already has the record."""
    try:
        handle.offsite().put_json(relpath, signed(handle.settings, record))
        extra["offsite_record"] = True
    except Exception as exc:  # noqa: BLE001
        extra["offsite_record"] = False
        extra["offsite_record_error"] = str(exc)[:300]
        if on_event:
            on_event(Notice(f"record kept locally only: {str(exc)[:200]}"))
