"""backup, snapshots, restore, ls, forget, check, unlock, init-repo, runs."""

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
    # A copy or lock extension the backup set off failed: a run of its own that alerted; exit 1 too.
    failed_follow_up = any(f.get("status") != "success" for f in run.details.get("follow_ups") or [])
    return 1 if run.details.get("local_record_error") or failed_follow_up else 0


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

    print_table(["policy", "repository", "source", "kind", "host", "time (UTC)", "run", "id"],
                [[r["policy"], r["repository"], r["source"], r["kind"], r["host"], r["time"][:19], r["run"],
                  r["short_id"]] for r in rows])


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
@click.option("--path", "paths", multiple=True, metavar="PATTERN",
              help="Files: only what this pattern selects (restic --include rules; repeatable), "
                   "e.g. 'scans/2026/11/*' or /srv/scans/ktp-0001.pdf.")
@click.option("--table", "tables", multiple=True, metavar="[SCHEMA.]TABLE",
              help="Databases: only this table, with its indexes, constraints and triggers (repeatable).")
@click.option("--schema", "schemas", multiple=True, metavar="SCHEMA", help="PostgreSQL: only this schema (repeatable).")
@click.option("--force", is_flag=True, help="Restore over a non-empty target.")
@click.option("--dry-run", is_flag=True, help="Show what would be restored, from which set, into where, how many "
                                              "bytes and which checks would run; touch nothing.")
@click.option("--host", help="Restore another machine's backup (its restic --host); default this machine's.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def restore(ctx: click.Context, name: str, source_name: str, snapshot: str, at: str | None, target: str,
            paths: tuple[str, ...], tables: tuple[str, ...], schemas: tuple[str, ...], force: bool, dry_run: bool,
            host: str | None, as_json: bool) -> None:
    """Restore one source of policy NAME (or part of it) into TARGET (with --at: to a point in time)."""
    from drtool.actions.restore import Part, restore_source

    from drtool.errors import UsageError

    settings = _settings(ctx)
    if at is not None:
        if paths or tables or schemas or dry_run:
            raise UsageError("--at recovers a whole PostgreSQL server to a moment; it does not combine with "
                             "--path, --table, --schema or --dry-run")
        _restore_at(settings, name, source_name, at, target, host, as_json)
        return
    outcome = restore_source(settings, settings.policy(name), source_name, target=target, selector=snapshot,
                             force=force, host=host, part=Part(paths, tables, schemas), dry_run=dry_run)
    if as_json:
        emit_json(outcome.to_dict())
    elif dry_run:
        _print_restore_plan(outcome)
    else:
        snap = outcome.snapshot
        what = _part_text(outcome.detail)
        click.echo(f"restored {outcome.source} ({outcome.kind}){what} from {snap.primary.short_id} "
                   f"taken {snap.time:%Y-%m-%d %H:%M:%S} UTC into {outcome.target}")
        if outcome.detail.get("verification"):
            click.echo(f"  {outcome.detail['verification']}")
        for item in outcome.detail.get("skipped", []):
            click.echo(f"  not restored (needs what is not restored): {item}", err=True)
        for problem in outcome.detail.get("problems", []):
            click.echo(f"  MISMATCH {problem}", err=True)
    if outcome.detail.get("problems"):
        ctx.exit(1)


def _part_text(detail: dict) -> str:
    if detail.get("tables"):
        return f": tables {', '.join(detail['tables'])}"
    if detail.get("include"):
        return f": {detail.get('entries', 0)} entries matching {', '.join(detail['include'])}"
    return ""


def _print_restore_plan(outcome) -> None:  # noqa: ANN001 - RestoreOutcome
    d, snap = outcome.detail, outcome.snapshot
    click.echo("dry run: nothing was restored, created or started")
    click.echo(f"  would restore {outcome.source} ({outcome.kind}) from set {snap.primary.short_id} "
               f"(run {snap.run_id}, taken {snap.time:%Y-%m-%d %H:%M:%S} UTC, host {snap.host})")
    click.echo(f"  into {outcome.target}: {d.get('target_state')}")
    for stream, size in d.get("streams", {}).items():
        click.echo(f"  stream {stream}: {human_bytes(size)}")
    if d.get("tables"):
        click.echo(f"  tables: {', '.join(d['tables'])}")
    if d.get("paths"):
        click.echo(f"  {d['entries']} entries ({d['files']} files) match {', '.join(d['paths'])}")
    click.echo(f"  bytes to read: {human_bytes(d.get('bytes'))}" + (f" ({d['note']})" if d.get("note") else ""))
    for check in d.get("checks", []):
        click.echo(f"  check: {check}")


@click.command("ls")
@click.argument("name")
@click.argument("path", required=False)
@click.option("--source", "source_name", required=True, help="Which source of the policy.")
@click.option("--snapshot", default="latest", show_default=True, help="latest, a snapshot id or a run id.")
@click.option("--recursive", "-r", is_flag=True, help="Files: everything below PATH.")
@click.option("--host", help="Another machine's backups (its restic --host); default this machine's.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ls(ctx: click.Context, name: str, path: str | None, source_name: str, snapshot: str, recursive: bool,
       host: str | None, as_json: bool) -> None:
    """Browse what a snapshot set of policy NAME's source holds: files with sizes and times,
    or database streams and tables with row counts."""
    from drtool.actions.browse import list_snapshot

    settings = _settings(ctx)
    listing = list_snapshot(settings, settings.policy(name), source_name, selector=snapshot, path=path,
                            recursive=recursive, host=host)
    if as_json:
        emit_json(listing.to_dict())
        return
    snap = listing.snapshot
    click.echo(f"{listing.source} ({listing.kind}) set {snap.primary.short_id}, run {snap.run_id}, "
               f"taken {snap.time:%Y-%m-%d %H:%M:%S} UTC on {snap.host}")
    for e in listing.entries:
        kind = {"dir": "d", "file": "-", "symlink": "l"}.get(e["type"] or "", "?")
        size = human_bytes(e["size"]) if e["type"] == "file" else ""
        click.echo(f"{kind} {size:>10}  {(e['mtime'] or '')[:19].replace('T', ' ')}  {e['path']}")
    for st in listing.streams:
        click.echo(f"stream {st['stream']:<32} {human_bytes(st['bytes']):>10}  {st['time'][:19].replace('T', ' ')}")
    for t in listing.tables:
        click.echo(f"table  {t['database']}.{t['table']:<40} {t['rows']:>12} rows"
                   + ("  content hash" if t["content_hash"] else ""))


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
        for where, details in [(None, run.details), *run.details.get("copies", {}).items()]:
            head = f"{where}: " if where else ""
            for src, counts in details.get("sources", {}).items():
                click.echo(f"{head}{src}: keep {counts['kept']}, forget {counts['forgotten']}, debris {counts['debris']}")
            if details.get("immutable"):      # Object Lock: what prune really freed (nothing at once)
                click.echo(f"{head}{details['immutable']['note']}")
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
    elif run.ok:
        click.echo("OK repository is consistent")
    else:   # the cause on stderr, as every failed run prints it (a cron mail, a pipe, a terminal)
        click.echo(f"FAILED  check {run.policy}  run {run.id}")
        click.echo(f"  error: {run.error}", err=True)
    ctx.exit(run_exit_code(run))


@click.command()
@click.argument("name", shell_complete=complete.policies)
@click.option("--remove-all", is_flag=True,
              help="Remove every lock, also those of restic processes that may still run (asks first).")
@click.option("--yes", "-y", is_flag=True, help="With --remove-all: do not ask (needed when not on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="The locks found, removed and kept, as one JSON object.")
@click.pass_context
def unlock(ctx: click.Context, name: str, remove_all: bool, yes: bool, as_json: bool) -> None:
    """Show who holds policy NAME's repository locks; remove the stale ones."""
    from drtool.actions.unlock import list_locks, unlock as unlock_repo
    from drtool.errors import DrtoolError, UsageError

    settings = _settings(ctx)
    policy = settings.policy(name)
    if remove_all:
        report = list_locks(settings, policy)
        _print_locks(report.found, "found")
        click.echo("WARNING: --remove-all removes every lock of the repository, also those of restic processes\n"
                   "that may be running now, here or on other hosts (a prune or check running meanwhile can lose\n"
                   "data). Make sure no restic uses the repository.", err=True)
        if not yes:
            if not click.get_text_stream("stdin").isatty():
                raise UsageError("--remove-all needs --yes when drtool is not run on a terminal; nothing was removed")
            if not click.confirm("Remove every lock?", default=False):
                raise DrtoolError("no lock was removed")
    report = unlock_repo(settings, policy, remove_all=remove_all)
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(f"repository {report.repository} ({report.url}): {len(report.found)} lock(s)")
    _print_locks(report.removed, "removed")
    _print_locks(report.kept, "kept")


def _print_locks(locks, verdict: str) -> None:  # noqa: ANN001 - list[LockInfo]
    for lock in locks:
        since = f"{lock.time:%Y-%m-%d %H:%M:%S} UTC" if lock.time else "?"
        click.echo(f"  {verdict:8} {lock.id[:8]}  {'exclusive' if lock.exclusive else 'shared':9}  "
                   f"{lock.username or '?'}@{lock.hostname} pid {lock.pid}  since {since}: {lock.why}")


@click.command("init-repo")
@click.argument("name", shell_complete=complete.repositories)
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.pass_context
def init_repo(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create the bucket (if allowed) and initialise repository NAME."""
    from drtool.actions.common import checked_preflight, learn_key_hint, open_repo, restic_host
    from drtool.actions.machine_key import ensure_machine_key
    from drtool.errors import UsageError

    settings = _settings(ctx)
    if name not in settings.config.repositories:
        raise UsageError(f"no repository named {name!r} in {settings.path}")
    handle = open_repo(settings, name)
    info = checked_preflight(handle)
    ensure_machine_key(handle, restic_host(settings))       # this machine's key, before its first backup
    learn_key_hint(handle)                                  # likewise: the first backup need not
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
    for command in (backup, snapshots, restore, ls, forget, check, unlock, init_repo, runs):
        group.add_command(command)
