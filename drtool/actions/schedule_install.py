"""Use cases: `drtool schedule install` / `uninstall`: write, enable and remove the systemd units.

Like resticprofile's `schedule`/`unschedule`: install writes every unit (drtool.actions.systemd)
into the unit directory, disables and removes units an earlier install wrote that the
configuration no longer has, reloads systemd and enables the timers (or, with `--daemon`,
the daemon service instead, with the timers disabled so no job runs twice). uninstall
disables and removes every unit drtool wrote there, and only those (each starts with the
GENERATED line). The work is planned first as a list of steps, so `--dry-run` prints
exactly what would happen, and tests check the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from drtool.actions.schedule import default_env_file, env_file_instructions, env_file_problems, env_secret_names
from drtool.actions.systemd import DAEMON_UNIT, WAL_UNIT_PREFIX, all_units, is_generated
from drtool.config.loader import Settings
from drtool.errors import DrtoolError, UsageError

UNIT_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True)
class Step:
    action: str                          # "write" | "remove" | "run"
    target: str                          # a unit file path, or the command shown
    argv: tuple[str, ...] = ()
    text: str = ""

    def describe(self) -> str:
        return f"{self.action:6} {self.target}"


def _run(systemctl: str, *args: str) -> Step:
    argv = (systemctl, *args)
    return Step("run", " ".join(argv), argv)


def plan_install(units: dict[str, str], generated: Sequence[str], unit_dir: Path, *, systemctl: str = "systemctl",
                 daemon: bool = False) -> list[Step]:
    """The steps of an install (pure): `generated` are the drtool unit files already in unit_dir."""
    stale = sorted(set(generated) - set(units))
    steps: list[Step] = []
    stale_active = [u for u in stale if u.endswith(".timer") or u == DAEMON_UNIT or u.startswith(WAL_UNIT_PREFIX)]
    if stale_active:
        steps.append(_run(systemctl, "disable", "--now", *stale_active))
    steps += [Step("remove", str(unit_dir / u)) for u in stale]
    steps += [Step("write", str(unit_dir / name), text=text) for name, text in sorted(units.items())]
    steps.append(_run(systemctl, "daemon-reload"))
    timers = sorted(u for u in units if u.endswith(".timer"))
    wal = sorted(u for u in units if u.startswith(WAL_UNIT_PREFIX))     # the daemon ships WAL itself
    if daemon:
        if timers or wal:
            steps.append(_run(systemctl, "disable", "--now", *timers, *wal))
        steps.append(_run(systemctl, "enable", "--now", DAEMON_UNIT))
    else:
        steps.append(_run(systemctl, "disable", "--now", DAEMON_UNIT))
        steps.append(_run(systemctl, "enable", "--now", *timers, *wal))
    return steps


def plan_uninstall(generated: Sequence[str], unit_dir: Path, *, systemctl: str = "systemctl") -> list[Step]:
    active = sorted(u for u in generated if u.endswith(".timer") or u == DAEMON_UNIT or u.startswith(WAL_UNIT_PREFIX))
    steps = [_run(systemctl, "disable", "--now", *active)] if active else []
    steps += [Step("remove", str(unit_dir / u)) for u in sorted(generated)]
    if generated:
        steps.append(_run(systemctl, "daemon-reload"))
    return steps


def generated_units(unit_dir: Path) -> list[str]:
    if not unit_dir.is_dir():
        return []
    return sorted(p.name for p in unit_dir.glob("drtool-*") if p.suffix in (".service", ".timer") and is_generated(p))


def install(settings: Settings, *, unit_dir: Path = UNIT_DIR, systemctl: str = "systemctl", daemon: bool = False,
            program: str | None = None, env_file: Path | None = None, dry_run: bool = False) -> list[Step]:
    """Plan, check that the env file is ready (the first night must work), then carry out."""
    env_file = env_file or default_env_file(settings)
    units = all_units(settings, program=program, env_file=env_file)
    steps = plan_install(units, generated_units(unit_dir), unit_dir, systemctl=systemctl, daemon=daemon)
    names = env_secret_names(settings)
    problems = env_file_problems(names, env_file)
    if problems and not dry_run:
        raise UsageError("the units would fail on their first run; nothing was installed:\n  " + "\n  ".join(problems),
                         hint="\n".join(env_file_instructions(names, env_file, settings.path)))
    if not dry_run:
        carry_out(steps)
    return steps


def uninstall(*, unit_dir: Path = UNIT_DIR, systemctl: str = "systemctl", dry_run: bool = False) -> list[Step]:
    steps = plan_uninstall(generated_units(unit_dir), unit_dir, systemctl=systemctl)
    if not dry_run:
        carry_out(steps)
    return steps


def carry_out(steps: list[Step], run: Callable[[Sequence[str]], object] | None = None) -> None:
    if run is None:
        from drtool.execute import LocalRunner
        runner = LocalRunner()
        run = lambda argv: runner.run(list(argv), timeout=120)   # noqa: E731 - CommandError names the failed step
    for step in steps:
        try:
            if step.action == "write":
                path = Path(step.target)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.text)
                path.chmod(0o644)
            elif step.action == "remove":
                Path(step.target).unlink(missing_ok=True)
            else:
                run(step.argv)
        except OSError as exc:
            raise DrtoolError(f"cannot {step.action} {step.target}: {exc.strerror}",
                              hint="run as root (the unit directory belongs to root), or pass --unit-dir") from None
