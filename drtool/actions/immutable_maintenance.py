"""forget/prune on immutable repositories.

Append-only (a REST server that refuses deletes): this machine's credentials cannot forget or
prune, by design, so drtool refuses before restic spends a minute retrying 403 answers. The
privileged path is `repositories.NAME.maintenance:` (another URL to the same repository, e.g.
the same rest-server started without --append-only on a port only the maintenance machine
reaches, and its own credentials), used by forget and prune only: configure it on a machine
that is not the production server, and run `drtool forget` there.

Object Lock (S3): forget and prune work with the production credentials, but on a versioned
bucket nothing is freed at once: every deleted pack, index and snapshot becomes a delete marker
over a version that stays locked. `Freed` reports what prune really removed from the current
view, that 0 bytes were freed now, and when the lifecycle rule will expire those versions
(checked here; drtool sets it when it prepares the bucket). Prune writes new packs and indexes,
so a lock extension follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from drtool.actions.common import RepoHandle, open_repo
from drtool.catalog import utcnow
from drtool.config.loader import Settings
from drtool.engine.restic import RepoAccess, Restic, repo_access
from drtool.errors import UsageError


class MaintenanceRefused(UsageError):
    """forget/prune asked of an append-only repository without a maintenance path."""


def maintenance_handle(settings: Settings, repo_name: str) -> RepoHandle:
    """The repository as forget/prune reach it: the maintenance path when there is one; the
    production one otherwise, except for an append-only repository (MaintenanceRefused)."""
    repo = settings.config.repositories[repo_name]
    if repo.maintenance is None:
        if repo.append_only:
            raise MaintenanceRefused(
                f"repository {repo_name} ({repo.url}) is append-only: the credentials of this machine cannot "
                "forget or prune, by design (that is what protects the backups from ransomware on it)",
                hint=f"run forget from a maintenance machine whose drtool.yaml gives repositories.{repo_name}."
                     "maintenance: {url: rest:http://HOST:PORT/PATH (the server without --append-only), "
                     "rest: {username, password}}; never put those credentials on this server")
        return open_repo(settings, repo_name)
    handle = open_repo(settings, repo_name)
    access = maintenance_access(settings, repo_name)
    return RepoHandle(repo_name, Restic(access, cache_dir=handle.restic.cache_dir,
                                        wait_unavailable=repo.wait_unavailable, lock_wait=repo.lock_wait),
                      settings)


def maintenance_access(settings: Settings, repo_name: str) -> RepoAccess:
    repo = settings.config.repositories[repo_name]
    m = repo.maintenance
    assert m is not None
    base = repo_access(settings, repo_name)
    url = m.url or repo.url
    env = {k: v for k, v in base.env.items() if k != "RESTIC_REPOSITORY" or url == repo.url}
    if m.s3 is not None:
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        if m.s3.access_key_id is not None:
            env["AWS_ACCESS_KEY_ID"] = m.s3.access_key_id.resolve().reveal()
        if m.s3.secret_access_key is not None:
            env["AWS_SECRET_ACCESS_KEY"] = m.s3.secret_access_key.resolve().reveal()
        env["AWS_DEFAULT_REGION"] = m.s3.region
    if m.rest is not None and m.rest.username:
        from drtool.storage.rest import authenticated_url
        env["RESTIC_REPOSITORY"] = authenticated_url(url, m.rest.username,
                                                     m.rest.password.resolve() if m.rest.password else None)
    return replace(base, url=url, env=env)


@dataclass
class Freed:
    """What a forget/prune really freed on an Object Lock repository (nothing, at once)."""

    handle: RepoHandle
    store: Any = None
    before: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, handle: RepoHandle) -> "Freed":
        freed = cls(handle)
        if handle.repository.object_lock:
            from drtool.storage.lock_rules import needs_lock
            from drtool.storage.s3 import store_from_repository
            freed.store = store_from_repository(handle.repository)
            freed.before = {o.key: o.size for o in freed.store.current_objects([freed.store.location.repo_prefix])
                            if needs_lock(freed.store.location, o.key)}
        return freed

    def finish(self, details: dict[str, Any], *, policy: str, trigger: str) -> None:
        if self.store is None:
            return
        after = {o.key for o in self.store.current_objects([self.store.location.repo_prefix])}
        removed = [k for k in self.before if k not in after]
        lock = self.store.lock
        lifecycle = self.store.lifecycle_state()
        expire = utcnow() + timedelta(days=lock.noncurrent_days)
        details["immutable"] = {
            "removed_objects": len(removed), "removed_bytes": sum(self.before[k] for k in removed),
            "freed_now_bytes": 0, "locked_versions_kept": len(removed),
            "lifecycle": lifecycle["state"],
            "expire_by": expire.isoformat() if lifecycle["state"] == "set" else None,
            "note": (f"versioned bucket: the {len(removed)} removed object(s) became delete markers over versions "
                     f"locked up to {lock.days + lock.renew_days} more days; "
                     + (f"the lifecycle rule expires them by {expire:%Y-%m-%d}" if lifecycle["state"] == "set" else
                        "NO lifecycle rule expires them: they are kept (and billed) until removed by hand; set the "
                        f"rule {', '.join(r['ID'] for r in lifecycle['rules'])} (drtool init-repo sets it when the "
                        "credentials may)"))}
        from drtool.actions.follow_ups import lock_summary
        details.setdefault("follow_ups", []).append(
            lock_summary(self.handle.settings, self.handle.name, policy, trigger, None))
