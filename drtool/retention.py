"""Retention math (pure): which snapshot sets a policy keeps.

Same rules as `restic forget --keep-*`: for each period kind, walk the sets
newest first and keep the newest set of each of the N most recent periods;
`last` keeps the N newest; `within` keeps everything younger than it. A set
kept by any rule is kept. With no rule at all everything is kept (never
delete by accident).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from drtool.config.models import Retention

_PERIODS = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def keep_indices(times: Sequence[datetime], retention: Retention, now: datetime) -> set[int]:
    """Indices of `times` to keep."""
    order = sorted(range(len(times)), key=lambda i: times[i], reverse=True)
    rules = {k: getattr(retention, k) for k in ("last", *_PERIODS)}
    if not any(v for v in rules.values()) and retention.within is None:
        return set(range(len(times)))
    keep: set[int] = set()
    if retention.last:
        keep.update(order[: retention.last])
    for name, bucket in _PERIODS.items():
        wanted = rules[name]
        if not wanted:
            continue
        seen: set[tuple] = set()
        for i in order:
            key = bucket(times[i])
            if key not in seen:
                seen.add(key)
                keep.add(i)
                if len(seen) >= wanted:
                    break
    if retention.within is not None:
        cutoff = now - timedelta(seconds=retention.within)
        keep.update(i for i in order if times[i] >= cutoff)
    return keep
