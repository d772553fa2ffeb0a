"""Policy hooks: before / after / on_failure argv lists, each with a timeout.

A hook is a program drtool does not control: it runs contained (everything it leaves
behind, double-forked daemons included, is killed when it exits or times out) and with
a clean environment: PATH, locale, HOME, TZ plus drtool's documented DRTOOL_* variables,
never the secrets drtool holds in its own environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from drtool.errors import CommandError, DrtoolError
from drtool.execute import LocalRunner


def run_hooks(stage: str, commands: Sequence[Sequence[str]], *, timeout: float,
              env: Mapping[str, str]) -> None:
    runner = LocalRunner(contain=True, inherit_env=False)
    for argv in commands:
        try:
            runner.run(argv, env=env, timeout=timeout)
        except CommandError as exc:
            raise DrtoolError(f"{stage} hook {argv[0]} failed: {exc.message}",
                              hint=f"fix or remove the hook under hooks.{stage} in the policy") from None
