"""fleet status; pool enqueue/worker/status (the central site's commands, reading a fleet file)."""

from __future__ import annotations

from pathlib import Path

import click

FLEET_HELP = "The fleet file (default: $DRTOOL_FLEET, ./fleet.yaml, /etc/drtool/fleet.yaml)."


def _fmt(seconds: float | None) -> str:
    from drtool.config.durations import format_duration
    return format_duration(seconds)


@click.group()
def fleet() -> None:
    """Many sites at a glance, from the signed records in their buckets (read-only)."""


@fleet.command("status")
@click.option("--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Only this site (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: summary, breached sites, every site.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the fleet page (self-contained HTML) to FILE.")
@click.option("--no-cache", is_flag=True, help="Read every record again (the cache is neither used nor written).")
@click.pass_context
def status(ctx: click.Context, fleet_file: str | None, sites: tuple[str, ...], as_json: bool, html_file: Path | None,
           no_cache: bool) -> None:
    """Per site and policy: last good backup vs RPO, last drill vs RTO, forecast, 3-2-1-1-0, verdict.

    Exit code: 0 every site is fine, 1 at least one site is in breach (a policy problem as in
    `drtool status`, a bucket that cannot be read, a site without records), 2 bad usage/configuration.
    """
    from drtool.actions.fleet.status import fleet_status
    from drtool.cli.render import emit_json
    from drtool.config.fleet import load_fleet

    result = fleet_status(load_fleet(fleet_file), list(sites) or None, use_cache=not no_cache)
    if html_file is not None:
        from drtool.report.fleet_page import write_fleet_page
        write_fleet_page(result, html_file)
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_status(result)
    ctx.exit(1 if result.breached else 0)


def _print_status(result) -> None:  # noqa: ANN001 - FleetStatus
    from drtool.cli.render import print_table

    table, styles = [], []
    for site in result.sites:
        for row in site["policies"] or [_empty_row(site)]:
            drill = row.get("last_drill") or {}
            p90 = next((p for p in (row.get("forecast") or {}).get("predictions", []) if p["days"] == 90), None)
            codes = site["problems"] + row.get("problems", [])
            table.append([site["site"], row.get("policy") or "-", _fmt(row.get("backup_age_s")),
                          _fmt(row.get("rpo_target_s")), (drill.get("started_at") or "never")[:10],
                          _fmt(drill.get("rto_achieved_s")), _fmt(row.get("rto_target_s")),
                          _fmt(p90["rto_s"]) if p90 else "-", letters(row.get("rule_32110")),
                          " ".join(dict.fromkeys(codes)) or "ok"])
            styles.append([None] * 9 + ["green" if not codes else "bold red"])
    print_table(["site", "policy", "backup age", "RPO", "last drill", "RTO achieved", "RTO", "RTO in 90d",
                 "3-2-1-1-0", "verdict"], table, styles=styles, right=frozenset({2, 3, 5, 6, 7}))
    for site in result.sites:
        if site["error"]:
            click.echo(f"{site['site']}: {site['error']}", err=True)
        for bad in site["invalid_records"]:
            click.echo(f"{site['site']}: record {bad['id']} {bad['signature'].upper()}, not used "
                       f"({bad['detail']}; it claims: {bad['claims']})")
    summary = result.to_dict()["summary"]
    click.echo(f"{summary['sites']} sites, {summary['sites_in_breach']} in breach; {summary['policies']} policies; "
               f"read in {summary['seconds']:.1f}s ({summary['fetched']} records fetched, {summary['cached']} cached)")


def _empty_row(site: dict) -> dict:
    return {"policy": None, "problems": []}


def letters(rule: dict | None) -> str:
    """'3 2 1 1 0' with a '-' for each letter not met, or '?' when the site does not say."""
    if not rule:
        return "?"
    marks = rule.get("letters") or {}
    return " ".join(label if marks.get(key) else ("?" if marks.get(key) is None else "-")
                    for key, label in (("3", "3"), ("2", "2"), ("1o", "1"), ("1i", "1"), ("0", "0")))


def register(group: click.Group) -> None:
    group.add_command(fleet)
