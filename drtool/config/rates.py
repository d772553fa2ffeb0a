"""Bandwidth limits as admins write them: 512 (KiB/s), 2MiB/s, 10 MB/s, 8Mbit/s (pure logic).

restic takes --limit-upload / --limit-download in KiB/s, so every form becomes whole KiB/s.
"""

from __future__ import annotations

import re

# bytes per second of one unit
_UNITS = {
    "b": 1, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
    "kbit": 1000 / 8, "mbit": 1000 ** 2 / 8, "gbit": 1000 ** 3 / 8,
}
_RATE = re.compile(r"(\d+(?:\.\d+)?)([a-z]*)(?:/s)?")


def parse_rate(value: object) -> int:
    """KiB/s from a bare number (already KiB/s) or a number with a unit."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a rate like 512 (KiB/s), 2MiB/s or 8Mbit/s, got {value!r}")
    if isinstance(value, (int, float)):
        kib = float(value)
    else:
        match = _RATE.fullmatch(value.strip().lower().replace(" ", ""))
        if match is None or (match.group(2) and match.group(2) not in _UNITS):
            raise ValueError(f"expected a rate like 512 (KiB/s), 2MiB/s, 10MB/s or 8Mbit/s, got {value!r}")
        number, unit = float(match.group(1)), match.group(2)
        kib = number if not unit else number * _UNITS[unit] / 1024
    if kib < 1:
        raise ValueError(f"a rate limit must be at least 1 KiB/s, got {value!r} "
                         "(leave the key out for no limit)")
    return int(kib)
