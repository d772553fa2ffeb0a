"""The command line: parse, call an action, render, map errors to exit codes.

Each topic lives in its own module (drtool/cli/<topic>.py) exposing
`register(group)`; heavy imports happen inside the commands so that
`drtool --help` stays instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from drtool import __version__
from drtool.errors import DrtoolError

# Topic modules, in help order. Each defines register(group).
COMMAND_MODULES = [
    "drtool.cli.setup",      # init, validate, schema, demo
    "drtool.cli.backup",     # backup, snapshots, restore, forget, check, init-repo, runs
    "drtool.cli.drill",      # drill, drills, status
    "drtool.cli.schedule",   # daemon, schedule show/export
    "drtool.cli.hosts",      # hosts check/trust
    "drtool.cli.kit",        # kit create/verify/revoke, recover, runbook, verify-report
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="drtool")
@click.option("--config", "-c", "config_path", metavar="FILE", envvar=None,
              help="drtool.yaml to use (default: $DRTOOL_CONFIG, ./drtool.yaml, /etc/drtool/drtool.yaml).")
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """drtool: encrypted offsite snapshots of databases and files, and timed restore drills."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"config": config_path}


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:   # topic not built yet
                continue
            raise
        module.register(cli)


def main(argv: list[str] | None = None) -> int:
    _register_all()
    try:
        # standalone_mode=False returns ctx.exit()'s code instead of raising SystemExit.
        code = cli.main(args=argv, prog_name="drtool", standalone_mode=False)
    except DrtoolError as exc:
        click.echo(f"drtool: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("drtool: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except KeyboardInterrupt:
        click.echo("drtool: interrupted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0
