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

from drtool.cli import complete
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


def read_passphrases(fd: int | None, names: list[str]) -> list[str]:
    """One passphrase per custodian: lines of --passphrase-fd N in order, else asked (twice) on the terminal."""
    from drtool.errors import UsageError
    from drtool.secrets import register

    if fd is None:
        return [read_passphrase(None, confirm=True, prompt=f"passphrase for custodian {n}: ") for n in names]
    try:
        with os.fdopen(fd, "rb", closefd=True) as fh:
            raw = fh.read(MAX_PASSPHRASE_BYTES * max(1, len(names)) + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the passphrases from file descriptor {fd}: {exc.strerror}") from None
    lines = [line.rstrip("\r") for line in raw.decode("utf-8", "replace").split("\n")]
    found = [line for line in lines if line][:len(names)]
    if len(found) < len(names):
        raise UsageError(f"file descriptor {fd} holds {len(found)} passphrase lines; "
                         f"{len(names)} custodians ({', '.join(names)}) need one each, in that order")
    for passphrase in found:
        register(passphrase)
    return found


_passphrase_fd = click.option("--passphrase-fd", type=click.IntRange(min=0), metavar="N",
                              help="Read the passphrase from this file descriptor (first line); "
                                   "default: ask on the terminal.")
_identity = click.option("--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="For kits sealed to public keys: the custodian's age identity or SSH private key.")


# ---------------------------------------------------------------- kit

@click.group()
def kit() -> None:
    """Recovery kits: escrowed repository access that survives the server."""


@kit.command("create")
@click.argument("names", nargs=-1, required=True, metavar="NAME...", shell_complete=complete.policies)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Kit file to write (0600; never overwritten). With several custodians: OUT with the "
                   "custodian's name before the suffix (siak.age -> siak.alice.age).")
@click.option("--custodian", "passphrase_custodians", multiple=True, metavar="NAME",
              help="A custodian holding a passphrase (repeat for several; each gets its own kit and escrow key).")
@click.option("--recipient", "recipients", multiple=True, metavar="NAME=PUBKEY",
              help="A custodian holding a key pair: age public key (age1...), SSH public key line, or a .pub file.")
@click.option("--armor", is_flag=True, help="Write printable text with per-line checksums (for paper or a safe).")
@click.option("--with-credentials", is_flag=True, help="Also put the S3 access key and secret key in the kit.")
@_passphrase_fd
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def kit_create(ctx: click.Context, names: tuple[str, ...], out: Path, passphrase_custodians: tuple[str, ...],
               recipients: tuple[str, ...], armor: bool, with_credentials: bool, passphrase_fd: int | None,
               as_json: bool) -> None:
    """Make a recovery kit (an age file) for policy or repository NAME, one per custodian."""
    from drtool.actions.kit import create_kit
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    custodians = _custodians(passphrase_custodians, recipients, passphrase_fd)
    passphrase = None if custodians else read_passphrase(passphrase_fd, confirm=True)
    summary = create_kit(settings, list(names), out, passphrase, custodians=custodians,
                         include_credentials=with_credentials, armor_text=armor)
    if as_json:
        emit_json(summary)
        return
    for made in summary["kits"]:
        who = f" for custodian {made['custodian']}" if made["custodian"] else ""
        click.echo(f"wrote recovery kit {made['file']}{who} (age, {'armoured text' if armor else 'binary'}, mode 0600)")
        for repo in made["repositories"]:
            click.echo(f"  repository {repo['name']} ({repo['url']}): escrow key {repo['escrow_key_id'][:8]}")
    click.echo(f"  policies: {', '.join(summary['policies']) or '-'}")
    click.echo(f"  S3 credentials in the kit: {'yes' if with_credentials else 'no (keep them with the kit)'}")
    click.echo("Open by hand: age -d FILE (see the README). Keep passphrases apart from the kits. Check now with "
               "`drtool kit verify FILE`; revoke one with `drtool kit revoke FILE`.")


def _custodians(passphrase_names: tuple[str, ...], recipients: tuple[str, ...], fd: int | None) -> list[Any]:
    from drtool.actions.kit import Custodian
    from drtool.errors import UsageError

    keyed: dict[str, list[str]] = {}
    for item in recipients:
        name, sep, key = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--recipient {item!r}: expected NAME=PUBKEY (age1..., an SSH public key or a .pub file)")
        keyed.setdefault(name.strip(), []).append(key.strip())
    both = sorted(set(keyed) & set(passphrase_names))
    if both:
        raise UsageError(f"custodian {both[0]} is given both a passphrase and a public key; age seals for one or the other")
    passphrases = read_passphrases(fd, list(passphrase_names)) if passphrase_names else []
    return ([Custodian(n, passphrase=p) for n, p in zip(passphrase_names, passphrases)]
            + [Custodian(n, recipients=tuple(keys)) for n, keys in keyed.items()])


@kit.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_passphrase_fd
@_identity
@click.option("--host", help="Whose backups (restic --host); default the host the kit was made on.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def kit_verify(ctx: click.Context, file: Path, passphrase_fd: int | None, identity: Path | None, host: str | None,
               as_json: bool) -> None:
    """Open the repositories with kit FILE (read-only) and list what it can recover."""
    from drtool.actions.kit_open import verify_kit

    passphrase = None if identity else read_passphrase(passphrase_fd)
    report = verify_kit(file, passphrase, host=host, identity=identity)
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
        if repo.get("credentials"):
            click.echo(f"    S3 credentials from {repo['credentials']}")
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
@click.argument("ref", metavar="FILE|KEYID", required=False)
@click.option("--custodian", help="Revoke every kit made here for this custodian.")
@_passphrase_fd
@_identity
@click.pass_context
def kit_revoke(ctx: click.Context, ref: str | None, custodian: str | None, passphrase_fd: int | None,
               identity: Path | None) -> None:
    """Remove the escrow keys of kit FILE (or restic key KEYID): that kit no longer opens anything.

    Other custodians' kits have their own escrow keys and keep working."""
    from drtool.actions.kit import revoke_kit
    from drtool.config import load_settings

    settings = load_settings(ctx.obj["config"])
    passphrase = read_passphrase(passphrase_fd) if passphrase_fd is not None else None
    result = revoke_kit(settings, ref, passphrase=passphrase, identity=identity, custodian=custodian)
    for item in result["revoked"]:
        click.echo(f"revoked escrow key {item['key_id'][:8]} of repository {item['repository']}")


@kit.command("upgrade")
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The new age kit.")
@click.option("--recipient", "recipients", multiple=True, metavar="PUBKEY",
              help="Seal the new kit for these public keys instead of the same passphrase.")
@click.option("--armor", is_flag=True, help="Write printable text with per-line checksums.")
@_passphrase_fd
def kit_upgrade(old: Path, out: Path, recipients: tuple[str, ...], armor: bool, passphrase_fd: int | None) -> None:
    """Rewrite a kit of the first drtool format as an age file (same escrow keys; no drtool.yaml needed)."""
    from drtool.actions.kit import upgrade_kit

    result = upgrade_kit(old, out, read_passphrase(passphrase_fd), recipients=recipients, armor_text=armor)
    click.echo(f"wrote {result['file']} (age{', armoured' if armor else ''}, mode 0600) from {result['from']}; "
               f"check it with `drtool kit verify {result['file']}`, then destroy the old copy")


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
@click.option("--at", "at", metavar="TIME|latest",
              help="PITR sources: recover base backup + WAL to this moment (ISO time, no offset = UTC) instead "
                   "of restoring their snapshot set.")
@click.option("--force", is_flag=True, help="Restore over non-empty targets.")
@click.option("--list", "list_only", is_flag=True, help="Only list what the kit can recover.")
@click.option("--dry-run", is_flag=True, help="Show what would be recovered, from which set, into where, how many "
                                              "bytes and which checks; restore and start nothing.")
@click.option("--host", help="Whose backups (restic --host); default the host the kit was made on.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where recovered database servers live (persistent; default <state_dir>/recovered, "
                   "i.e. /var/lib/drtool/recovered).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where this machine records the recovery run (default: the backed-up configuration's state_dir).")
@click.option("--no-machine-key", is_flag=True,
              help="Make no key of this machine's in the repository (fire drills: a sandbox keeps none).")
@_passphrase_fd
@_identity
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def recover(ctx: click.Context, kit_file: Path, policy: str | None, target_root: Path | None,
            to_original_paths: bool, pg_target: str | None, snapshot: str, at: str | None, force: bool,
            list_only: bool, host: str | None, data_dir: Path | None, state_dir: Path | None, dry_run: bool,
            no_machine_key: bool, passphrase_fd: int | None, identity: Path | None, as_json: bool) -> None:
    """Recover a policy on a fresh machine from the recovery kit alone (no drtool.yaml needed)."""
    from drtool.actions.recover import RecoverOptions
    from drtool.events import ProgressEvent, StepDone
    from drtool.actions.recover import recover as run_recover

    passphrase = None if identity else read_passphrase(passphrase_fd)
    options = RecoverOptions(policy=policy, target_root=target_root, original_paths=to_original_paths,
                             pg_target=pg_target, selector=snapshot, force=force, list_only=list_only,
                             host=host, data_dir=data_dir, identity=identity, state_dir=state_dir,
                             dry_run=dry_run, at=at, machine_key=not no_machine_key)

    def progress(event: ProgressEvent) -> None:
        if not as_json and isinstance(event, StepDone):
            click.echo(f"  {event.step}: {event.duration_s:.1f}s", err=True)

    report = run_recover(kit_file, passphrase, options, on_event=progress)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_recover(report)
    ctx.exit(0 if report.ok else 1)


def _print_recover(report: Any) -> None:
    for repo, source in getattr(report, "credentials", {}).items():
        if source:
            click.echo(f"repository {repo}: S3 credentials from {source}")
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
        origin = (f"base backup {src['pitr']['base_backup']['run']} + WAL to {src['pitr']['target']}"
                  if src.get("pitr") else src["snapshot"]["run"])
        click.echo(f"  {src['source']} ({src['kind']}) from {origin} into {src['target']}: {state}{extra}")
        for problem in src.get("problems", [])[:20]:
            click.echo(f"    MISMATCH {problem}", err=True)
    for hint in report.connections:
        click.echo(hint)
    for note in getattr(report, "notes", []):
        click.echo(note, err=True)
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
@click.argument("name", shell_complete=complete.policies)
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
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also render a drill report as HTML, showing the outcome of this check (also when it fails).")
def verify_report(file: Path, public_key: str | None, as_json: bool, html_file: Path | None) -> None:
    """Check the Ed25519 signature of a drill report or run record (exit 1 when it does not hold)."""
    from drtool.crypto.signing import key_fingerprint, verify_record
    from drtool.errors import UsageError

    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file}: not a JSON record ({exc})") from None
    if html_file is not None:
        if not isinstance(record, dict) or "steps" not in record:
            raise UsageError(f"{file}: --html needs a drill report (this record has no steps)")
        from drtool.report.html import write_drill_html
        write_drill_html(record, html_file, public_key)
    verify_record(record, public_key)       # raises SignatureInvalid (exit 1) after the page was written
    signer = record.get("signature", {}).get("public_key", "?")
    if as_json:
        emit_json({"file": str(file), "valid": True, "signer": signer, "signer_fingerprint": key_fingerprint(signer),
                   "kind": record.get("kind") or ("drill" if "steps" in record else None), "id": record.get("id")})
        return
    click.echo(f"{file}: signature valid (signer {signer})")


def register(group: click.Group) -> None:
    group.add_command(kit)
    group.add_command(recover)
    group.add_command(runbook)
    group.add_command(verify_report)
