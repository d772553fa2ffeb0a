"""drill, drills, status."""

from __future__ import annotations

from pathlib import Path

import click

from drtool.cli.render import emit_json


def _settings(ctx: click.Context):  # noqa: ANN202
    from drtool.config import load_settings
    return load_settings(ctx.obj["config"])


def _fmt(seconds: float | None) -> str:
    from drtool.config.durations import format_duration
    return format_duration(seconds)


class StepPrinter:
    """Progress on stderr while the drill runs (quiet with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        if kind == "step_start":
            click.echo(f"  {event['name']} ({event['kind']}) ...", err=True)
        elif kind == "step_done":
            click.echo(f"  {event['name']}: {event['status']} in {_fmt(event['duration_s'])}", err=True)
        elif kind == "notice":
            click.echo(f"  note: {event['message']}", err=True)


@click.command()
@click.argument("playbook")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a JUnit XML report to FILE.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write <id>.json and <id>.junit.xml into DIR.")
@click.option("--keep", is_flag=True, help="Leave scratch instances running and print how to reach them.")
@click.option("--host", help="Drill another machine's backups (its restic --host); default this machine's.")
@click.option("--dry-run", is_flag=True, help="Show what each step would restore, from which set, into where, how "
                                              "many bytes and which checks; start nothing, record nothing.")
@click.pass_context
def drill(ctx: click.Context, playbook: str, as_json: bool, junit_file: Path | None, report_dir: Path | None,
          keep: bool, host: str | None, dry_run: bool) -> None:
    """Run the restore drill PLAYBOOK (a name or a YAML file); exit 0 when it passed."""
    from drtool.actions.common import signed
    from drtool.actions.drill import run_drill
    from drtool.errors import DrillFailed
    from drtool.report.drill import print_report, write_json, write_junit

    settings = _settings(ctx)
    book = settings.playbook(playbook)
    if dry_run:
        _dry_run(ctx, settings, book, host, as_json)
        return
    if not as_json:
        click.echo(f"drill {book.name}: policy {book.policy}, snapshot {book.snapshot!r}", err=True)
    report = run_drill(settings, book, keep=keep, on_event=StepPrinter(as_json), host=host)
    data = report.to_dict()
    if junit_file:
        write_junit(data, junit_file)
    if report_dir:
        write_json(signed(settings, data), report_dir / f"{report.id}.json")
        write_junit(data, report_dir / f"{report.id}.junit.xml")
    if as_json:
        emit_json(data)
    else:
        print_report(data)
    if not report.passed:
        # An error, not ctx.exit(1): exit code 1 and one line on stderr naming what failed.
        raise DrillFailed(f"drill {book.name} failed: " + "; ".join(report.failures)[:1500])


def _dry_run(ctx: click.Context, settings, book, host: str | None, as_json: bool) -> None:  # noqa: ANN001
    from drtool.actions.dry_run import plan_drill
    from drtool.cli.render import human_bytes

    plan = plan_drill(settings, book, host=host)
    if as_json:
        emit_json(plan)
    else:
        click.echo(f"dry run of drill {book.name} (policy {plan['policy']}, host {plan['host']}): "
                   "nothing was restored, started or recorded")
        for i, step in enumerate(plan["steps"], 1):
            size = f" [{human_bytes(step['bytes'])}]" if step.get("bytes") is not None else ""
            click.echo(f"  {i}. {step['name']}: {step['would']}{size}")
            for check in step.get("checks", []):
                click.echo(f"       check: {check}")
        click.echo(f"  bytes to read: {human_bytes(plan['bytes'])}; RPO if run now: {_fmt(plan['rpo_if_run_now_s'])}")
    ctx.exit(0 if plan["runnable"] else 1)


@click.command()
@click.option("--policy", help="Only drills of this policy.")
@click.option("--limit", default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def drills(ctx: click.Context, policy: str | None, limit: int, as_json: bool) -> None:
    """Drill history with RTO achieved over time (newest first)."""
    from drtool.actions.status import drill_history

    settings = _settings(ctx)
    if policy:
        settings.policy(policy)   # a clear error for a typo
    rows = drill_history(settings, policy, limit)
    if as_json:
        emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    peak = max((r["rto_achieved_s"] or 0 for r in rows), default=0) or 1
    table = Table("started (UTC)", "policy", "playbook", "result", "RTO achieved", "target", "", "RPO achieved",
                  "first failure")
    for r in rows:
        bar = "#" * max(1, round(20 * (r["rto_achieved_s"] or 0) / peak)) if r["rto_achieved_s"] else ""
        style = "green" if r["passed"] else "bold red"
        table.add_row(r["started_at"][:19], r["policy"], r["playbook"] or "-",
                      Text("passed" if r["passed"] else "FAILED", style=style),
                      _fmt(r["rto_achieved_s"]), _fmt(r["rto_target_s"]),
                      Text(bar, style="red" if r["rto_met"] is False else "cyan"),
                      _fmt(r["rpo_achieved_s"]), (r["failures"] or [""])[0][:80])
    Console().print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """One row per policy: last good backup vs RPO, last drill vs RTO, verdict."""
    from drtool.actions.status import status as policy_status

    settings = _settings(ctx)
    rows = policy_status(settings)
    if as_json:
        emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("policy", "last backup (UTC)", "age", "RPO", "last drill", "RTO achieved", "RTO", "verdict")
    for r in rows:
        d = r["last_drill"] or {}
        style = "green" if r["verdict"] == "ok" else ("yellow" if r["verdict"] == "never-drilled" else "bold red")
        table.add_row(r["policy"], (r["last_backup"] or "never")[:19], _fmt(r["backup_age_s"]),
                      _fmt(r["rpo_target_s"]), (d.get("started_at") or "never")[:19],
                      _fmt(d.get("rto_achieved_s")), _fmt(d.get("rto_target_s") or r["rto_target_s"]),
                      Text(r["verdict"], style=style))
    Console().print(table)
    for r in rows:
        if r.get("error"):
            click.echo(f"{r['policy']}: {r['error']}", err=True)


def register(group: click.Group) -> None:
    for command in (drill, drills, status):
        group.add_command(command)
