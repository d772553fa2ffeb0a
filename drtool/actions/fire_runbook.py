"""The runbook variant of the fire drill: the generated runbook, in bash, in the sandbox.

The new machine's servers are empty scratch instances (drill tuning: they are
thrown away); the runbook gets only the kit (and the custodian's identity
when the kit is sealed to a key), where to restore, and how to reach those
empty servers - exactly what an operator would set. PATH holds no drtool.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.actions.kit_open import KitKey
from drtool.actions.sandbox import Sandbox, bare_path
from drtool.config.loader import Settings
from drtool.config.models import Policy


@dataclass
class EmptyServers:
    postgres: Any = None                  # ScratchPostgres, when the policy has PostgreSQL sources
    mariadb: Any = None                   # ScratchMariadb, when it has MariaDB sources
    box: Sandbox | None = None
    extra_path: list[str] = field(default_factory=list)

    def restored(self, policy: Policy) -> dict[str, Any]:
        """What the checks reach after the runbook: the servers it restored into, the restore root."""
        from drtool.actions.select import SnapshotSet
        from drtool.catalog import utcnow
        from drtool.actions.drill.context import Restored
        from drtool.execute import LocalRunner
        from drtool.sources import database_source
        from drtool.sources.base import DbTarget

        assert self.box is not None
        out: dict[str, Any] = {}
        for source in policy.sources:
            chosen = SnapshotSet(source.name, "runbook", utcnow())
            if source.kind == "files":
                out[source.name] = Restored(source, chosen, directory=self.box.restore_root)
                continue
            if source.kind == "sqlite":
                target = DbTarget(kind="sqlite", host=None, path=self.box.restore_root / source.spec.path.lstrip("/"))
                names = [Path(source.spec.path).name]
            else:
                server = self.postgres if source.kind == "postgres" else self.mariadb
                target, names = server.target(), list(source.spec.database_names)
            out[source.name] = Restored(source, chosen, target=target, databases=names,
                                        db=database_source(source, LocalRunner()))
        return out


def empty_servers(policy: Policy, box: Sandbox, stack: ExitStack) -> EmptyServers:
    kinds = {s.kind for s in policy.sources}
    servers = EmptyServers(box=box)
    if "postgres" in kinds:
        from drtool.scratch.postgres import ScratchPostgres
        servers.postgres = stack.enter_context(ScratchPostgres(base_dir=str(box.servers)))
        servers.extra_path.append(servers.postgres.bin_dir)
    if "mariadb" in kinds:
        from drtool.scratch.mariadb import ScratchMariadb
        servers.mariadb = stack.enter_context(ScratchMariadb(base_dir=str(box.servers)))
    return servers


def runbook_script(settings: Settings, policy: Policy, box: Sandbox, host: str | None) -> tuple[Path, str]:
    """The runbook as drtool generates it (the same text the configuration bundle carries)."""
    from drtool.actions.common import restic_host
    from drtool.actions.runbook import extract_script, render_runbook
    from drtool.tools import require

    for tool in ("bash", "age", "jq", "restic"):     # what the runbook itself cannot install in a sandbox
        require(tool, why="the runbook variant of the fire drill runs the bare tools")
    used = host or restic_host(settings)
    text = render_runbook(policy, settings.config.repositories[policy.repository], host=used)
    (box.home / f"{policy.name}-runbook.md").write_text(text)
    script = box.home / "recover.sh"
    script.write_text(extract_script(text))
    return script, used


def runbook_env(policy: Policy, box: Sandbox, kit: Path, key: KitKey, servers: EmptyServers) -> dict[str, str]:
    env = box.env(bare_path(servers.extra_path))
    env.update({"KIT": str(kit), "RECOVERY_DIR": str(box.work), "RESTORE_ROOT": str(box.restore_root)})
    if key.identity_file is not None:
        identity = box.home / "identity"
        identity.write_bytes(Path(key.identity_file).read_bytes())
        identity.chmod(0o600)
        env["AGE_IDENTITY"] = str(identity)
    if servers.postgres is not None:
        env.update({"PGHOST": "127.0.0.1", "PGPORT": str(servers.postgres.port), "PGUSER": "postgres"})
    if servers.mariadb is not None:
        # The empty scratch server's own generated password (a throwaway, not one of this machine's).
        env.update({"MARIADB_HOST": "127.0.0.1", "MARIADB_PORT": str(servers.mariadb.port),
                    "MARIADB_USER": "root", "MYSQL_PWD": servers.mariadb.password.reveal()})
    os.makedirs(box.work, mode=0o700, exist_ok=True)
    return env
