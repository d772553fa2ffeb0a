"""repo lock-extend, repo rollback: keeping an immutable repository locked, and undoing an attack."""

from __future__ import annotations

import click

from drtool.cli import complete
from drtool.cli.backup import run_exit_code
from drtool.cli.render import emit_json


def _settings(ctx: click.Context):  # noqa: ANN202
    from drtool.config import load_settings
    return load_settings(ctx.obj["config"])


@click.group()
def repo() -> None:
    """Immutable repositories: extend Object Lock, roll back after an attack."""


@repo.command("lock-extend")
@click.argument("name", shell_complete=complete.repositories)
@click.option("--verify", is_flag=True, help="Read every object's retention from the bucket instead of trusting "
              "what drtool set before (the daemon's scheduled run does this).")
@click.option("--json", "as_json", is_flag=True, help="The run record as one JSON object.")
@click.pass_context
def lock_extend(ctx: click.Context, name: str, verify: bool, as_json: bool) -> None:
    """Lock every object repository NAME's kept snapshots need until at least now + immutable.days."""
    from drtool.actions.immutable import extend_locks

    run = extend_locks(_settings(ctx), name, verify=verify)
    if as_json:
        emit_json(run.to_dict())
    else:
        d = run.details
        if run.ok:
            calls = d.get("api_calls_total", 0)
            click.echo(f"OK  {name}: {d.get('objects', 0)} objects, {d.get('extended', 0)} locked now, "
                       f"{d.get('already_locked', 0)} already; every one locked ({d.get('mode')}) until at least "
                       f"{(d.get('locked_until_at_least') or '-')[:19]}Z; {calls} API calls in "
                       f"{d.get('seconds', 0):.1f}s")
        else:
            click.echo(f"FAILED  {name}: {run.error}", err=True)
    ctx.exit(run_exit_code(run))


@repo.command()
@click.argument("name", shell_complete=complete.repositories)
@click.option("--to", "to", required=True, metavar="TIME",
              help="ISO 8601 time (2026-12-01T21:00:00Z; without a zone: drtool's time zone) or e.g. '2h ago'.")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The run record as one JSON object.")
@click.pass_context
def rollback(ctx: click.Context, name: str, to: str, dry_run: bool, as_json: bool) -> None:
    """Make repository NAME's current objects those of TIME again, from its locked versions."""
    from drtool.actions.rollback import parse_time, rollback_repository

    settings = _settings(ctx)
    run = rollback_repository(settings, name, parse_time(to, settings), dry_run=dry_run)
    if as_json:
        emit_json(run.to_dict())
    else:
        _print_rollback(name, run)
    ctx.exit(run_exit_code(run))


def _print_rollback(name: str, run) -> None:  # noqa: ANN001 - a RunRecord
    d = run.details
    head = "DRY RUN" if d.get("dry_run") else ("OK" if run.ok else "FAILED")
    click.echo(f"{head}  {name} back to {d.get('to', '?')}: {d.get('changes', 0)} object(s) to change")
    for action, folders in (d.get("summary") or {}).items():
        click.echo(f"  {action}: " + ", ".join(f"{folder} {n}" for folder, n in sorted(folders.items())))
    for step in d.get("steps", [])[:20]:
        click.echo(f"    {step['action']:<16} {step['key']}  ({step['detail']})")
    if len(d.get("steps", [])) > 20:
        click.echo(f"    ... and {len(d['steps']) - 20} more (--json lists them all)")
    if d.get("check"):
        click.echo(f"  restic check: {d['check']}")
    if run.error:
        click.echo(f"error: {run.error}", err=True)


def register(group: click.Group) -> None:
    group.add_command(repo)
