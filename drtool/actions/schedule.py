"""Use cases: `drtool schedule show` and `drtool schedule export --systemd DIR | --cron`.

The exports are for sites that prefer systemd timers or cron to `drtool daemon`.
They run the same CLI commands the daemon's jobs run. What timers cannot do
that the daemon does: keep a drill off its policy's running backup (the
engine's policy lock still keeps one run per policy) and rotate `n/N` check
subsets (an exported check reads a random 1/N share instead, which covers all
data only on average).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from drtool.actions.daemon import JobInfo, build_jobs, settings_timezone
from drtool.config.loader import Settings
from drtool.errors import DrtoolError, UsageError
from drtool.schedule_math import next_run, to_cron_fields, to_oncalendar

DESCRIPTIONS = {"backup": "back up policy", "forget": "apply retention of policy",
                "check": "check the repository of policy", "drill": "restore drill of playbook"}


@dataclass(frozen=True)
class Planned:
    job: str
    schedule: str
    next_local: datetime
    next_utc: datetime

    def to_dict(self) -> dict[str, str]:
        return {"job": self.job, "schedule": self.schedule, "next_local": self.next_local.isoformat(),
                "next_utc": self.next_utc.isoformat()}


def show(settings: Settings, now: datetime | None = None) -> list[Planned]:
    """The next start (jitter included) of every scheduled job, soonest first."""
    now = now or datetime.now(timezone.utc)
    tz = settings_timezone(settings)
    planned = []
    for info in build_jobs(settings):
        nxt = next_run(info.job, now, tz)
        planned.append(Planned(info.job.id, info.job.schedule.expr, nxt.astimezone(tz), nxt.astimezone(timezone.utc)))
    return sorted(planned, key=lambda p: (p.next_utc, p.job))


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


def job_argv(settings: Settings, info: JobInfo, program: str) -> list[str]:
    base = [program, "--config", str(settings.path.resolve())]
    if info.kind == "check":
        subset = _stateless_subset(settings.policies[info.policy].check.read_data_subset)
        return base + ["check", info.policy] + (["--read-data-subset", subset] if subset else [])
    if info.kind == "drill":
        return base + ["drill", info.job.name]
    return base + [info.kind, info.policy]


def _stateless_subset(configured: str | None) -> str | None:
    # A timer has no memory to rotate n/N; a random share of the same size is the closest.
    match = re.fullmatch(r"\s*\d+\s*/\s*(\d+)\s*", configured or "")
    if match and int(match.group(1)) > 0:
        return f"{100 / int(match.group(1)):.4g}%"
    return configured


# ---------------------------------------------------------------- systemd

def unit_name(info: JobInfo) -> str:
    return f"drtool-{info.kind}-{info.job.name}"


def _exec_quote(arg: str) -> str:
    # systemd's ExecStart= splits on whitespace and understands C-style double quotes;
    # '%' is a specifier and '$' an environment expansion, both escaped.
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.search(r'[\s"\'\\;]', arg):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def systemd_units(settings: Settings, info: JobInfo, program: str) -> dict[str, str]:
    """The .service and .timer text of one job."""
    tz = settings.config.timezone
    calendar = to_oncalendar(info.job.schedule, tz)
    what = f"drtool: {DESCRIPTIONS[info.kind]} {info.job.name}"
    name = unit_name(info)
    service = "\n".join([
        "[Unit]", f"Description={what}", "Wants=network-online.target", "After=network-online.target", "",
        "[Service]", "Type=oneshot", f"ExecStart={' '.join(_exec_quote(a) for a in job_argv(settings, info, program))}",
        # SIGINT first: drtool aborts restic cleanly (no partial snapshot) and records "cancelled".
        "KillSignal=SIGINT", "TimeoutStopSec=300", "UMask=0077", "",
    ])
    timer_lines = ["[Unit]", f"Description={what} ({info.job.schedule.expr})", "", "[Timer]",
                   f"OnCalendar={calendar}", "Persistent=true", f"Unit={name}.service"]
    if info.job.schedule.jitter:
        timer_lines += [f"RandomizedDelaySec={int(info.job.schedule.jitter)}", "FixedRandomDelay=true"]
    timer_lines += ["", "[Install]", "WantedBy=timers.target", ""]
    return {f"{name}.service": service, f"{name}.timer": "\n".join(timer_lines)}


def export_systemd(settings: Settings, out_dir: Path, *, program: str | None = None) -> list[Path]:
    """Write one .service and one .timer per scheduled job into out_dir; return the files."""
    program = program or drtool_executable()
    units = _all_units(settings, program)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in units.items():
        path = out_dir / filename
        path.write_text(text)
        path.chmod(0o644)       # units hold commands and paths, never secrets
        written.append(path)
    return written


def _all_units(settings: Settings, program: str) -> dict[str, str]:
    # Translate everything before writing anything: a bad schedule leaves the directory untouched.
    units: dict[str, str] = {}
    problems = []
    jobs = build_jobs(settings)
    if not jobs:
        raise UsageError("no policy or playbook has a schedule: nothing to export",
                         hint="add `schedule: daily 02:00` to a policy")
    for info in jobs:
        try:
            units.update(systemd_units(settings, info, program))
        except ValueError as exc:
            problems.append(f"{info.job.id}: {exc}")
    if problems:
        raise UsageError("cannot export to systemd:\n  " + "\n  ".join(problems))
    return units


# ---------------------------------------------------------------- cron

def crontab(settings: Settings, *, program: str | None = None) -> str:
    """A crontab: one line per job, commands shell-quoted (cron hands lines to /bin/sh)."""
    program = program or drtool_executable()
    jobs = build_jobs(settings)
    lines = ["# drtool schedule, generated by `drtool schedule export --cron`; install with `crontab FILE`.",
             "# cron runs on the system clock; intervals keep their length, their phase may differ from the daemon's."]
    if settings.config.timezone:
        lines.append(f"CRON_TZ={settings.config.timezone}")
    problems = []
    for info in jobs:
        try:
            fields = to_cron_fields(info.job.schedule)
        except ValueError as exc:
            problems.append(f"{info.job.id}: {exc}")
            continue
        command = shlex.join(job_argv(settings, info, program)).replace("%", "\\%")   # % is newline to cron
        lines.append(f"{fields} {command}  # {info.job.id}")
    if problems:
        raise UsageError("cannot export to cron:\n  " + "\n  ".join(problems))
    if not jobs:
        raise UsageError("no policy or playbook has a schedule: nothing to export",
                         hint="add `schedule: daily 02:00` to a policy")
    return "\n".join(lines) + "\n"
