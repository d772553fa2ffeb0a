"""Durations as admins write them: 90s, 30m, 24h, 7d, 2w, 1h30m (pure logic)."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


UNITS_HINT = "write it with a unit: 90s, 30m, 24h, 7d or 1h30m"


def parse_duration(value: object, *, bare_numbers: bool = True) -> float:
    """Seconds from '24h', '1h30m', '45s'; a bare number is seconds only when `bare_numbers`.

    Config files are read with bare_numbers=False: `rpo: 24` meant 24 hours to its author
    and would silently be 24 seconds, so a number without a unit is refused there."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30m or 24h, got {value!r}")
    if isinstance(value, (int, float)):
        if not bare_numbers:
            raise ValueError(f"{value} has no unit; {UNITS_HINT}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 30m or 24h, got {value!r}")
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("expected a duration like 30m or 24h, got an empty string")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            raise ValueError(f"{value!r} has no unit; {UNITS_HINT}")
        raise ValueError(f"expected a duration like 30m, 24h or 1h30m, got {value!r}")
    return total


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
