"""Policy hooks: before / after / on_failure argv lists, each with a timeout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from drtool.errors import CommandError, DrtoolError
from drtool.execute import LocalRunner


def run_hooks(stage: str, commands: Sequence[Sequence[str]], *, timeout: float,
              env: Mapping[str, str]) -> None:
    runner = LocalRunner()
    for argv in commands:
        try:
            runner.run(argv, env=env, timeout=timeout)
        except CommandError as exc:
            raise DrtoolError(f"{stage} hook {argv[0]} failed: {exc.message}",
                              hint=f"fix or remove the hook under hooks.{stage} in the policy") from None
