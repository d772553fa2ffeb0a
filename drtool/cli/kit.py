"""kit create/verify/revoke, recover, runbook, verify-report (the recovery-kit topic).

Passphrases never come from argv: `--passphrase-fd N` reads one line from an
inherited file descriptor (a pipe or a 0600 file), otherwise they are asked on
the terminal with echo off (twice when a kit is created).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from drtool.cli.render import emit_json

MAX_PASSPHRASE_BYTES = 4096


def read_passphrase(fd: int | None, *, confirm: bool = False, prompt: str = "kit passphrase: ") -> str:
    """From --passphrase-fd N (first line), else from the terminal; never argv or environment.

    The passphrase is registered as a secret, so any later error text masks it.
    """
    from drtool.secrets import register

    passphrase = _read_passphrase(fd, confirm=confirm, prompt=prompt)
    register(passphrase)
    return passphrase


def _read_passphrase(fd: int | None, *, confirm: bool, prompt: str) -> str:
    from drtool.errors import UsageError

    if fd is not None:
        try:
            with os.fdopen(fd, "rb", closefd=True) as fh:
                raw = fh.read(MAX_PASSPHRASE_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read the passphrase from file descriptor {fd}: {exc.strerror}",
                             hint="open it in the calling shell, e.g. `--passphrase-fd 3 3<passphrase.txt`") from None
        if len(raw) > MAX_PASSPHRASE_BYTES:
            raise UsageError(f"file descriptor {fd} holds more than {MAX_PASSPHRASE_BYTES} bytes; "
                             "expected one line with the passphrase")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"the passphrase read from file descriptor {fd} is not UTF-8 text") from None
        passphrase = text.split("\n", 1)[0].rstrip("\r")
        if not passphrase:
            raise UsageError(f"no passphrase on file descriptor {fd} (empty first line)")
        return passphrase
    if not sys.stdin.isatty():
        raise UsageError("no passphrase: stdin is not a terminal",
                         hint="give --passphrase-fd N with the passphrase on that file descriptor")
    passphrase = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != passphrase:
        raise UsageError("the two passphrases differ; nothing was changed")
    return passphrase


_passphrase_fd = click.option("--passphrase-fd", type=click.IntRange(min=0), metavar="N",
                              help="Read the passphrase from this file descriptor (first line); "
                                   "default: ask on the terminal.")


# ---------------------------------------------------------------- kit

@click.group()
def kit() -> None:
    """Recovery kits: escrowed repository access that survives the server."""


@kit.command("create")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Kit file to write (0600; never overwritten).")
@click.option("--armor", is_flag=True, help="Write printable text with per-line checksums (for paper or a safe).")
@click.option("--with-credentials", is_flag=True, help="Also put the S3 access key and secret key in the kit.")
@_passphrase_fd
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def kit_create(ctx: click.Context, names: tuple[str, ...], out: Path, armor: bool, with_credentials: bool,
               passphrase_fd: int | None, as_json: bool) -> None:
    """Make a recovery kit for policy or repository NAME (adds a dedicated escrow key)."""
    from drtool.actions.kit import create_kit
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    passphrase = read_passphrase(passphrase_fd, confirm=True)
    summary = create_kit(settings, list(names), out, passphrase, include_credentials=with_credentials,
                         armor_text=armor)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote recovery kit {summary['file']} ({'armoured text' if armor else 'binary'}, mode 0600)")
    for repo in summary["repositories"]:
        click.echo(f"  repository {repo['name']} ({repo['url']}): escrow key {repo['escrow_key_id'][:8]}")
    click.echo(f"  policies: {', '.join(summary['policies']) or '-'}")
    click.echo(f"  S3 credentials in the kit: {'yes' if with_credentials else 'no (keep them with the kit)'}")
    click.echo(f"  sha256 {summary['sha256']}")
    click.echo("Keep the passphrase apart from the kit. Check it now with `drtool kit verify "
               f"{summary['file']}`; revoke with `drtool kit revoke {summary['file']}`.")


@kit.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_passphrase_fd
@click.option("--host", help="Whose backups (restic --host); default the host the kit was made on.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def kit_verify(ctx: click.Context, file: Path, passphrase_fd: int | None, host: str | None, as_json: bool) -> None:
    """Open the repositories with kit FILE (read-only) and list what it can recover."""
    from drtool.actions.kit import verify_kit

    report = verify_kit(file, read_passphrase(passphrase_fd), host=host)
    if as_json:
        emit_json(report)
    else:
        _print_verify(file, report)
    ctx.exit(0 if report["ok"] else 1)


def _print_verify(file: Path, report: dict[str, Any]) -> None:
    click.echo(f"kit {file}: opened (made {report['kit']['created_at']})")
    for repo in report["repositories"]:
        click.echo(f"  repository {repo['name']} ({repo['url']}): opens with escrow key "
                   f"{repo['escrow_key_id'][:8]}, {repo['snapshots']} snapshots")
        bundle = repo.get("config_bundle") or {}
        if "error" in bundle:
            click.echo(f"    config bundle: PROBLEM {bundle['error']}")
        else:
            click.echo(f"    config bundle {bundle['snapshot']} of {bundle['time'][:19]}, signature valid")
        for policy, sources in repo["policies"].items():
            click.echo(f"    policy {policy}:")
            for name, info in sources.items():
                newest = (info["newest"] or "-")[:19]
                click.echo(f"      {name} ({info['kind']}): {info['sets']} complete sets, newest {newest}")
        for name in repo.get("nothing_recoverable_for", []):
            click.echo(f"    PROBLEM: nothing recoverable for policy {name}")


@kit.command("revoke")
@click.argument("ref", metavar="FILE|KEYID")
@_passphrase_fd
@click.pass_context
def kit_revoke(ctx: click.Context, ref: str, passphrase_fd: int | None) -> None:
    """Remove the escrow key of kit FILE (or restic key KEYID): that kit no longer opens anything."""
    from drtool.actions.kit import revoke_kit
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    passphrase = read_passphrase(passphrase_fd) if passphrase_fd is not None else None
    result = revoke_kit(settings, ref, passphrase=passphrase)
    for item in result["revoked"]:
        click.echo(f"revoked escrow key {item['key_id'][:8]} of repository {item['repository']}")


# ---------------------------------------------------------------- recover

@click.command()
@click.option("--kit", "kit_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The recovery kit (binary or armoured).")
@click.option("--policy", help="Which policy to recover (needed when the kit covers several).")
@click.option("--target-root", type=click.Path(file_okay=False, path_type=Path),
              help="Restore files (and SQLite files) below this directory, with their full paths.")
@click.option("--to-original-paths", is_flag=True, help="Restore files to where they were (explicit only).")
@click.option("--pg-target", metavar="URL",
              help="postgresql://user@host:port[/db] to restore into (default: a new PostgreSQL that stays running). "
                   "Password via PGPASSWORD.")
@click.option("--snapshot", default="latest", show_default=True, help="latest, a run id or a snapshot id.")
@click.option("--force", is_flag=True, help="Restore over non-empty targets.")
@click.option("--list", "list_only", is_flag=True, help="Only list what the kit can recover.")
@click.option("--dry-run", is_flag=True, help="Show what would be recovered, from which set, into where, how many "
                                              "bytes and which checks; restore and start nothing.")
@click.option("--host", help="Whose backups (restic --host); default the host the kit was made on.")
@_passphrase_fd
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def recover(ctx: click.Context, kit_file: Path, policy: str | None, target_root: Path | None,
            to_original_paths: bool, pg_target: str | None, snapshot: str, force: bool, list_only: bool,
            dry_run: bool, host: str | None, passphrase_fd: int | None, as_json: bool) -> None:
    """Recover a policy on a fresh machine from the recovery kit alone (no drtool.yaml needed)."""
    from drtool.actions.recover import RecoverOptions
    from drtool.actions.recover import recover as run_recover

    passphrase = read_passphrase(passphrase_fd)
    options = RecoverOptions(policy=policy, target_root=target_root, original_paths=to_original_paths,
                             pg_target=pg_target, selector=snapshot, force=force, list_only=list_only,
                             host=host, dry_run=dry_run)

    def progress(event: dict[str, Any]) -> None:
        if not as_json and event.get("event") == "step_done":
            click.echo(f"  {event['step']}: {event['duration_s']:.1f}s", err=True)

    report = run_recover(kit_file, passphrase, options, on_event=progress)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_recover(report)
    ctx.exit(0 if report.ok else 1)


def _print_recover(report: Any) -> None:
    click.echo("recoverable:")
    for name, info in report.recoverable.items():
        click.echo(f"  policy {name} (repository {info['repository']})")
        for source, s in info["sources"].items():
            newest = s["sets"][-1] if s["sets"] else None
            click.echo(f"    {source} ({s['kind']}): " + (
                f"newest {newest['time'][:19]} run {newest['run']}" if newest else "NOTHING"))
    if report.policy is None:
        return
    if report.dry_run:
        _print_recover_plan(report)
        return
    click.echo(f"recovered policy {report.policy}:")
    for src in report.sources:
        state = "verified" if src.get("verified") and not src.get("problems") else "NOT VERIFIED"
        extra = f", {src['rows']} rows" if "rows" in src else (
            f", {src['files_checked']} entries" if "files_checked" in src else "")
        click.echo(f"  {src['source']} ({src['kind']}) from {src['snapshot']['run']} into {src['target']}: "
                   f"{state}{extra}")
        for problem in src.get("problems", [])[:20]:
            click.echo(f"    MISMATCH {problem}", err=True)
    for hint in report.connections:
        click.echo(hint)
    rto = report.rto_target_s
    verdict = "" if rto is None else (f" (RTO target {rto:.0f}s: {'met' if report.rto_met else 'MISSED'})")
    click.echo(f"recovery time: {report.recovery_time_s:.1f}s{verdict}")


def _print_recover_plan(report: Any) -> None:
    from drtool.cli.render import human_bytes

    click.echo(f"dry run: would recover policy {report.policy} (nothing was restored or started):")
    for src in report.sources:
        snap = src["snapshot"]
        click.echo(f"  {src['source']} ({src['kind']}) from run {snap['run']} ({snap['time'][:19]}), "
                   f"{human_bytes(src.get('bytes'))}")
        for where, state in src.get("targets", {}).items():
            click.echo(f"    into {where}: {state}")
        if src.get("target"):
            click.echo(f"    into {src['target']}")
        for check in src.get("checks", []):
            click.echo(f"    check: {check}")


# ---------------------------------------------------------------- runbook, verify-report

@click.command()
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown here (default: stdout).")
@click.option("--run", "run_id", help="Pin every command to this run id (default: latest).")
@click.option("--host", help="Whose backups (restic --host); default this machine's.")
@click.pass_context
def runbook(ctx: click.Context, name: str, out: Path | None, run_id: str | None, host: str | None) -> None:
    """Write a Markdown runbook to recover policy NAME with bare restic / pg_restore / mariadb."""
    from drtool.actions.common import restic_host
    from drtool.actions.runbook import render_runbook
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    policy = settings.policy(name)
    text = render_runbook(policy, settings.config.repositories[policy.repository],
                          host=host or restic_host(settings), snapshot_hint=run_id)
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
    group.add_command(kit)
    group.add_command(recover)
    group.add_command(runbook)
    group.add_command(verify_report)
