"""daemon, schedule show, schedule export."""

from __future__ import annotations

import click


@click.command()
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Also serve Prometheus metrics on 127.0.0.1:PORT/metrics.")
@click.pass_context
def daemon(ctx: click.Context, metrics_port: int | None) -> None:
    """Run scheduled backups, retention, checks and drills until SIGTERM (SIGHUP reloads)."""
    from drtool.actions.daemon import run_daemon

    ctx.exit(run_daemon(ctx.obj["config"], metrics_port=metrics_port))


@click.group()
def schedule() -> None:
    """Show the schedule, or export it as systemd timers or a crontab."""


@schedule.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Next run of every scheduled job, in local time and UTC."""
    from drtool.actions.schedule import show as plan
    from drtool.cli.render import emit_json
    from drtool.config import load_settings

    planned = plan(load_settings(ctx.obj["config"]))
    if as_json:
        emit_json([p.to_dict() for p in planned])
        return
    if not planned:
        click.echo("no scheduled jobs (add `schedule:` to a policy or playbook)")
    for p in planned:
        click.echo(f"{p.job:28} {p.next_local:%Y-%m-%d %H:%M:%S %Z}  ({p.next_utc:%Y-%m-%d %H:%M:%S} UTC)  "
                   f"{p.schedule}")


@schedule.command()
@click.option("--systemd", "systemd_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Write a .service and a .timer per job into DIR.")
@click.option("--cron", is_flag=True, help="Print a crontab.")
@click.pass_context
def export(ctx: click.Context, systemd_dir: str | None, cron: bool) -> None:
    """Export the schedule for systemd or cron (instead of running `drtool daemon`)."""
    from pathlib import Path

    from drtool.actions.schedule import crontab, export_systemd
    from drtool.config import load_settings
    from drtool.errors import UsageError

    if bool(systemd_dir) == cron:
        raise UsageError("give exactly one of --systemd DIR or --cron")
    settings = load_settings(ctx.obj["config"])
    if cron:
        click.echo(crontab(settings), nl=False)
        return
    for path in export_systemd(settings, Path(systemd_dir)):
        click.echo(str(path))
    click.echo("install: copy to /etc/systemd/system, then `systemctl daemon-reload` and "
               "`systemctl enable --now drtool-*.timer`", err=True)


def register(group: click.Group) -> None:
    group.add_command(daemon)
    group.add_command(schedule)
