"""backup, snapshots, restore, forget, check, init-repo, runs."""

from __future__ import annotations

import click

from drtool.cli import complete
from drtool.cli.render import ProgressPrinter, emit_json, human_bytes


def _settings(ctx: click.Context):  # noqa: ANN202
    from drtool.config import load_settings
    return load_settings(ctx.obj["config"])


def run_exit_code(run) -> int:  # noqa: ANN001 - a RunRecord
    """0 for a run that succeeded and is recorded; else the class of its error (2: configuration)."""
    if not run.ok:
        return int(run.details.get("exit_code") or 1)
    return 1 if run.details.get("local_record_error") else 0


@click.command()
@click.argument("name", required=False, shell_complete=complete.policies)
@click.option("--all", "all_", is_flag=True, help="Back up every policy.")
@click.option("--dry-run", is_flag=True, help="Show what would be backed up; touch nothing.")
@click.option("--wait", is_flag=True, help="Queue behind a running backup of the same policy instead of refusing.")
@click.option("--json", "as_json", is_flag=True, help="Progress as JSON lines, then the run record.")
@click.pass_context
def backup(ctx: click.Context, name: str | None, all_: bool, dry_run: bool, wait: bool, as_json: bool) -> None:
    """Back up policy NAME (or --all) to its repository."""
    from drtool.actions.backup import backup_policy
    from drtool.errors import UsageError

    if bool(name) == all_:
        raise UsageError("give a policy NAME or --all (not both)")
    settings = _settings(ctx)
    policies = list(settings.policies.values()) if all_ else [settings.policy(name)]
    code = 0
    for policy in policies:
        printer = ProgressPrinter(as_json)
        if not as_json:
            click.echo(f"backup {policy.name} -> {settings.config.repositories[policy.repository].url}", err=True)
        try:
            run = backup_policy(settings, policy, dry_run=dry_run, wait=wait, on_event=printer)
        finally:
            printer.close()
        code = max(code, run_exit_code(run))
        if as_json:
            emit_json({"event": "run", **run.to_dict()})
        else:
            _print_run(run)
    ctx.exit(code)


def _print_run(run) -> None:  # noqa: ANN001
    if run.details.get("plan"):
        import json
        click.echo(json.dumps(run.details["plan"], indent=2))
        return
    status = {"success": "OK", "failed": "FAILED", "cancelled": "CANCELLED"}.get(run.status, run.status)
    click.echo(f"{status}  {run.policy}  run {run.id}  {run.duration_s or 0:.1f}s  "
               f"added {human_bytes(run.bytes_added)}  snapshots {len(run.snapshots)}")
    if run.error:
        click.echo(f"  error: {run.error}", err=True)
    if run.details.get("local_record_error"):
        click.echo(f"  error: {run.details['local_record_error']}", err=True)


@click.command()
@click.argument("name", required=False, shell_complete=complete.policies)
@click.option("--host", help="Another host's sets (restic --host); default this machine's.")
@click.option("--all-hosts", is_flag=True, help="Sets of every host that writes to the repository.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshots(ctx: click.Context, name: str | None, host: str | None, all_hosts: bool, as_json: bool) -> None:
    """List this host's complete snapshot sets per source (all policies, or NAME)."""
    from drtool.actions.snapshots import list_sets
    from drtool.errors import UsageError

    if host and all_hosts:
        raise UsageError("give --host NAME or --all-hosts, not both")
    settings = _settings(ctx)
    rows = list_sets(settings, [settings.policy(name)] if name else list(settings.policies.values()),
                     host=host, all_hosts=all_hosts)
    if as_json:
        emit_json(rows)
        return
    from drtool.cli.render import print_table

    print_table(["policy", "source", "kind", "host", "time (UTC)", "run", "id"],
                [[r["policy"], r["source"], r["kind"], r["host"], r["time"][:19], r["run"], r["short_id"]]
                 for r in rows])


@click.command()
@click.argument("name", shell_complete=complete.policies)
@click.option("--source", "source_name", required=True, help="Which source of the policy to restore.")
@click.option("--snapshot", default="latest", show_default=True, help="latest, a snapshot id or a run id.")
@click.option("--at", "at", metavar="TIME|latest",
              help="PITR sources: recover base backup + WAL to this moment (ISO time, no offset = UTC) into a "
                   "new server in the --target directory.")
@click.option("--target", required=True,
              help="Directory for files; postgresql://user@host:port/db, mysql://... or a file path for databases; "
                   "with --at a new or empty directory for the recovered server.")
@click.option("--force", is_flag=True, help="Restore over a non-empty target.")
@click.option("--host", help="Restore another machine's backup (its restic --host); default this machine's.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def restore(ctx: click.Context, name: str, source_name: str, snapshot: str, at: str | None, target: str,
            force: bool, host: str | None, as_json: bool) -> None:
    """Restore one source of policy NAME into TARGET (with --at: to a point in time)."""
    from drtool.actions.restore import restore_source

    settings = _settings(ctx)
    if at is not None:
        _restore_at(settings, name, source_name, at, target, host, as_json)
        return
    outcome = restore_source(settings, settings.policy(name), source_name, target=target,
                             selector=snapshot, force=force, host=host)
    if as_json:
        emit_json(outcome.to_dict())
    else:
        snap = outcome.snapshot
        click.echo(f"restored {outcome.source} ({outcome.kind}) from {snap.primary.short_id} "
                   f"taken {snap.time:%Y-%m-%d %H:%M:%S} UTC into {outcome.target}")
        for problem in outcome.detail.get("problems", []):
            click.echo(f"  MISMATCH {problem}", err=True)
    if outcome.detail.get("problems"):
        ctx.exit(1)


def _restore_at(settings, name: str, source_name: str, at: str, target: str, host: str | None,  # noqa: ANN001
                as_json: bool) -> None:
    from drtool.actions.pitr import restore_source_at

    out = restore_source_at(settings, settings.policy(name), source_name, at, target, host=host)
    if as_json:
        emit_json(out)
        return
    rpo = out.get("achieved_rpo_s")
    click.echo(f"recovered {source_name} from base backup {out['base_backup']['run']} + WAL to "
               f"{out['target']} ({out['recovered_to']}); timeline {out['timeline']}")
    click.echo(f"  newest commit replayed: {out['last_replayed_commit'] or 'none'}"
               + (f"; data loss measured by the canary: {rpo:.1f}s" if out.get("rpo_method") == "canary" else ""))
    click.echo(f"  server:  {out['connect']} (data in {out['data_dir']}, durable)")
    import shlex
    click.echo(f"  stop:    {shlex.join(out['service']['stop'])}")
    click.echo(f"  unit:    {out['service']['unit_file']}")


@click.command()
@click.argument("name", shell_complete=complete.policies)
@click.option("--dry-run", is_flag=True, help="Show what would be forgotten.")
@click.option("--no-prune", is_flag=True, help="Forget only; prune later.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def forget(ctx: click.Context, name: str, dry_run: bool, no_prune: bool, as_json: bool) -> None:
    """Apply policy NAME's retention (per source), then prune."""
    from drtool.actions.maintenance import forget_policy

    settings = _settings(ctx)
    run = forget_policy(settings, settings.policy(name), dry_run=dry_run, prune=not no_prune)
    if as_json:
        emit_json(run.to_dict())
    else:
        for src, counts in run.details.get("sources", {}).items():
            click.echo(f"{src}: keep {counts['kept']}, forget {counts['forgotten']}, debris {counts['debris']}")
        if run.error:
            click.echo(f"error: {run.error}", err=True)
    ctx.exit(run_exit_code(run))


@click.command()
@click.argument("name", shell_complete=complete.policies)
@click.option("--read-data-subset", metavar="N%|n/t", help="Also read this part of the pack data.")
@click.option("--rotate", is_flag=True,
              help="Read the next n/N part of the policy's check.read_data_subset (position kept in state_dir).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, name: str, read_data_subset: str | None, rotate: bool, as_json: bool) -> None:
    """Check the integrity of policy NAME's repository."""
    from drtool.actions.maintenance import check_repository
    from drtool.errors import UsageError

    if rotate and read_data_subset:
        raise UsageError("give --rotate or --read-data-subset, not both")
    settings = _settings(ctx)
    if rotate:
        from drtool.actions.rotate import check_with_rotation
        run = check_with_rotation(settings, settings.policy(name))
    else:
        run = check_repository(settings, settings.policy(name), read_data_subset=read_data_subset)
    if as_json:
        emit_json(run.to_dict())
    else:
        click.echo(("OK " if run.ok else "FAILED ") + (run.error or "repository is consistent"))
    ctx.exit(run_exit_code(run))


@click.command("init-repo")
@click.argument("name", shell_complete=complete.repositories)
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.pass_context
def init_repo(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create the bucket (if allowed) and initialise repository NAME."""
    from drtool.actions.common import open_repo, preflight
    from drtool.errors import UsageError

    settings = _settings(ctx)
    if name not in settings.config.repositories:
        raise UsageError(f"no repository named {name!r} in {settings.path}")
    info = preflight(open_repo(settings, name), create=True)
    repo = settings.config.repositories[name]
    if as_json:
        emit_json({"repository": name, "url": repo.url, "initialised": bool(info.get("initialised")),
                   "bucket": info.get("bucket")})
        return
    click.echo(f"repository {name} ({repo.url}): " + ("initialised" if info.get("initialised") else "already initialised"))
    if info.get("bucket"):
        click.echo(f"bucket: {info['bucket']}")


@click.command()
@click.option("--policy", help="Only this policy.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs(ctx: click.Context, policy: str | None, limit: int, as_json: bool) -> None:
    """Show the run history from the local catalog."""
    from drtool.catalog import Catalog

    settings = _settings(ctx)
    records = Catalog(settings.state_dir).runs(policy=policy, limit=limit)
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    from drtool.cli.render import print_table

    print_table(["started (UTC)", "kind", "policy", "status", "took", "added", "error"],
                [[f"{r.started_at:%Y-%m-%d %H:%M:%S}", r.kind, r.policy, r.status, f"{(r.duration_s or 0):.1f}s",
                  human_bytes(r.bytes_added), r.error.splitlines()[0] if r.error else ""] for r in records],
                styles=[[None, None, None, "green" if r.ok else "bold red", None, None, "red"] for r in records],
                right=frozenset({4, 5}))


def register(group: click.Group) -> None:
    for command in (backup, snapshots, restore, forget, check, init_repo, runs):
        group.add_command(command)
