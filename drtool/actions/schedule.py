"""Use cases: `drtool schedule show` and `drtool schedule export --cron`; what every export shares.

The exports (here: cron; systemd units in drtool.actions.systemd) are for sites
that prefer systemd timers or cron to `drtool daemon`. They run the same CLI
commands the daemon's jobs run, in the same effective time zone
(drtool.timezones), and rotate `n/N` check subsets the same way
(`drtool check --rotate`, position kept in state_dir). What they cannot do that
the daemon does: keep a drill off its policy's running backup (the engine's
policy lock still keeps one run per policy).

Secrets: `file:` and `command:` references work unchanged under systemd and cron
(drtool runs as root and reads them itself); `env:` references need the
variables, which a unit or a cron line gets from one root-only 0600 file
(`EnvironmentFile=` / `. FILE`). drtool names the variables and never writes
their values anywhere.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drtool.actions.daemon import JobInfo, build_jobs
from drtool.config.loader import Settings
from drtool.config.secrets import secret_refs
from drtool.errors import DrtoolError, UsageError
from drtool.schedule_math import next_run, to_cron_fields
from drtool.timezones import EffectiveZone, ZoneError, settings_zone

DESCRIPTIONS = {"backup": "back up policy", "forget": "apply retention of policy",
                "check": "check the repository of policy", "drill": "restore drill of playbook",
                "lock-extend": "verify and extend the Object Lock of repository"}
ENV_FILE_NAME = "drtool.env"
_ROTATING = re.compile(r"\s*\d+\s*/\s*\d+\s*")


@dataclass(frozen=True)
class Planned:
    job: str
    schedule: str
    next_local: datetime
    next_utc: datetime
    zone: str = "UTC"
    zone_source: str = "default"

    def to_dict(self) -> dict[str, str]:
        return {"job": self.job, "schedule": self.schedule, "next_local": self.next_local.isoformat(),
                "next_utc": self.next_utc.isoformat(), "timezone": self.zone, "timezone_source": self.zone_source}


def show(settings: Settings, now: datetime | None = None) -> list[Planned]:
    """The next start (jitter included) of every scheduled job, soonest first."""
    now = now or datetime.now(timezone.utc)
    zone = settings_zone(settings)
    planned = []
    for info in build_jobs(settings):
        nxt = next_run(info.job, now, zone.tz)
        planned.append(Planned(info.job.id, info.job.schedule.expr, nxt.astimezone(zone.tz),
                               nxt.astimezone(timezone.utc), zone.name, zone.source))
    return sorted(planned, key=lambda p: (p.next_utc, p.job))


def export_zone(settings: Settings, what: str) -> tuple[EffectiveZone, str]:
    """The effective zone and the name `what` (systemd, cron) is given; UsageError if it has none."""
    zone = settings_zone(settings)
    try:
        return zone, zone.require_export_name(what)
    except ZoneError as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------- the command each job runs

def drtool_executable() -> str:
    """Absolute path of the drtool program, for ExecStart= and crontab lines."""
    found = shutil.which("drtool")
    if found:
        return os.path.abspath(found)
    argv0 = Path(sys.argv[0])
    if argv0.name == "drtool" and argv0.exists():
        return str(argv0.resolve())
    raise DrtoolError("cannot find the drtool executable on PATH",
                      hint="install drtool (pip install drtool) so that `drtool` is on PATH, then export again")


def base_argv(settings: Settings, program: str) -> list[str]:
    return [program, "--config", str(settings.path.resolve())]


def job_argv(settings: Settings, info: JobInfo, program: str) -> list[str]:
    base = base_argv(settings, program)
    if info.kind == "check":
        subset = settings.policies[info.policy].check.read_data_subset
        if subset and _ROTATING.fullmatch(subset):
            return base + ["check", info.policy, "--rotate"]     # n/N: the next part, kept in state_dir
        return base + ["check", info.policy] + (["--read-data-subset", subset] if subset else [])
    if info.kind == "drill":
        return base + ["drill", info.job.name]
    if info.kind == "lock-extend":
        return base + ["repo", "lock-extend", info.repository, "--verify"]
    return base + [info.kind, info.policy]


def scheduled_jobs(settings: Settings) -> list[JobInfo]:
    jobs = build_jobs(settings)
    if not jobs:
        raise UsageError("no policy or playbook has a schedule: nothing to export",
                         hint="add `schedule: daily 02:00` to a policy")
    return jobs


# ---------------------------------------------------------------- secrets for unattended runs

def env_secret_names(settings: Settings) -> list[str]:
    """The environment variables the setup's `env:` references need, sorted."""
    models: list[Any] = [settings.config, *settings.policies.values(), *settings.playbooks.values()]
    return sorted({ref.env for model in models for _loc, ref in secret_refs(model) if ref.env is not None})


def default_env_file(settings: Settings) -> Path:
    return settings.path.resolve().parent / ENV_FILE_NAME


def env_file_instructions(names: list[str], env_file: Path, config: Path | None = None) -> list[str]:
    """How an admin creates the env file: names only, never values."""
    if not names:
        return ["secrets: the configuration uses no env: references; no environment file is needed"]
    lines = [f"secrets: the units read {len(names)} variable(s) from {env_file}; create it once, as root:",
             f"  install -m 600 -o root -g root /dev/null {shlex.quote(str(env_file))}",
             f"  $EDITOR {shlex.quote(str(env_file))}      # one line each, the value in single quotes:"]
    lines += [f"      {name}='...'" for name in names]
    config_arg = f"--config {shlex.quote(str(config))} " if config else ""
    lines.append(f"then check it: drtool {config_arg}schedule check-env --env-file {shlex.quote(str(env_file))}")
    return lines


def env_file_problems(names: list[str], env_file: Path) -> list[str]:
    """What is wrong with the env file (missing, readable by others, names missing); values are not read out."""
    if not names:
        return []
    try:
        st = env_file.stat()
        text = env_file.read_text()
    except OSError as exc:
        return [f"{env_file}: cannot be read: {exc.strerror}"]
    problems = []
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"{env_file}: readable by others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 {env_file}")
    if st.st_uid != os.geteuid():
        problems.append(f"{env_file}: owned by uid {st.st_uid}, not by the user the units run as (uid {os.geteuid()})")
    defined = {m.group(1) for m in re.finditer(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", text, re.M)}
    missing = [n for n in names if n not in defined]
    if missing:
        problems.append(f"{env_file}: does not define {', '.join(missing)}")
    return problems


# ---------------------------------------------------------------- cron

def crontab(settings: Settings, *, program: str | None = None, env_file: Path | None = None) -> str:
    """A crontab: one line per job, commands shell-quoted (cron hands lines to /bin/sh).

    Each line loads the env file (when env: secrets are used), runs the job, and on failure
    runs `schedule on-failure`, the cron twin of systemd's OnFailure=."""
    program = program or drtool_executable()
    jobs = scheduled_jobs(settings)
    zone, zone_name = export_zone(settings, "cron")
    names = env_secret_names(settings)
    env_file = env_file or default_env_file(settings)
    lines = ["# drtool schedule, generated by `drtool schedule export --cron`; install with `crontab FILE`.",
             f"# times in {zone.describe()}; intervals keep their length, their phase may differ from the daemon's.",
             f"CRON_TZ={zone_name}"]
    if names:
        lines.append(f"# secrets ({', '.join(names)}) come from {env_file} (root only, mode 0600)")
    prefix = f"set -a && . {shlex.quote(str(env_file))} && set +a && " if names else ""
    problems = []
    for info in jobs:
        try:
            fields = to_cron_fields(info.job.schedule)
        except ValueError as exc:
            problems.append(f"{info.job.id}: {exc}")
            continue
        alert = shlex.join(base_argv(settings, program) + ["schedule", "on-failure", info.job.id])
        command = f"{prefix}{shlex.join(job_argv(settings, info, program))} || {alert}"
        lines.append(f"{fields} {command.replace('%', chr(92) + '%')}  # {info.job.id}")   # % is newline to cron
    if problems:
        raise UsageError("cannot export to cron:\n  " + "\n  ".join(problems))
    return "\n".join(lines) + "\n"
