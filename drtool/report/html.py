"""HTML output: the drill report and the dashboard pages, through Jinja2 templates.

Every value is autoescaped (the environment escapes everything; only the SVG
that drtool.report.charts builds is marked safe). Pages are self-contained:
CSS inline, charts inline SVG, no script, no font or image from anywhere, and
a Content-Security-Policy that forbids loading anything, so a page works from
file:// on a machine without network and cannot leak anything when opened.
Templates live in drtool/report/templates/ (package data).
"""

from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from drtool import __version__
from drtool.config.durations import format_duration
from drtool.report.units import human_bytes


@lru_cache(maxsize=1)
def environment():  # noqa: ANN201 - jinja2.Environment, imported lazily
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("drtool.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(duration=_duration, bytes=human_bytes, when=_when, day=_day, pct=pct)
    from drtool.report.charts import LEGENDS

    env.globals.update(version=__version__, legends=LEGENDS)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def _duration(seconds: float | None) -> str:
    return format_duration(seconds)


def _when(value: Any) -> str:
    if not value:
        return "never"
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt.utcoffset() is not None else dt.strftime("%Y-%m-%d %H:%M")


def _day(value: Any) -> str:
    return str(value)[:10] if value else "-"


def pct(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return "-"
    share = 100 * part / whole
    return "<1 %" if 0 < share < 1 else f"{share:.0f} %"


# ---------------------------------------------------------------- the drill report

def timeline(report: dict[str, Any]) -> dict[str, Any]:
    """Pure: each step (and its phases) placed on the drill's time axis, as percentages of the span."""
    starts = [datetime.fromisoformat(s["started_at"]) for s in report.get("steps", []) if s.get("started_at")]
    if not starts:
        return {"span_s": 0.0, "rows": []}
    origin = min(starts)
    ends = [datetime.fromisoformat(s["started_at"]).timestamp() + float(s.get("duration_s") or 0)
            for s in report["steps"] if s.get("started_at")]
    span = max(max(ends) - origin.timestamp(), 1e-6)
    rows = []
    for step in report["steps"]:
        if not step.get("started_at"):
            rows.append({"name": step["name"], "kind": step["kind"], "status": step["status"], "left": 0.0,
                         "width": 0.0, "duration_s": None, "offset_s": None, "phase": False})
            continue
        offset = datetime.fromisoformat(step["started_at"]).timestamp() - origin.timestamp()
        rows.append(_bar(step["name"], step["kind"], step["status"], offset, float(step.get("duration_s") or 0), span))
        cursor = offset
        for phase in step.get("phases", []):
            took = float(phase.get("duration_s") or 0)
            row = _bar(phase["name"], "phase", "phase", cursor, took, span)
            row.update(phase=True, bytes=phase.get("bytes"), throughput=phase.get("throughput_mb_s"))
            rows.append(row)
            cursor += took      # phases run one after the other inside their step
    return {"span_s": span, "rows": rows}


def _bar(name: str, kind: str, status: str, offset: float, took: float, span: float) -> dict[str, Any]:
    left = min(100.0, 100 * offset / span)
    return {"name": name, "kind": kind, "status": status, "offset_s": offset, "duration_s": took,
            "left": round(left, 2), "width": round(max(0.4, min(100.0 - left, 100 * took / span)), 2),
            "phase": False}


def drill_html(report: dict[str, Any], signature: dict[str, Any]) -> str:
    """The self-contained HTML page of one drill report. `signature`: {"state": valid|invalid|unsigned,
    "detail": text} for the JSON it was rendered from."""
    verified = [s for s in report.get("steps", []) if s.get("kind") in ("verify", "sql", "command", "http", "kit")]
    return render("drill.html", report=report, signature=signature, timeline=timeline(report), verified=verified,
                  title=f"drill {report.get('playbook')} - {'PASSED' if report.get('passed') else 'FAILED'}")


def signature_of(report: dict[str, Any], expected_key: str | None = None) -> dict[str, Any]:
    """The signature check of a report as the page shows it (never raises)."""
    from drtool.records import check_signature

    record = check_signature(report, expected_key, origin="file")
    return {"state": record.signature, "detail": record.signature_detail}


def write_drill_html(report: dict[str, Any], path: Path, expected_key: str | None = None) -> Path:
    """Render a (signed) drill report to `path`, with the outcome of checking its signature."""
    write_text(Path(path), drill_html(report, signature_of(report, expected_key)))
    return Path(path)


def write_text(path: Path, text: str) -> None:
    """Atomic, so a browser or the daemon's HTTP server never serves half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
