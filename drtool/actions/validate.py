"""Use case: `drtool validate`: every problem of the setup at once, each with file:line:col.

Three layers, each reported together with the others:
1. the files (always): YAML, types, unknown keys, names, durations, zones, schedules,
   references between files (drtool.config.loader.load_all);
2. this machine (unless --static): every secret reference resolves (a file exists,
   is mode 0600 and not empty; an environment variable is set; a command exits 0
   within SECRET_COMMAND_TIMEOUT), and the local paths a policy reads exist. No
   value is ever printed. Paths of a policy with `host:` live on that server:
   they are skipped here with a note (`drtool hosts check` reaches the server);
3. the network (unless --offline or --static): the S3 endpoints and SSH hosts
   accept a TCP connection within NETWORK_TIMEOUT.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from drtool.config.loader import Loaded, load_all
from drtool.config.loader import loc_text
from drtool.config.secrets import SecretRef, secret_refs
from drtool.config.yaml_doc import read_document
from drtool.errors import ConfigError

SECRET_COMMAND_TIMEOUT = 15.0
NETWORK_TIMEOUT = 3.0


@dataclass
class Report:
    config: Path
    policies: list[str]
    playbooks: list[str]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    secrets_checked: int = 0

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"config": str(self.config), "policies": self.policies, "playbooks": self.playbooks,
                "valid": self.valid, "problems": self.problems, "notes": self.notes,
                "secrets_checked": self.secrets_checked}


def validate_setup(config_path: str | None, *, offline: bool = False, static: bool = False) -> Report:
    loaded = load_all(config_path)
    report = Report(loaded.path, sorted(loaded.policies), sorted(loaded.playbooks), list(loaded.problems))
    locations = s3_locations(loaded, report)
    if static:
        report.notes.append("--static: secrets, paths and servers were not checked")
        return report
    _check_secrets(loaded, report)
    _check_paths(loaded, report)
    if offline:
        report.notes.append("--offline: S3 endpoints and SSH hosts were not contacted")
    elif loaded.config is not None:
        _check_network(loaded, report, locations)
    return report


# ---------------------------------------------------------------- secrets

def _models(loaded: Loaded) -> list[tuple[Any, str]]:
    items: list[tuple[Any, str]] = [(loaded.config, str(loaded.path))] if loaded.config is not None else []
    items += [(p, p.path or "?") for p in loaded.policies.values()]
    items += [(p, p.path or "?") for p in loaded.playbooks.values()]
    return items


def _check_secrets(loaded: Loaded, report: Report) -> None:
    problems, report.secrets_checked = secret_ref_problems(_models(loaded))
    report.problems += problems


def secret_ref_problems(models: Iterable[tuple[Any, str]]) -> tuple[list[str], int]:
    """Every secret reference inside (model, file) pairs resolved once: the problems, each at the
    file:line:col of every place it is used, and how many references there were."""
    results: dict[str, str | None] = {}
    problems: list[str] = []
    for model, path in models:
        for loc, ref in secret_refs(model):
            key = ref.model_dump_json()
            if key not in results:
                results[key] = secret_problem(ref)
            if results[key]:
                problems.append(f"{position(path, loc)}: at '{loc_text(loc)}': {results[key]}")
    return problems, len(results)


def secret_problem(ref: SecretRef) -> str | None:
    """What stops this reference from resolving, in words that never include its value."""
    if ref.env is not None:
        if not os.environ.get(ref.env):
            return f"secret env:{ref.env} is not set (or empty) in this environment"
        return None
    if ref.file is not None:
        return _secret_file_problem(Path(ref.file))
    try:
        ref.resolve(timeout=SECRET_COMMAND_TIMEOUT)
    except ConfigError as exc:
        return exc.message
    return None


def _secret_file_problem(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"secret file {path} does not exist; create it with `install -m 600 /dev/null {path}`, then write the secret"
    except OSError as exc:
        return f"secret file {path} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"secret file {path} is not a regular file"
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"secret file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 {path}"
    try:
        with path.open("rb") as handle:
            empty = not handle.read(4096).strip()
    except OSError as exc:
        return f"secret file {path} cannot be read: {exc.strerror}"
    return f"secret file {path} is empty" if empty else None


# ---------------------------------------------------------------- paths

def _check_paths(loaded: Loaded, report: Report) -> None:
    for policy in loaded.policies.values():
        if policy.host:
            report.notes.append(f"policy {policy.name!r}: its paths are on host {policy.host!r} and were not "
                                "checked here (`drtool hosts check` connects to it)")
            continue
        for i, source in enumerate(policy.sources):
            paths = source.files.paths if source.files else [source.sqlite.path] if source.sqlite else []
            for j, raw in enumerate(paths):
                if not os.path.lexists(raw):
                    loc = ("sources", i, "files", "paths", j) if source.files else ("sources", i, "sqlite", "path")
                    report.problems.append(f"{position(policy.path or '?', loc)}: at '{loc_text(loc)}': "
                                           f"{raw} does not exist on this machine (a backup would miss it)")


# ---------------------------------------------------------------- network

def s3_locations(loaded: Loaded, report: Report) -> dict[str, Any]:
    """Each S3 repository's parsed URL; a URL restic would refuse is a problem (checked even with --static)."""
    from drtool.errors import StorageError
    from drtool.storage.s3_url import parse_s3_url

    found: dict[str, Any] = {}
    for name, repo in (loaded.config.repositories.items() if loaded.config else ()):
        if repo.is_s3:
            try:
                found[name] = parse_s3_url(repo.url)
            except StorageError as exc:
                report.problems.append(f"{position(str(loaded.path), ('repositories', name, 'url'))}: "
                                       f"at 'repositories.{name}.url': {exc.message}")
    return found


def _check_network(loaded: Loaded, report: Report, locations: dict[str, Any]) -> None:
    config = loaded.config
    assert config is not None
    for name, location in locations.items():
        parts = urlsplit(location.endpoint_url)
        problem = tcp_problem(parts.hostname or "", parts.port or (443 if location.secure else 80))
        if problem:
            report.problems.append(f"{position(str(loaded.path), ('repositories', name, 'url'))}: at "
                                   f"'repositories.{name}.url': S3 endpoint {location.endpoint_url} {problem}")
    for name, host in config.hosts.items():
        problem = tcp_problem(host.address, host.port)
        if problem:
            report.problems.append(f"{position(str(loaded.path), ('hosts', name, 'address'))}: at "
                                   f"'hosts.{name}.address': SSH host {host.address}:{host.port} {problem}")


def tcp_problem(host: str, port: int, timeout: float = NETWORK_TIMEOUT) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"did not answer within {timeout:g}s"
    except OSError as exc:
        return f"cannot be reached ({exc.strerror or type(exc).__name__})"


# ---------------------------------------------------------------- positions

def position(path: str, loc: tuple) -> str:
    try:
        return read_document(Path(path)).where(loc)
    except ConfigError:
        return f"{path}:1:1"
