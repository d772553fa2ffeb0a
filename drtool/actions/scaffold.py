"""Use case: write a commented starting configuration."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from drtool.errors import UsageError

FILES = {
    "drtool.yaml": "drtool.yaml",
    "policies/siak.yaml": "policy.yaml",
    "playbooks/siak-drill.yaml": "playbook.yaml",
}


def scaffold(directory: Path, *, force: bool = False) -> list[Path]:
    targets = {directory / rel: template for rel, template in FILES.items()}
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} already exists; nothing was written", hint="pass --force to overwrite")
    written = []
    for path, template in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(resources.files("drtool.templates").joinpath(template).read_text())
        written.append(path)
    return written
