"""init, validate, demo."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def init(directory: Path, force: bool) -> None:
    """Scaffold a commented drtool.yaml, an example policy and a playbook in DIRECTORY."""
    from drtool.actions.scaffold import scaffold

    for path in scaffold(directory, force=force):
        click.echo(f"wrote {path}")
    click.echo(f"next: edit {directory / 'drtool.yaml'}, then `drtool -c {directory / 'drtool.yaml'} validate`")


@click.command()
@click.option("--offline", is_flag=True, help="Do not contact S3 endpoints or SSH hosts (secrets and paths are still checked).")
@click.option("--static", is_flag=True,
              help="Check only the files (syntax, types, references between them): no secrets, paths or servers.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def validate(ctx: click.Context, offline: bool, static: bool, as_json: bool) -> None:
    """Check drtool.yaml, every policy and playbook, every secret and path; report all problems with file:line:col."""
    from drtool.actions.validate import validate_setup
    from drtool.errors import ConfigError

    report = validate_setup(ctx.obj["config"], offline=offline, static=static)
    if as_json:
        from drtool.cli.render import emit_json
        emit_json(report.to_dict())
        ctx.exit(0 if report.valid else 2)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if not report.valid:
        raise ConfigError(report.problems)
    click.echo(f"{report.config}: ok — {len(report.policies)} policies ({', '.join(report.policies) or 'none'}), "
               f"{len(report.playbooks)} playbooks ({', '.join(report.playbooks) or 'none'})"
               + ("" if static else f", {report.secrets_checked} secret reference(s) resolved"))


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo's files here (default: a temp dir, removed afterwards).")
@click.option("--json", "as_json", is_flag=True)
def demo(workdir: Path | None, as_json: bool) -> None:
    """Run the whole story on loopback: local S3 server, sample data, backup, restore drill, verdict."""
    from drtool.actions.demo import run_demo
    from drtool.cli.render import emit_json
    from drtool.report.drill import print_report

    ok = run_demo(workdir, echo=lambda m: click.echo(m, err=as_json), show=emit_json if as_json else print_report)
    raise SystemExit(0 if ok else 1)


@click.command()
@click.argument("kind", type=click.Choice(["config", "policy", "playbook", "fleet"]))
@click.option("--path", "show_path", is_flag=True, help="Print where the shipped copy is instead (for editors).")
def schema(kind: str, show_path: bool) -> None:
    """Print the JSON Schema of drtool.yaml (config), a policy or a playbook."""
    from drtool.config.schema import schema_text, shipped_path

    click.echo(str(shipped_path(kind)) if show_path else schema_text(kind), nl=show_path)


def register(group: click.Group) -> None:
    for command in (init, validate, schema, demo):
        group.add_command(command)
