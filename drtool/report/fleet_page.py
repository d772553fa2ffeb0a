"""The fleet page: every site and policy in one self-contained HTML table (drtool.report.html's rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drtool.report.html import render, write_text


def letters(rule: dict[str, Any] | None) -> str:
    """'3 2 1 1 0', a '-' for each letter not met, '?' for unknown; 'not assessed' without a rule."""
    if not rule:
        return "not assessed"
    marks = rule.get("letters") or {}
    return " ".join(label if marks.get(key) else ("?" if marks.get(key) is None else "-")
                    for key, label in (("3", "3"), ("2", "2"), ("1o", "1"), ("1i", "1"), ("0", "0")))


def rto_in(forecast: dict[str, Any] | None, days: int) -> float | None:
    """The forecast RTO in `days` days, or None when there is no forecast."""
    return next((p["rto_s"] for p in (forecast or {}).get("predictions") or [] if p.get("days") == days), None)


def fleet_html(status: Any) -> str:
    """`status`: drtool.actions.fleet.status.FleetStatus."""
    return render("fleet.html", fleet=status.to_dict(), generated_at=status.generated_at, letters=letters, rto_in=rto_in,
                  title=f"drtool fleet: {len(status.breached)} of {len(status.sites)} sites in breach")


def write_fleet_page(status: Any, path: Path) -> Path:
    write_text(Path(path), fleet_html(status))
    return Path(path)
