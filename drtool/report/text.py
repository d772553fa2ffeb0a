"""Plain-text renderings shared by the terminal and the HTML pages (pure)."""

from __future__ import annotations

from drtool.config.durations import format_duration as _fmt
from drtool.report.html import human_bytes


def forecast_lines(data: dict) -> list[str]:
    """The forecast as text with units (the terminal view of what the dashboard charts)."""
    head = f"forecast {data['policy']}:"
    if data["status"] == "insufficient":
        return [f"{head} {data['message']}"]
    preds = {p["days"]: p for p in data["predictions"]}
    parts = []
    for days, p in sorted(preds.items()):
        when = "now" if days == 0 else f"+{days}d"
        parts.append(f"{when} {_fmt(p['rto_s'])} ({_fmt(p['low_s'])}-{_fmt(p['high_s'])})")
    target = f"target {_fmt(data['target_s'])}" if data.get("target_s") else "no RTO target"
    lines = [f"{head} RTO {', '.join(parts)}; {target}; 95 % band in brackets"]
    if data.get("breach_at"):
        pess = f" (pessimistic {data['breach_at_pessimistic'][:10]})" if data.get("breach_at_pessimistic") else ""
        lines.append(f"  predicted breach: {data['breach_at'][:10]}{pess} [{data['status']}]")
    elif data.get("target_s"):
        lines.append(f"  {data['message']}")
    growth = data.get("growth") or {}
    if growth:
        lines.append(f"  data: {human_bytes(growth.get('bytes_now'))} now, "
                     f"{human_bytes(growth.get('bytes_per_day'))}/day")
    if data.get("dominant_phase"):
        lines.append(f"  dominant phase: {data['dominant_phase']}: {data['advice']}")
    lines += [f"  note: {n}" for n in data.get("notes", [])]
    return lines
