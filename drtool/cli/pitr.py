"""wal-ship: continuous WAL shipping for a policy's PITR sources (the daemon runs the same)."""

from __future__ import annotations

import click

from drtool.cli import complete


@click.command("wal-ship")
@click.argument("name", shell_complete=complete.policies)
@click.option("--source", "source_name", help="Only this PITR source of the policy.")
@click.pass_context
def wal_ship(ctx: click.Context, name: str, source_name: str | None) -> None:
    """Stream WAL of policy NAME's PITR sources into the repository until SIGTERM/SIGINT.

    `drtool daemon` does this by itself; run this instead where the schedule lives in
    systemd timers or cron (as a service of its own). On SIGTERM it stops receiving and
    ships what arrived before exiting."""
    import signal
    import threading

    from drtool.actions.wal_ship import ship_policy
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ship_policy(settings, settings.policy(name), stop, source=source_name)


def register(group: click.Group) -> None:
    group.add_command(wal_ship)
