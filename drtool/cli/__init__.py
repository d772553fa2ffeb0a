"""The command line: parse, call an action, render, map errors to exit codes.

Each topic lives in its own module (drtool/cli/<topic>.py) exposing
`register(group)`; heavy imports happen inside the commands so that
`drtool --help` stays instant. A command imports only its own topic module
(`drtool validate` does not import the eight others); `--help`, completion of
command names and an unknown name import them all.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from drtool import __version__
from drtool.errors import DrtoolError

# Topic modules, each with the top-level commands its register(group) adds
# (tests/unit/test_cli_topics.py checks this table against them).
TOPICS: dict[str, tuple[str, ...]] = {
    "drtool.cli.setup": ("init", "validate", "schema", "demo"),
    "drtool.cli.backup": ("backup", "snapshots", "restore", "ls", "forget", "check", "unlock", "init-repo", "runs"),
    "drtool.cli.drill": ("drill", "drills", "status", "dashboard"),
    "drtool.cli.schedule": ("daemon", "schedule"),               # schedule show/export/install...
    "drtool.cli.hosts": ("hosts",),                              # hosts check/trust
    "drtool.cli.kit": ("kit", "recover", "runbook", "verify-report"),
    "drtool.cli.repo": ("repo",),                                # repo lock-extend, repo rollback
    "drtool.cli.fleet": ("fleet", "pool"),                       # fleet status; pool enqueue/worker/status
    "drtool.cli.pitr": ("wal-ship",),
}
_TOPIC_OF = {command: module for module, commands in TOPICS.items() for command in commands}


class _TopicGroup(click.Group):
    """Registers a topic's commands when one of them is looked up; listing them (help,
    completion) or an unknown name registers every topic, so what click shows is unchanged."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = _TOPIC_OF.get(cmd_name)
            if module is None:
                _register_all()
            else:
                importlib.import_module(module).register(self)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register_all()
        return super().list_commands(ctx)


@click.group(cls=_TopicGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="drtool")
@click.option("--config", "-c", "config_path", metavar="FILE", envvar=None,
              help="drtool.yaml to use (default: $DRTOOL_CONFIG, ./drtool.yaml, /etc/drtool/drtool.yaml).")
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines on stderr as text, or one JSON object each (journald, Loki).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, log_format: str) -> None:
    """drtool: encrypted offsite snapshots of databases and files, and timed restore drills."""
    setup_logging(logging.WARNING - 10 * min(verbose, 2), log_format)
    ctx.obj = {"config": config_path, "log_format": log_format}


def setup_logging(level: int, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from drtool.cli.render import JsonLogFormatter
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_drtool", False)]:
        root.removeHandler(old)
    handler._drtool = True  # type: ignore[attr-defined] - ours to replace when main() runs again (tests)
    root.addHandler(handler)
    root.setLevel(level)


def _register_all() -> None:
    # Every topic ships with the package: a missing one is a packaging error and must say so.
    for name in TOPICS:
        importlib.import_module(name).register(cli)
    # A command run earlier in this process registered its topic first: restore the topics'
    # order, so what lists the commands in insertion order (click-man's pages) reads the same.
    order = {command: i for i, command in enumerate(_TOPIC_OF)}
    cli.commands = dict(sorted(cli.commands.items(), key=lambda item: order.get(item[0], len(order))))


def wants_json(argv: list[str]) -> bool:
    """--json among the options (before a `--`): errors are then JSON on stdout too."""
    args = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in args


def main(argv: list[str] | None = None) -> int:
    # The output state only needs resetting when an earlier main() in this process (tests) used
    # it; importing render (and events) just for that cost `--help` 16 ms of its 0.15 s budget.
    render = sys.modules.get("drtool.cli.render")
    if render is not None:
        render.reset_output()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # standalone_mode=False returns ctx.exit()'s code instead of raising SystemExit.
        code = cli.main(args=args, prog_name="drtool", standalone_mode=False)
    except DrtoolError as exc:
        return _fail(args, exc, f"drtool: error: {exc}", exc.exit_code)
    except click.exceptions.Abort as exc:
        return _fail(args, exc, "drtool: aborted", 130)
    except click.ClickException as exc:
        if wants_json(args):
            return _fail(args, exc, f"drtool: error: {exc.format_message()}", 2)
        exc.show()
        return 2
    except KeyboardInterrupt as exc:
        return _fail(args, exc, "drtool: interrupted", 130)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0


def _fail(args: list[str], exc: BaseException, text: str, code: int) -> int:
    """One clear line on stderr; with --json also one JSON object on stdout (what a script parses),
    unless the command already printed its JSON result (a failed drill prints its report)."""
    from drtool.cli.render import emit_json, error_json, printed_json

    click.echo(text, err=True)
    if wants_json(args) and not printed_json():
        if isinstance(exc, click.ClickException):
            exc.message = exc.format_message()   # type: ignore[attr-defined]
        emit_json(error_json(exc, code))
    return code
