"""Keeping a recovered server running after a reboot: a systemd unit, and the plain commands.

A recovered server is started by drtool and keeps running when drtool exits,
but nothing starts it again after a reboot. `write_service` puts a unit file
beside the server's data (drtool does not install it: the admin links it with
`systemctl link` once the server drtool started is stopped, so two servers
never fight over one data directory), and `ServiceInfo` says how to start and
stop it by hand on a machine without systemd (e.g. from cron `@reboot`).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceInfo:
    unit_file: Path
    unit_name: str
    start: list[str]            # argv that starts the server by hand
    stop: list[str]

    def instructions(self) -> list[str]:
        return [
            f"  start by hand: {shlex.join(self.start)}",
            f"  stop:          {shlex.join(self.stop)}",
            f"  after reboots: {shlex.join(self.stop)} && systemctl link {self.unit_file} "
            f"&& systemctl enable --now {self.unit_name}",
        ]

    def to_dict(self) -> dict[str, object]:
        return {"unit_file": str(self.unit_file), "unit": self.unit_name, "start": self.start, "stop": self.stop}


def unit_name(kind: str, name: str) -> str:
    return f"drtool-recovered-{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.service"


def postgres_unit(description: str, user: str, bin_dir: str, data_dir: Path) -> str:
    """Type=notify: Debian's postgres tells systemd when it accepts connections."""
    return _unit(description, user, "notify", f"{bin_dir}/postgres -D {data_dir}",
                 ["ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "KillSignal=SIGINT",
                  "TimeoutSec=infinity"])


def mariadb_unit(description: str, user: str, mariadbd: str, defaults_file: Path) -> str:
    return _unit(description, user, "notify", f"{mariadbd} --defaults-file={defaults_file}",
                 ["TimeoutSec=infinity", "LimitNOFILE=32768"])


def _unit(description: str, user: str, kind: str, exec_start: str, extra: list[str]) -> str:
    return "\n".join([
        "# Written by `drtool recover`: keeps the recovered server running after a reboot.",
        "[Unit]",
        f"Description={description}",
        "After=network.target",
        "",
        "[Service]",
        f"Type={kind}",
        f"User={user}",
        f"ExecStart={exec_start}",
        *extra,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def write_service(directory: Path, name: str, text: str, start: list[str], stop: list[str]) -> ServiceInfo:
    path = Path(directory) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return ServiceInfo(path, name, start, stop)
