"""The building blocks of every configuration model: the frozen, strict base model, durations
with units, names, argv lists."""

from __future__ import annotations

from typing import Annotated

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


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
