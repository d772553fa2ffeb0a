"""Secret references in config: {env: NAME}, {file: PATH}, {command: [argv...]}."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from drtool.errors import ConfigError
from drtool.secrets import Secret


SECRET_EXPECTED = ("a secret reference {env: NAME}, {file: PATH} or {command: [argv...]} was expected; "
                   "the value is not shown")


class SecretRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    env: str | None = None
    file: str | None = None
    command: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _reference_only(cls, data: Any) -> Any:
        # Whatever stands here may be a password typed inline: errors must never quote it,
        # so wrong shapes are refused here with messages that carry no input.
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError(SECRET_EXPECTED)
        for key in ("env", "file"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"{key}: expects a {'variable name' if key == 'env' else 'file path'}; "
                                 "the value is not shown")
        argv = data.get("command")
        if argv is not None and not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError("command: expects an argv list such as [pass, show, drtool/offsite]; the value is not shown")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        given = [k for k in ("env", "file", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a secret is exactly one of {env: NAME}, {file: PATH} or {command: [argv...]}"
                + (f", got {' and '.join(given)}" if given else "")
            )
        if self.command is not None and not self.command:
            raise ValueError("command: needs at least the program name")
        return self

    def describe(self) -> str:
        if self.env is not None:
            return f"env:{self.env}"
        if self.file is not None:
            return f"file:{self.file}"
        return f"command:{(self.command or ['?'])[0]}"

    def resolve(self, *, timeout: float = 60.0) -> Secret:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"secret env:{self.env} is not set", hint=f"export {self.env}=... before running drtool")
            return Secret(value)
        if self.file is not None:
            return Secret(_read_secret_file(Path(self.file)))
        assert self.command is not None
        return Secret(_run_secret_command(self.command, timeout))


def _run_secret_command(argv: list[str], timeout: float) -> str:
    from drtool.errors import CommandError
    from drtool.execute import LocalRunner

    try:
        result = LocalRunner().run(argv, timeout=timeout, check=False)
    except CommandError as exc:
        # Neither stderr nor stdout is shown: a password helper may echo what it was given.
        why = f"took longer than {timeout:g}s" if exc.returncode is None else "could not run (not found?)"
        raise ConfigError(f"secret command {argv[0]} {why}") from None
    if result.returncode != 0:
        raise ConfigError(f"secret command {argv[0]} exited with code {result.returncode}")
    value = result.stdout.decode("utf-8", "replace").rstrip("\r\n")
    if not value:
        raise ConfigError(f"secret command {argv[0]} printed nothing")
    return value


def _read_secret_file(path: Path) -> str:
    try:
        st = path.stat()
        value = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"secret file {path} cannot be read: {exc.strerror}",
                          hint="create it with mode 0600, holding only the secret") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"secret file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                          hint=f"chmod 600 {path}")
    if not value:
        raise ConfigError(f"secret file {path} is empty")
    return value


def secret_refs(value: Any, loc: tuple = ()) -> Iterator[tuple[tuple, SecretRef]]:
    """Every secret reference inside a model, with its key path (aliases as written in the file)."""
    if isinstance(value, SecretRef):
        yield loc, value
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from secret_refs(getattr(value, name), (*loc, info.alias or name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from secret_refs(item, (*loc, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from secret_refs(item, (*loc, key))


def referenced_env_names(*roots: Any) -> set[str]:
    """Every NAME of an {env: NAME} reference anywhere in these models (pure walk)."""
    names: set[str] = set()
    todo: list[Any] = list(roots)
    while todo:
        item = todo.pop()
        if isinstance(item, SecretRef):
            if item.env:
                names.add(item.env)
        elif isinstance(item, BaseModel):
            todo.extend(getattr(item, name) for name in type(item).model_fields)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            todo.extend(item)
    return names
