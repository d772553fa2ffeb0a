"""The table of topic modules (drtool.cli.TOPICS) names exactly the commands each module registers,
and a command imports its own topic module only."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from drtool.cli import TOPICS


def test_topics_table_matches_what_each_module_registers() -> None:
    for module, commands in TOPICS.items():
        group = click.Group("probe")
        importlib.import_module(module).register(group)
        assert tuple(group.commands) == commands, module
    every = [c for commands in TOPICS.values() for c in commands]
    assert len(every) == len(set(every))


def _topics_imported(*args: str) -> list[str]:
    code = ("import sys\nfrom drtool.cli import main\n"
            f"code = main({list(args)!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith('drtool.cli.') and m not in"
            " ('drtool.cli.render', 'drtool.cli.complete')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return eval(proc.stdout.strip().splitlines()[-1])   # noqa: S307 - our own repr of a list of names


def test_a_command_imports_only_its_topic() -> None:
    assert _topics_imported("schema", "--help") == ["drtool.cli.setup"]
    assert _topics_imported("hosts", "--help") == ["drtool.cli.hosts"]


def test_help_and_unknown_commands_import_every_topic() -> None:
    assert _topics_imported("--help") == sorted(TOPICS)
    assert _topics_imported("no-such-command") == sorted(TOPICS)
