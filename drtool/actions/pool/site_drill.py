"""One site's fire drill in the pool, with nothing but that site's kit.

    run_site_drill(fleet, site, drill, job_dir, drill_id=..., extra=...) -> DrillReport

The central site holds, per site, a recovery kit made for the drill (`kit create --custodian
drill --with-credentials`) and its passphrase reference; nothing else of the site. The worker:

1. opens the kit and, with its escrow key, reads the site's signed configuration bundle from
   the site's repository (the policy's sources), checking it against the kit's key and the
   fleet file's key for the site (a kit of another office is refused);
2. runs the ordinary fire drill (drtool.actions.fire_drill): a sandbox inside the job's leased
   directory with only the kit, `drtool recover` there, the drill's checks, teardown;
3. records it through the one run lifecycle, in a state dir of its own inside the job's
   directory (signed with the pool's key, which the fleet file lists in `trusted_keys`), and
   publishes the signed report to the site's bucket (`drills/<id>.json`) with the kit's access.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from drtool.actions.common import RepoHandle
from drtool.actions.drill.model import DrillReport
from drtool.config.fleet import Fleet, Site
from drtool.config.loader import Settings
from drtool.config.models import Config, Playbook, Repository
from drtool.config.secrets import SecretRef
from drtool.errors import UsageError


def pool_key_dir(fleet: Fleet) -> Path:
    from drtool.actions.pool import KEY_DIR
    return fleet.state_path / KEY_DIR


def pool_public_key(fleet: Fleet) -> str:
    """The pool's record-signing public key (made on first use, 0600): put it in `trusted_keys`."""
    from drtool.crypto.signing import load_or_create_signing_key, public_key_b64

    fleet.state_path.mkdir(parents=True, exist_ok=True, mode=0o711)
    return public_key_b64(load_or_create_signing_key(pool_key_dir(fleet)))


def run_site_drill(fleet: Fleet, site: Site, drill: Playbook, job_dir: Path, *, drill_id: str,
                   extra: dict[str, Any]) -> DrillReport:
    from drtool.actions.fire_drill import run_fire_drill

    settings, handle = _site_settings(fleet, site, drill, job_dir)
    return run_fire_drill(settings, drill, trigger="pool", handle=handle, sandbox_parent=job_dir,
                          drill_id=drill_id, extra=extra)


def _site_settings(fleet: Fleet, site: Site, drill: Playbook, job_dir: Path) -> tuple[Settings, RepoHandle]:
    """Settings holding only this drill's policy (from the site's signed bundle), and a repository
    handle with the kit's access."""
    from drtool.actions.bundle import read_config_bundle
    from drtool.actions.fire_drill import _beside
    from drtool.actions.kit_open import open_kit_file, open_repository

    spec = drill.from_nothing
    assert spec is not None
    passphrase = spec.passphrase.resolve().reveal() if spec.passphrase else None
    identity = _beside(drill, spec.identity) if spec.identity else None
    kit = open_kit_file(_beside(drill, spec.kit), passphrase, identity=identity)
    if kit.signing_public_key != site.signing_key:
        raise UsageError(f"the kit of drill {drill.name!r} was not made by site {site.name!r}: its signing key "
                         "differs from the fleet file's signing_key for the site",
                         hint="use a kit of this site (`drtool kit create`), or correct signing_key")
    work = job_dir / "work"
    work.mkdir(mode=0o700)
    bundle_repo = kit.config_bundle.repository if kit.config_bundle else kit.repositories[0].name
    restic = open_repository(kit.repository(bundle_repo), work / "restic-cache")
    tags = kit.config_bundle.tags if kit.config_bundle else ("drtool", "kind=config")
    bundle = read_config_bundle(restic, tags, host=kit.hostname)
    bundle.verify(kit.signing_public_key)
    policy = bundle.settings(work / "config").policy(drill.policy)
    if policy.repository != bundle_repo:
        restic = open_repository(kit.repository(policy.repository), work / "restic-cache")
    state = job_dir / "state"
    _install_pool_key(fleet, state)
    config = Config(state_dir=str(state), hostname=kit.hostname, notifications=fleet.notifications,
                    # Never resolved: the handle below carries the kit's escrow access to the repository.
                    repositories={policy.repository: Repository(url=restic.access.url,
                                                                password=SecretRef(env="DRTOOL_POOL_KIT_ACCESS"))})
    settings = Settings(Path(fleet.path or "fleet.yaml"), config, {policy.name: policy}, {drill.name: drill})
    return settings, RepoHandle(policy.repository, restic, settings)


def _install_pool_key(fleet: Fleet, state: Path) -> None:
    from drtool.crypto.signing import KEY_FILE

    pool_public_key(fleet)                       # made once, on first use
    state.mkdir(mode=0o700)
    target = state / KEY_FILE
    shutil.copyfile(pool_key_dir(fleet) / KEY_FILE, target)
    target.chmod(0o600)
