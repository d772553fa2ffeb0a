"""Shell completion of policy, playbook, host and repository names (click's shell_complete).

Activated with click's standard hook, e.g. `eval "$(_DRTOOL_COMPLETE=bash_source drtool)"`
(zsh_source, fish_source for the others). The names come from the configuration the
command line points at (`-c FILE`, $DRTOOL_CONFIG, ./drtool.yaml, /etc/drtool/drtool.yaml),
read quietly: a broken or missing configuration completes nothing and prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import CompletionItem


def _names(ctx: click.Context, pick: Callable[[Any], list[str]]) -> list[str]:
    try:
        from drtool.config.loader import load_all

        loaded = load_all(ctx.find_root().params.get("config_path"))
        return sorted(pick(loaded))
    except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
        return []


def _complete(pick: Callable[[Any], list[str]]) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(n) for n in _names(ctx, pick) if n.startswith(incomplete)]
    return complete


policies = _complete(lambda loaded: list(loaded.policies))
playbooks = _complete(lambda loaded: list(loaded.playbooks))
hosts = _complete(lambda loaded: list(loaded.config.hosts) if loaded.config else [])
repositories = _complete(lambda loaded: list(loaded.config.repositories) if loaded.config else [])
