"""Escrow keys against real restic repositories: a local directory and one on rclone S3."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Self

import pytest

from drtool.engine.restic import RepoAccess, Restic
from drtool.engine.restic_keys import add_key, list_keys, remove_key
from drtool.errors import RepositoryError
from drtool.secrets import Secret

pytestmark = pytest.mark.integration

CURRENT = "daily-password-4711"
ESCROW = "escrow-password-0815-kit"


def _init(url: str, env: dict[str, str]) -> RepoAccess:
    access = RepoAccess(url, Secret(CURRENT), env)
    Restic(access).init()
    return access


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> RepoAccess:
    root = tmp_path_factory.mktemp("keys")
    return _init(str(root / "repo"), {"RESTIC_CACHE_DIR": str(root / "cache")})


@pytest.fixture()
def s3_repo(s3_server, bucket, tmp_path) -> RepoAccess:
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    return _init(s3_server.repo_url(bucket, "keys"), env)


class ArgvWatcher:
    """Samples /proc while restic runs: argv and environment of every restic on this repository."""

    def __init__(self, url: str) -> None:
        self.marker = f"RESTIC_REPOSITORY={url}".encode()
        self.seen: list[tuple[bytes, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                    if self.marker in environ.split(b"\0"):
                        self.seen.append((Path(f"/proc/{pid}/cmdline").read_bytes(), environ))
                except OSError:
                    continue
            time.sleep(0.02)


def _opens_with(access: RepoAccess, password: str) -> list:
    return Restic(RepoAccess(access.url, Secret(password), access.env)).snapshots()


def _escrow_cycle(access: RepoAccess, *, check_lists: bool) -> None:
    """Add an escrow key, use it, revoke it, and watch that secrets never reach argv or env."""
    with ArgvWatcher(access.url) as watcher:
        key_id = add_key(access, Secret(ESCROW))
    assert watcher.seen, "the watcher never saw restic running; the argv check proved nothing"
    for cmdline, environ in watcher.seen:
        assert cmdline.split(b"\0")[0].endswith(b"restic")
        for secret in (ESCROW.encode(), CURRENT.encode()):
            assert secret not in cmdline and secret not in environ

    if check_lists:
        ids = {k["id"] for k in list_keys(access)}
        assert key_id in ids and len(ids) == 2
    assert _opens_with(access, ESCROW) == []            # the escrow password opens the repository

    remove_key(access, key_id)
    if check_lists:
        assert key_id not in {k["id"] for k in list_keys(access)}
    with pytest.raises(RepositoryError, match="wrong password or no key found"):
        _opens_with(access, ESCROW)                      # revoked: a clear error, not a hang or a traceback


def test_escrow_key_cycle_on_local_repository(local_repo: RepoAccess) -> None:
    _escrow_cycle(local_repo, check_lists=True)


def test_escrow_key_cycle_on_s3_repository(s3_repo: RepoAccess) -> None:
    # Same cycle over S3, fewer round trips: each restic start over S3 costs seconds.
    _escrow_cycle(s3_repo, check_lists=False)


def test_add_key_with_wrong_current_password_fails_and_adds_nothing(local_repo: RepoAccess) -> None:
    before = list_keys(local_repo)
    wrong = RepoAccess(local_repo.url, Secret("not-the-password-1"), local_repo.env)
    started = time.monotonic()
    with pytest.raises(RepositoryError, match="wrong password or no key found") as info:
        add_key(wrong, Secret(ESCROW))
    assert time.monotonic() - started < 30      # stopped at the first refusal, no 3 tries / timeout
    assert ESCROW not in str(info.value) and "not-the-password-1" not in str(info.value)
    assert list_keys(local_repo) == before


def test_add_key_on_missing_repository_says_so(tmp_path: Path) -> None:
    access = RepoAccess(str(tmp_path / "nothing-here"), Secret(CURRENT), {"RESTIC_CACHE_DIR": str(tmp_path / "c")})
    with pytest.raises(RepositoryError, match="no restic repository at"):
        add_key(access, Secret(ESCROW))


def test_add_key_times_out_cleanly(local_repo: RepoAccess) -> None:
    with pytest.raises(RepositoryError, match="timed out"):
        add_key(local_repo, Secret(ESCROW), timeout=0.3)
    assert len(list_keys(local_repo)) == 1


def test_add_key_refuses_the_current_password_again(local_repo: RepoAccess) -> None:
    with pytest.raises(RepositoryError, match="equals the current password"):
        add_key(local_repo, Secret(CURRENT))


def test_remove_current_key_is_refused(local_repo: RepoAccess) -> None:
    (current,) = [k["id"] for k in list_keys(local_repo) if k["current"]]
    with pytest.raises(RepositoryError, match="used to open the repository"):
        remove_key(local_repo, current)


def test_remove_unknown_key_says_so(local_repo: RepoAccess) -> None:
    with pytest.raises(RepositoryError, match="has no key deadbeef"):
        remove_key(local_repo, "deadbeef")


def test_remove_key_rejects_option_like_ids(local_repo: RepoAccess) -> None:
    with pytest.raises(RepositoryError, match="not a restic key id"):
        remove_key(local_repo, "--help")
