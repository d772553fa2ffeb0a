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
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def validate(ctx: click.Context, as_json: bool) -> None:
    """Check drtool.yaml, every policy and every playbook; report all problems with file:line."""
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    summary = {"config": str(settings.path), "policies": sorted(settings.policies),
               "playbooks": sorted(settings.playbooks), "valid": True}
    if as_json:
        from drtool.cli.render import emit_json
        emit_json(summary)
        return
    click.echo(f"{settings.path}: ok — {len(settings.policies)} policies ({', '.join(summary['policies']) or 'none'}), "
               f"{len(settings.playbooks)} playbooks ({', '.join(summary['playbooks']) or 'none'})")


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo's files here (default: a temp dir, removed afterwards).")
@click.option("--json", "as_json", is_flag=True)
def demo(workdir: Path | None, as_json: bool) -> None:
    """Run the whole story on loopback: local S3 server, sample data, backup, restore drill, verdict."""
    from drtool.actions.demo import run_demo

    ok = run_demo(workdir, as_json=as_json, echo=lambda m: click.echo(m, err=as_json))
    raise SystemExit(0 if ok else 1)


def register(group: click.Group) -> None:
    for command in (init, validate, demo):
        group.add_command(command)
