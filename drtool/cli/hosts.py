"""hosts trust NAME, hosts check [NAME]."""

from __future__ import annotations

import click

from drtool.cli import complete


def _settings(ctx: click.Context):
    from drtool.config import load_settings
    return load_settings(ctx.obj["config"])


@click.group()
def hosts() -> None:
    """Remote hosts reached over SSH (hosts: in drtool.yaml)."""


@hosts.command()
@click.argument("name", shell_complete=complete.hosts)
@click.option("--yes", "-y", is_flag=True, help="Record the offered key without asking.")
@click.pass_context
def trust(ctx: click.Context, name: str, yes: bool) -> None:
    """Show the host key NAME offers and record it in known_hosts after confirmation."""
    from drtool.actions.hosts import scan_host, trust_host
    from drtool.errors import DrtoolError

    settings = _settings(ctx)
    offer = scan_host(settings, name)
    click.echo(f"{offer.where} offers {offer.key.kind} key {offer.key.fingerprint}")
    if offer.status == "trusted":
        click.echo(f"already trusted in {offer.known_hosts}; nothing changed")
        return
    if offer.status == "changed":
        recorded = ", ".join(k.fingerprint for k in offer.recorded)
        click.echo(f"WARNING: {offer.known_hosts} records a DIFFERENT key for this host: {recorded}\n"
                   "Replace it only if you know the host was reinstalled or its keys rotated.", err=True)
    else:
        click.echo("This host is not in known_hosts yet. Compare the fingerprint with the one on the host\n"
                   "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) before trusting it.")
    if not yes and not click.confirm("Trust this key?", default=False):
        raise DrtoolError(f"the host key of {name} was not trusted; nothing changed")
    trust_host(settings, offer)
    click.echo(f"trusted: recorded {offer.key.fingerprint} for {name} in {offer.known_hosts}")


@hosts.command()
@click.argument("name", required=False, shell_complete=complete.hosts)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, one object per host.")
@click.pass_context
def check(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Connect to NAME (or every host) and report remote tool versions and policy needs."""
    from drtool.actions.hosts import check_hosts
    from drtool.errors import DrtoolError

    settings = _settings(ctx)
    reports = check_hosts(settings, name)
    if as_json:
        import dataclasses

        from drtool.cli.render import emit_json
        emit_json([dataclasses.asdict(r) | {"ok": r.ok} for r in reports])
    elif not reports:
        click.echo("no hosts in drtool.yaml")
    for report in reports if not as_json else ():
        _print_report(report)
    failed = [r.host for r in reports if not r.ok]
    if failed:
        # An error (not ctx.exit) so the exit status is 1 however the CLI is driven.
        raise DrtoolError(f"host check failed for {', '.join(failed)}", hint="see the report above")


def _print_report(report) -> None:
    click.echo(f"{'OK' if report.ok else 'FAILED'}  {report.host}  {report.where}")
    if report.error:
        click.echo("  " + report.error.replace("\n", "\n  "))
        return
    for tool in report.tools.values():
        found = f"{tool.version or 'version unknown'}  ({tool.path})" if tool.path else "not found"
        click.echo(f"  {tool.program:<14} {found}")
    for needs in report.policies:
        state = "ready" if needs.ok else "missing " + ", ".join(needs.missing)
        click.echo(f"  policy {needs.policy}: {state}")


def register(group: click.Group) -> None:
    group.add_command(hosts)
