"""drill, drills, status."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from drtool.cli import complete
from drtool.cli.render import emit_json

if TYPE_CHECKING:
    from drtool.events import ProgressEvent


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

    def __call__(self, event: ProgressEvent) -> None:
        # Imported here: `--help` skips building the event classes.
        from drtool.events import Notice, StepDone, StepStarted

        if self.quiet:
            return
        if isinstance(event, StepStarted):
            click.echo(f"  {event.step} ({event.kind}) ...", err=True)
        elif isinstance(event, StepDone):
            click.echo(f"  {event.step}: {event.status} in {_fmt(event.duration_s)}", err=True)
        elif isinstance(event, Notice):
            click.echo(f"  note: {event.message}", err=True)


@click.command()
@click.argument("playbook", shell_complete=complete.playbooks)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a JUnit XML report to FILE.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write <id>.json and <id>.junit.xml into DIR.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report to FILE.")
@click.option("--keep", is_flag=True, help="Leave scratch instances running and print how to reach them.")
@click.option("--host", help="Drill another machine's backups (its restic --host); default this machine's.")
@click.option("--dry-run", is_flag=True, help="Show what each step would restore, from which set, into where, how "
                                              "many bytes and which checks; start nothing, record nothing.")
@click.pass_context
def drill(ctx: click.Context, playbook: str, as_json: bool, junit_file: Path | None, report_dir: Path | None,
          html_file: Path | None, keep: bool, host: str | None, dry_run: bool) -> None:
    """Run the restore drill PLAYBOOK (a name or a YAML file); exit 0 when it passed."""
    from drtool.actions.drill import run_drill
    from drtool.actions.drill.reports import write_reports
    from drtool.errors import DrillFailed
    from drtool.report.drill import print_report

    settings = _settings(ctx)
    book = settings.playbook(playbook)
    if dry_run:
        _dry_run(ctx, settings, book, host, as_json)
        return
    if not as_json:
        click.echo(f"drill {book.name}: policy {book.policy}, snapshot {book.snapshot!r}", err=True)
    report = run_drill(settings, book, keep=keep, on_event=StepPrinter(as_json), host=host)
    data = report.to_dict()
    write_reports(settings, data, junit_file=junit_file, report_dir=report_dir, html_file=html_file)
    if as_json:
        emit_json(data)
    else:
        print_report(data)
    if not report.passed:
        # An error, not ctx.exit(1): exit code 1 and one line on stderr naming what failed.
        raise DrillFailed(f"drill {book.name} failed: " + "; ".join(report.failures)[:1500])


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for index.html, one page per policy and the recent drill reports.")
@click.option("--offsite", "offsite", flag_value="always", default="auto",
              help="Also read the signed records offsite (default: only when the local catalog has no drills).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_context
def dashboard(ctx: click.Context, out_dir: Path, offsite: str, as_json: bool) -> None:
    """Write the static HTML dashboard (works from file://, no network, no JavaScript)."""
    from drtool.actions.dashboard import build_dashboard

    dash = build_dashboard(_settings(ctx), out_dir, offsite=offsite)  # type: ignore[arg-type]
    summary = {"out": str(out_dir), "index": str(out_dir / "index.html"), "origins": dash.origins,
               "policies": {p.name: {"page": str(out_dir / p.filename), "problems": p.row["problems"],
                                     "invalid_records": p.signatures.invalid} for p in dash.policies}}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote {summary['index']} ({len(dash.policies)} policies"
               f"{', ' + str(dash.invalid_records) + ' records with an INVALID signature' if dash.invalid_records else ''})")


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
    """Drill history with RTO achieved vs target (newest first), then each policy's forecast."""
    from drtool.actions.status import drill_history

    settings = _settings(ctx)
    if policy:
        settings.policy(policy)   # a clear error for a typo
    rows = drill_history(settings, policy, limit)
    if as_json:
        emit_json(rows)
        return
    from drtool.cli.render import print_table

    table, styles = [], []
    for r in rows:
        table.append([(r["started_at"] or "")[:19].replace("T", " "), r["policy"], r["playbook"] or "-",
                      "passed" if r["passed"] else "FAILED", _fmt(r["rto_achieved_s"]), _fmt(r["rto_target_s"]),
                      _of_target(r["rto_achieved_s"], r["rto_target_s"]), _fmt(r["rpo_achieved_s"]),
                      _signature_word(r), (r["failures"] or [""])[0]])
        bad = "bold red" if r["rto_met"] is False else None
        styles.append([None, None, None, "green" if r["passed"] else "bold red", bad, None, bad, None,
                       "bold red" if r["signature"] == "invalid" else None, "red"])
    print_table(["started (UTC)", "policy", "playbook", "result", "RTO achieved", "RTO target", "of target",
                 "RPO achieved", "record", "first failure"], table, styles=styles, right=frozenset({4, 5, 6, 7}))
    _print_forecasts(ctx, settings, [policy] if policy else sorted({r["policy"] for r in rows}))


def _of_target(achieved: float | None, target: float | None) -> str:
    """RTO achieved as a share of the target: '72 % of 30m' reads without a scale bar."""
    from drtool.report.html import pct
    return pct(achieved, target)


def _signature_word(row: dict) -> str:
    return {"local": "local", "valid": "offsite, signed", "invalid": "SIGNATURE INVALID",
            "unsigned": "offsite, unsigned"}.get(row.get("signature") or "local", "local")


def _print_forecasts(ctx: click.Context, settings, names: list[str]) -> None:  # noqa: ANN001
    from drtool.actions.forecast import policy_forecast
    from drtool.actions.history import OffsiteCache, load_history
    from drtool.catalog import Catalog

    catalog, cache = Catalog(settings.state_dir), OffsiteCache(settings)
    for name in names:
        policy = settings.policy(name)
        result = policy_forecast(settings, policy, load_history(settings, policy, catalog, cache=cache))
        from drtool.report.text import forecast_lines
        for line in forecast_lines(result.to_dict()):
            click.echo(line)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array, one object per policy.")
@click.option("--nagios", is_flag=True, help="One line and exit code for Nagios/Icinga: 0 OK, 1 WARNING, "
              "2 CRITICAL, 3 UNKNOWN.")
@click.option("--horizon", metavar="DURATION", help="Flag forecast breaches within this time "
              "(default: forecast.horizon in drtool.yaml, 90d).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, nagios: bool, horizon: str | None) -> None:
    """One row per policy: last good backup vs RPO, last drill vs RTO, forecast, verdict.

    Exit code: 0 every policy is fine (warnings such as a forecast breach are shown but do not fail),
    1 at least one policy has a problem (rpo-breach, wal-gap, backup-failed, rto-breach, drill-failed,
    never-drilled, check-failed, check-overdue, forget-failed, copy-failed), 2 bad usage/configuration.
    Under the table: each policy's 3-2-1-1-0 letters and what to do about those that fall short.
    PITR sources also show their recoverable window, newest WAL offsite, gaps and timelines.
    """
    if nagios:
        ctx.exit(_nagios(ctx, horizon))
    rows = _status_rows(ctx, horizon)
    if as_json:
        emit_json(rows)
    else:
        _print_status(rows)
    ctx.exit(1 if any(r["problems"] for r in rows) else 0)


def _status_rows(ctx: click.Context, horizon: str | None) -> list[dict]:
    from drtool.actions.status import status as policy_status
    from drtool.config.durations import parse_duration
    from drtool.errors import UsageError

    try:
        days = parse_duration(horizon) / 86400 if horizon else None
    except ValueError as exc:
        raise UsageError(f"--horizon {horizon!r}: {exc}", hint="a duration such as 30d or 12w") from None
    return policy_status(_settings(ctx), horizon_days=days)


def _print_status(rows: list[dict]) -> None:
    from drtool.cli.render import print_table

    table, styles = [], []
    for r in rows:
        table.append(_status_cells(r))
        style = "green" if not r["problems"] else ("yellow" if r["verdict"] == "never-drilled" else "bold red")
        styles.append([None] * 9 + [style])
    print_table(["policy", "last backup (UTC)", "age", "RPO", "last drill", "RTO achieved", "RTO",
                 "RTO in 90d", "breach by", "verdict"], table, styles=styles, right=frozenset({2, 3, 5, 6, 7}))
    for r in rows:
        _print_status_notes(r)


def _status_cells(r: dict) -> list[str]:
    d = r["last_drill"] or {}
    f = r["forecast"]
    p90 = next((p for p in f["predictions"] if p["days"] == 90), None)
    return [r["policy"], (r["last_backup"] or "never")[:19].replace("T", " "), _fmt(r["backup_age_s"]),
            _fmt(r["rpo_target_s"]), (d.get("started_at") or "never")[:19].replace("T", " "),
            _fmt(d.get("rto_achieved_s")), _fmt(d.get("rto_target_s") or r["rto_target_s"]),
            _fmt(p90["rto_s"]) if p90 else "-", (f.get("breach_at") or "-")[:10], " ".join(r["problems"]) or "ok"]


def _print_status_notes(r: dict) -> None:
    """Under the table, per policy: PITR windows, errors, warnings, 3-2-1-1-0, the forecast."""
    from drtool.report.text import forecast_lines

    for name, view in (r.get("pitr") or {}).items():
        for line in _pitr_lines(f"{r['policy']}/{name}", view):
            click.echo(line)
    if r.get("error"):
        click.echo(f"{r['policy']}: {r['error']}", err=True)
    for w in r["warnings"]:
        click.echo(f"{r['policy']}: warning: {w['code']}: {w['message']}")
    for line in [*rule_lines(r), *forecast_lines(r["forecast"])]:
        click.echo(line)


def rule_lines(row: dict) -> list[str]:
    """The 3-2-1-1-0 view of one status row: one line, then a line per letter that falls short."""
    rule = row.get("rule_32110")
    if not rule:
        return []
    marks = " ".join(f"{k}{'+' if rule['letters'][k] else '-'}" for k in ("3", "2", "1o", "1i", "0"))
    lines = [f"{row['policy']}: 3-2-1-1-0 [{marks}] {rule['detail']}"]
    for letter in rule["assessment"]:
        if not letter["met"]:
            lines.append(f"  {letter['letter']} ({letter['name']}): {letter['detail']}; to do: {letter['advice']}")
    return lines


def _pitr_lines(name: str, view: dict) -> list[str]:
    """Window, newest WAL, timelines and gaps of one PITR source, for people."""
    day = lambda t: (t or "?")[:19].replace("T", " ")  # noqa: E731
    windows = ", ".join(f"{day(w['from'])} .. {day(w['to'])}" for w in view["windows"]) or "none"
    newest = f"{day(view['newest_wal'])} ({view['newest_segment']})" if view["newest_wal"] else "none"
    lines = [f"{name}: PITR window (UTC) {windows}; newest WAL offsite {newest}; "
             f"{view['base_backups']} base backup(s); timelines "
             + (", ".join(str(t["timeline"]) for t in view["timelines"]) or "-")]
    lines += [f"{name}: wal-gap: {g['message']}" for g in view["gaps"]]
    if view.get("missing_history"):
        lines.append(f"{name}: warning: no history file offsite for timeline(s) "
                     + ", ".join(str(t) for t in view["missing_history"]))
    return lines


def _nagios(ctx: click.Context, horizon: str | None) -> int:
    """Nagios plugin output: one status line with perfdata, exit 0/1/2/3 (UNKNOWN when status itself fails)."""
    from drtool.actions.status import nagios_state
    from drtool.errors import DrtoolError

    try:
        rows = _status_rows(ctx, horizon)
    except DrtoolError as exc:
        click.echo(f"DRTOOL UNKNOWN - {exc.message.splitlines()[0]}")
        return 3
    click.echo(nagios_line(rows))
    return nagios_state(rows)


def nagios_line(rows: list[dict]) -> str:
    from drtool.actions.status import nagios_state

    state = ("OK", "WARNING", "CRITICAL")[nagios_state(rows)]
    bad = [f"{r['policy']} {','.join(r['problems'] + [w['code'] for w in r['warnings']])}"
           for r in rows if r["problems"] or r["warnings"]]
    summary = "; ".join(bad) if bad else f"{len(rows)} policies ok"
    perf = []
    for r in rows:
        if r["backup_age_s"] is not None:
            perf.append(f"'{r['policy']}_backup_age'={r['backup_age_s']:.0f}s;;{_num(r['rpo_target_s'])}")
        rto = (r["last_drill"] or {}).get("rto_achieved_s")
        if rto is not None:
            perf.append(f"'{r['policy']}_rto'={rto:.1f}s;;{_num(r['rto_target_s'])}")
    return f"DRTOOL {state} - {summary}" + (" | " + " ".join(perf) if perf else "")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def register(group: click.Group) -> None:
    for command in (drill, drills, status, dashboard):
        group.add_command(command)
