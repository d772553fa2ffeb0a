"""runbook, verify-report (recovery-kit topic; kit create/verify/recover are still to come)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown here (default: stdout).")
@click.option("--run", "run_id", help="Pin every command to this run id (default: latest).")
@click.pass_context
def runbook(ctx: click.Context, name: str, out: Path | None, run_id: str | None) -> None:
    """Write a Markdown runbook to recover policy NAME with bare restic / pg_restore / mariadb."""
    from drtool.actions.runbook import render_runbook
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    policy = settings.policy(name)
    text = render_runbook(policy, settings.config.repositories[policy.repository], snapshot_hint=run_id)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)


@click.command("verify-report")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", help="Expected signer (base64 Ed25519 public key, e.g. from the recovery kit).")
def verify_report(file: Path, public_key: str | None) -> None:
    """Check the Ed25519 signature of a drill report or run record."""
    from drtool.crypto.signing import verify_record
    from drtool.errors import UsageError

    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file}: not a JSON record ({exc})") from None
    verify_record(record, public_key)
    signer = record.get("signature", {}).get("public_key", "?")
    click.echo(f"{file}: signature valid (signer {signer})")


def register(group: click.Group) -> None:
    group.add_command(runbook)
    group.add_command(verify_report)
