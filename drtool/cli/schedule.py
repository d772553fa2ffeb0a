"""daemon, schedule show/export/install/uninstall/check-env/on-failure."""

from __future__ import annotations

from pathlib import Path

import click

ENV_FILE_HELP = "The root-only 0600 file the units read env: secrets from (default: drtool.env beside drtool.yaml)."


@click.command()
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Also serve Prometheus metrics on 127.0.0.1:PORT/metrics.")
@click.option("--http", metavar="ADDR:PORT",
              help="Serve the dashboard (rebuilt after every job) on this loopback address, e.g. 127.0.0.1:8088.")
@click.pass_context
def daemon(ctx: click.Context, metrics_port: int | None, http: str | None) -> None:
    """Run scheduled backups, retention, checks and drills until SIGTERM (SIGHUP reloads)."""
    from drtool.actions.daemon import run_daemon

    ctx.exit(run_daemon(ctx.obj["config"], metrics_port=metrics_port, http=http))


@click.group()
def schedule() -> None:
    """Show the schedule, export it as systemd units or a crontab, install or remove the units."""


@schedule.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Next run of every scheduled job, in the effective time zone and UTC."""
    from drtool.actions.schedule import show as plan
    from drtool.cli.render import emit_json
    from drtool.config import load_settings
    from drtool.timezones import settings_zone

    settings = load_settings(ctx.obj["config"])
    planned = plan(settings)
    if as_json:
        emit_json([p.to_dict() for p in planned])
        return
    click.echo(f"times in {settings_zone(settings).describe()}")
    if not planned:
        click.echo("no scheduled jobs (add `schedule:` to a policy or playbook)")
    for p in planned:
        click.echo(f"{p.job:28} {p.next_local:%Y-%m-%d %H:%M:%S %Z}  ({p.next_utc:%Y-%m-%d %H:%M:%S} UTC)  "
                   f"{p.schedule}")


@schedule.command()
@click.option("--systemd", "systemd_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Write a .service and a .timer per job, drtool-daemon.service and drtool-failure@.service into DIR.")
@click.option("--cron", is_flag=True, help="Print a crontab.")
@click.option("--kubernetes", "kube_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Write Kubernetes manifests into DIR: a CronJob per job the cluster can reach, ConfigMaps, "
                   "secrets.md (the Secrets to create, by name).")
@click.option("--image", default="drtool:latest", show_default=True, metavar="IMAGE",
              help="--kubernetes: the container image (drtool, restic and the database client tools).")
@click.option("--namespace", default="drtool", show_default=True, help="--kubernetes: the namespace.")
@click.option("--fleet", "fleet_file", metavar="FILE",
              help="--kubernetes: also a Job of drill-pool workers and the CronJob that queues due drills.")
@click.option("--pool-workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="--kubernetes --fleet: worker pods the Job runs at once.")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), help=ENV_FILE_HELP)
@click.pass_context
def export(ctx: click.Context, systemd_dir: str | None, cron: bool, kube_dir: str | None, image: str, namespace: str,
           fleet_file: str | None, pool_workers: int, env_file: Path | None) -> None:
    """Export the schedule for systemd, cron or Kubernetes (instead of running `drtool daemon`)."""
    from drtool.actions.schedule import crontab, default_env_file, env_file_instructions, env_secret_names
    from drtool.actions.systemd import export_systemd
    from drtool.config import load_settings
    from drtool.errors import UsageError
    from drtool.timezones import settings_zone

    if sum(map(bool, (systemd_dir, cron, kube_dir))) != 1:
        raise UsageError("give exactly one of --systemd DIR, --cron or --kubernetes DIR")
    settings = load_settings(ctx.obj["config"])
    if kube_dir:
        _export_kubernetes(settings, Path(kube_dir), image, namespace, fleet_file, pool_workers)
        return
    env_file = env_file or default_env_file(settings)
    if cron:
        click.echo(crontab(settings, env_file=env_file), nl=False)
    else:
        for path in export_systemd(settings, Path(systemd_dir), env_file=env_file):
            click.echo(str(path))
        click.echo("install: `drtool schedule install` (or copy them to /etc/systemd/system, then "
                   "`systemctl daemon-reload` and `systemctl enable --now drtool-*.timer`)", err=True)
    click.echo(f"times in {settings_zone(settings).describe()}", err=True)
    for line in env_file_instructions(env_secret_names(settings), env_file, settings.path):
        click.echo(line, err=True)


def _export_kubernetes(settings, out_dir: Path, image: str, namespace: str, fleet_file: str | None,  # noqa: ANN001
                       workers: int) -> None:
    from drtool.actions.kubernetes import export_kubernetes
    from drtool.config.fleet import load_fleet

    fleet = load_fleet(fleet_file) if fleet_file else None
    written, skipped = export_kubernetes(settings, out_dir, image=image, namespace=namespace, fleet=fleet,
                                         workers=workers)
    for path in written:
        click.echo(str(path))
    for line in skipped:
        click.echo(f"not exported: {line}", err=True)
    click.echo(f"create the Secrets listed in {out_dir / 'secrets.md'}, then `kubectl apply -f {out_dir}`", err=True)


@schedule.command()
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default="/etc/systemd/system",
              show_default=True, help="Where the unit files go.")
@click.option("--systemctl", "systemctl", default="systemctl", show_default=True, metavar="PROGRAM",
              help="The systemctl program to run (a path, e.g. a wrapper).")
@click.option("--daemon", "use_daemon", is_flag=True, help="Enable drtool-daemon.service instead of the timers.")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), help=ENV_FILE_HELP)
@click.option("--dry-run", is_flag=True, help="Print every step; change nothing.")
@click.pass_context
def install(ctx: click.Context, unit_dir: Path, systemctl: str, use_daemon: bool, env_file: Path | None,
            dry_run: bool) -> None:
    """Write the units, reload systemd and enable the timers (or the daemon)."""
    from drtool.actions.schedule_install import install as do_install
    from drtool.config import load_settings

    steps = do_install(load_settings(ctx.obj["config"]), unit_dir=unit_dir, systemctl=systemctl, daemon=use_daemon,
                       env_file=env_file, dry_run=dry_run)
    _print_steps(steps, dry_run)


@schedule.command()
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default="/etc/systemd/system",
              show_default=True, help="Where the unit files are.")
@click.option("--systemctl", "systemctl", default="systemctl", show_default=True, metavar="PROGRAM")
@click.option("--dry-run", is_flag=True, help="Print every step; change nothing.")
def uninstall(unit_dir: Path, systemctl: str, dry_run: bool) -> None:
    """Disable and remove every unit `schedule install` wrote (and only those)."""
    from drtool.actions.schedule_install import uninstall as do_uninstall

    steps = do_uninstall(unit_dir=unit_dir, systemctl=systemctl, dry_run=dry_run)
    if not steps:
        click.echo(f"no drtool units in {unit_dir}")
    _print_steps(steps, dry_run)


def _print_steps(steps, dry_run: bool) -> None:  # noqa: ANN001
    for step in steps:
        click.echo(("would " if dry_run else "") + step.describe())


@schedule.command("check-env")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), help=ENV_FILE_HELP)
@click.pass_context
def check_env(ctx: click.Context, env_file: Path | None) -> None:
    """Check the env file the units read: mode 0600, every needed variable named (values are not shown)."""
    from drtool.actions.schedule import default_env_file, env_file_instructions, env_file_problems, env_secret_names
    from drtool.config import load_settings
    from drtool.errors import UsageError

    settings = load_settings(ctx.obj["config"])
    env_file = env_file or default_env_file(settings)
    names = env_secret_names(settings)
    problems = env_file_problems(names, env_file)
    if problems:
        raise UsageError("\n".join(problems), hint="\n".join(env_file_instructions(names, env_file, settings.path)))
    click.echo(f"{env_file}: ok ({', '.join(names)})" if names else "no env: secrets are used; no env file is needed")


@schedule.command("on-failure")
@click.argument("unit")
@click.pass_context
def on_failure(ctx: click.Context, unit: str) -> None:
    """Notify that UNIT failed (run by the units' OnFailure= and the crontab's `||`)."""
    from drtool.actions.unit_failure import report_failure

    code, line = report_failure(ctx.obj["config"], unit)
    click.echo(line, err=True)
    ctx.exit(code)


def register(group: click.Group) -> None:
    group.add_command(daemon)
    group.add_command(schedule)
