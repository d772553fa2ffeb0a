"""Remote hosts: trust a host key once, and check what each host can do.

`scan_host(settings, name)` fetches the key a host offers (without logging
in) and says whether known_hosts already trusts it; `trust_host()` records
exactly that key. `check_hosts()` logs in, finds the programs policies need
(pg_dump, mariadb-dump, restic...) and reports their versions and any gaps.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.errors import DrtoolError
from drtool.remote import ssh_runner
from drtool.remote.ssh import HostKey, SshRunner

# How to ask each program for its version.
VERSION_ARGS: dict[str, list[str]] = {
    "pg_dump": ["--version"], "pg_dumpall": ["--version"], "pg_restore": ["--version"], "psql": ["--version"],
    "mariadb-dump": ["--version"], "mysqldump": ["--version"], "mariadb": ["--version"], "mysql": ["--version"],
    "restic": ["version"], "tar": ["--version"], "sqlite3": ["--version"],
}
# Shown for every host, even when no policy uses it yet.
REPORTED = ("pg_dump", "mariadb-dump", "restic")


# ------------------------------------------------------------------ trust

@dataclass
class TrustOffer:
    host: str
    where: str
    key: HostKey
    status: str                          # trusted | unknown | changed
    recorded: list[HostKey]
    known_hosts: Path


def scan_host(settings: Settings, name: str) -> TrustOffer:
    with ssh_runner(settings, name) as runner:
        key, status, recorded = runner.scan_host_key()
        return TrustOffer(name, runner.where, key, status, recorded, runner.known_hosts)


def trust_host(settings: Settings, offer: TrustOffer) -> None:
    """Record the key the admin was shown (not a fresh scan, which could differ)."""
    with ssh_runner(settings, offer.host) as runner:
        runner.trust(offer.key)


# ------------------------------------------------------------------ check

@dataclass
class Tool:
    program: str
    path: str | None
    version: str | None = None


@dataclass
class PolicyNeeds:
    policy: str
    missing: list[str]                   # each entry: "pg_dump" or "restic or tar"

    @property
    def ok(self) -> bool:
        return not self.missing


@dataclass
class HostReport:
    host: str
    where: str
    error: str | None = None
    tools: dict[str, Tool] = field(default_factory=dict)
    policies: list[PolicyNeeds] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(p.ok for p in self.policies)


def policy_requirements(policy: Policy) -> list[tuple[str, ...]]:
    """What a policy needs on its host: each entry lists alternatives, any one will do.

    Programs are absolute paths when the source names a bin_dir.
    """
    needs: list[tuple[str, ...]] = []
    for source in policy.sources:
        spec = source.spec
        if source.kind == "postgres":
            tools = ["pg_dump", "psql"] + (["pg_dumpall"] if spec.globals else [])  # type: ignore[union-attr]
            bin_dir = spec.bin_dir  # type: ignore[union-attr]
            needs += [(posixpath.join(bin_dir, t) if bin_dir else t,) for t in tools]
        elif source.kind == "mariadb":
            needs += [("mariadb-dump", "mysqldump"), ("mariadb", "mysql")]
        elif source.kind == "sqlite":
            needs.append(("sqlite3",))
        elif source.kind == "files":
            # restic runs remotely when present, otherwise a tar stream comes back.
            needs.append(("restic", "tar"))
    return list(dict.fromkeys(needs))


def missing_needs(needs: list[tuple[str, ...]], found: dict[str, Tool]) -> list[str]:
    return [" or ".join(alts) for alts in needs if not any(found.get(a) and found[a].path for a in alts)]


# One round trip for all programs: `name|version-arg` in, `name<TAB>path<TAB>first line` out.
PROBE_SCRIPT = (
    'for spec in "$@"; do prog=${spec%%|*}; arg=${spec#*|}; '
    'path=$(command -v "$prog") || { printf "%s\\t\\t\\n" "$prog"; continue; }; '
    'ver=$("$path" $arg 2>/dev/null </dev/null | head -n 1); '
    'printf "%s\\t%s\\t%s\\n" "$prog" "$path" "$ver"; done'
)


def probe_tools(runner: SshRunner, programs: list[str]) -> dict[str, Tool]:
    specs = [f"{p}|{VERSION_ARGS.get(posixpath.basename(p), ['--version'])[0]}" for p in programs]
    result = runner.run(["sh", "-c", PROBE_SCRIPT, "drtool-probe", *specs], timeout=120)
    return parse_probe(result.text, programs)


def parse_probe(text: str, programs: list[str]) -> dict[str, Tool]:
    tools = {p: Tool(p, None) for p in programs}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in tools:
            prog, path, version = parts
            tools[prog] = Tool(prog, path or None, version.strip() or None)
    return tools


def check_host(settings: Settings, name: str) -> HostReport:
    runner = ssh_runner(settings, name)
    report = HostReport(name, runner.where)
    users = [p for p in settings.policies.values() if p.host == name]
    needs = {p.name: policy_requirements(p) for p in users}
    programs = list(dict.fromkeys([*REPORTED, *(a for n in needs.values() for alts in n for a in alts)]))
    try:
        with runner:
            runner.connect()
            report.tools = probe_tools(runner, programs)
    except DrtoolError as exc:
        report.error = str(exc)
        return report
    report.policies = [PolicyNeeds(p, missing_needs(n, report.tools)) for p, n in needs.items()]
    return report


def check_hosts(settings: Settings, name: str | None = None) -> list[HostReport]:
    """One report per host (or only `name`); connection problems are reported, not raised."""
    names = [name] if name else sorted(settings.config.hosts)
    if name:
        ssh_runner(settings, name).close()   # an unknown name is a usage error, raised here
    return [check_host(settings, n) for n in names]
