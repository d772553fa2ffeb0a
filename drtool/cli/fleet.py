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


@fleet.command("validate")
@click.option("--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
@click.option("--static", is_flag=True, help="Check only the file (syntax, types, keys, URLs): no secrets.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def validate(ctx: click.Context, fleet_file: str | None, static: bool, as_json: bool) -> None:
    """Check the fleet file and resolve every secret it references; all problems with file:line:col (exit 2)."""
    from drtool.actions.fleet.validate import validate_fleet
    from drtool.errors import ConfigError

    report = validate_fleet(fleet_file, static=static)
    if as_json:
        from drtool.cli.render import emit_json
        emit_json(report.to_dict())
        ctx.exit(0 if report.valid else 2)
    if not report.valid:
        raise ConfigError(report.problems)
    click.echo(f"{report.path}: ok — {len(report.sites)} sites ({', '.join(report.sites)})"
               + (" (--static: secrets not checked)" if static else
                  f", {report.secrets_checked} secret reference(s) resolved"))


def _print_status(result) -> None:  # noqa: ANN001 - FleetStatus
    from drtool.cli.render import print_table
    from drtool.report.fleet_page import letters

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


# ---------------------------------------------------------------- the drill pool

@click.group()
def pool() -> None:
    """The drill pool: a central site runs many sites' fire drills from one PostgreSQL queue."""


@pool.command()
@click.argument("names", nargs=-1, metavar="[SITE | SITE/DRILL]...")
@click.option("--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
@click.option("--json", "as_json", is_flag=True)
def enqueue(names: tuple[str, ...], fleet_file: str | None, as_json: bool) -> None:
    """Queue the fleet's due fire drills (those named: now, due or not)."""
    from drtool.actions.pool.enqueue import enqueue as do_enqueue
    from drtool.cli.render import emit_json
    from drtool.config.fleet import load_fleet

    done = do_enqueue(load_fleet(fleet_file), list(names) or None)
    if as_json:
        emit_json([d.to_dict() for d in done])
        return
    for item in done:
        if item.outcome != "not-due" or names:
            click.echo(f"{item.site}/{item.drill}: {item.outcome}" + (f" (job {item.job_id})" if item.job_id else ""))
    click.echo(f"{sum(d.outcome == 'queued' for d in done)} drill(s) queued", err=True)


@pool.command()
@click.option("--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
@click.option("--until-empty", is_flag=True, help="Exit once the queue is empty (a Kubernetes Job); "
              "default: wait for new jobs until SIGTERM.")
@click.pass_context
def worker(ctx: click.Context, fleet_file: str | None, until_empty: bool) -> None:
    """Run queued fire drills one at a time (each in its own sandbox, with only its site's kit)."""
    from drtool.actions.pool.worker import run_worker
    from drtool.config.fleet import load_fleet

    ctx.exit(run_worker(load_fleet(fleet_file), until_empty=until_empty))


@pool.command("status")
@click.option("--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
@click.option("--json", "as_json", is_flag=True)
def pool_status(fleet_file: str | None, as_json: bool) -> None:
    """Jobs in the queue by state, and the latest results of the central catalog."""
    from drtool.actions.pool.report import pool_report
    from drtool.cli.render import emit_json, print_table
    from drtool.config.fleet import load_fleet

    report = pool_report(load_fleet(fleet_file))
    if as_json:
        emit_json(report)
        return
    click.echo("queue: " + (", ".join(f"{n} {s}" for s, n in sorted(report["jobs"].items())) or "empty"))
    print_table(["finished (UTC)", "site", "drill", "attempt", "result", "RTO achieved", "RTO", "in bucket", "error"],
                [[(r["finished_at"] or "")[:19].replace("T", " "), r["site"], r["drill"], r["attempt"], r["status"],
                  _fmt(r["rto_achieved_s"]), _fmt(r["rto_target_s"]),
                  {True: "yes", False: "NO", None: "-"}[r["offsite_record"]], (r["error"] or "")[:120]]
                 for r in report["results"]])


@pool.command("key")
@click.option("--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
def pool_key(fleet_file: str | None) -> None:
    """Print the public key the pool signs drill reports with (for `trusted_keys:` in the fleet file)."""
    from drtool.actions.pool.site_drill import pool_public_key
    from drtool.config.fleet import load_fleet

    click.echo(pool_public_key(load_fleet(fleet_file)))


def register(group: click.Group) -> None:
    group.add_command(fleet)
    group.add_command(pool)
