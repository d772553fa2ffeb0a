"""Use case: `drtool fleet validate`: the fleet file's problems at once, before `fleet status`
or the drill pool meets them one at a time.

The file's own checks (YAML, types, unknown keys, site names, signing keys, repository URLs,
zone) come from loading it: any problem there is a ConfigError with file:line:col. Unless
`static`, every secret reference then resolves here, with the rules of `drtool validate`
(a file exists, is 0600 and not empty; a variable is set; a command exits 0). No value is
ever printed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.actions.validate import secret_ref_problems
from drtool.config.fleet import load_fleet


@dataclass
class FleetReport:
    path: Path
    sites: list[str]
    problems: list[str] = field(default_factory=list)
    secrets_checked: int = 0
    static: bool = False

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"fleet": str(self.path), "sites": self.sites, "valid": self.valid, "problems": self.problems,
                "secrets_checked": self.secrets_checked, "static": self.static}


def validate_fleet(option: str | None, *, static: bool = False) -> FleetReport:
    fleet = load_fleet(option)
    assert fleet.path is not None            # the loader records the file it read
    path = Path(fleet.path)
    report = FleetReport(path, [site.name for site in fleet.sites], static=static)
    if static:
        return report
    report.problems, report.secrets_checked = secret_ref_problems([(fleet, str(path))])
    return report
