"""Where a program runs: this machine (LocalRunner) or a configured host over SSH.

`runner_for(settings, name)` is the one place that turns `host: NAME` in a
policy or drill step into a Runner. paramiko is only imported when an SSH
connection is actually opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from drtool.config.models import Host
from drtool.errors import ConfigError
from drtool.execute import LocalRunner, Runner

if TYPE_CHECKING:  # pragma: no cover - typing only
    from drtool.config.loader import Settings
    from drtool.remote.ssh import SshRunner


def known_hosts_path(settings: Settings) -> Path:
    """The default known_hosts file: <state_dir>/known_hosts (a host may name its own)."""
    return settings.state_dir / "known_hosts"


def ssh_runner(settings: Settings, host_name: str) -> SshRunner:
    from drtool.remote.ssh import SshRunner

    hosts = dict(settings.config.hosts)
    if host_name not in hosts:
        known = ", ".join(sorted(hosts)) or "none"
        raise ConfigError(f"no host named {host_name!r} in {settings.path} (known: {known})",
                          hint="add it under hosts: in drtool.yaml")
    hosts = {name: _resolve_paths(host, settings.path.parent) for name, host in hosts.items()}
    return SshRunner(hosts[host_name], known_hosts=known_hosts_path(settings), hosts=hosts, host_name=host_name)


def _resolve_paths(host: Host, base: Path) -> Host:
    """Relative key_file / known_hosts are relative to drtool.yaml, not to wherever drtool runs."""
    update = {k: str(base / v) for k in ("key_file", "known_hosts")
              if (v := getattr(host, k)) and not Path(v).expanduser().is_absolute() and not v.startswith("~")}
    return host.model_copy(update=update) if update else host


def runner_for(settings: Settings, host_name: str | None) -> Runner:
    """LocalRunner for None, else an SshRunner for hosts.<host_name> (connects on first use)."""
    if host_name is None:
        return LocalRunner()
    return ssh_runner(settings, host_name)
