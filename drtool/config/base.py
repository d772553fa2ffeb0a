"""The building blocks of every configuration model: the frozen, strict base model, durations, sizes
with units, names, argv lists."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema

from drtool.config.durations import parse_duration
from drtool.config.rates import parse_rate


def _duration(value: object, info: ValidationInfo) -> float:
    # Files are validated with context {"file": True}: there a bare number is refused (no unit);
    # Python callers may still pass seconds.
    return parse_duration(value, bare_numbers=not (info.context or {}).get("file"))


DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*[smhdwSMHDW]\s*)+$"
Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(
    {"type": "string", "pattern": DURATION_PATTERN, "description": "a duration with a unit: 90s, 30m, 24h, 7d, 1h30m"})]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "ASCII letters, digits, `_ . -`, up to 64 characters, starting with a letter or digit"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description=f"a name: {NAME_RULE}")]
Argv = Annotated[list[str], Field(min_length=1)]
Rate = Annotated[int, BeforeValidator(parse_rate)]          # KiB/s

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(value: object) -> int:
    """Bytes from '512M', '4G', '2GiB' (binary units); a bare integer is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 512M or 4G, got {value!r}")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower())
    if not match:
        raise ValueError(f"expected a size like 512M or 4G, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[KMGTkmgt]?(i?[Bb])?\s*$",
     "description": "a size: 512M, 4G, 2GiB (binary units)"})]


class Model(BaseModel):
    # defer_build: a model's validator is built when it is first used, not when its class is
    # defined, so a command pays only for the models it reads (`drtool validate` cold start).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


M = TypeVar("M", bound=BaseModel)


def defaults(model: type[M]) -> M:
    """`model()` (every field at its default) as a field's default value, without building the
    model's validator at import: pydantic does not validate defaults, so it is the same value.
    tests/unit/test_config_defaults.py checks that it equals `model()` for each use."""
    return model.model_construct()
