"""Charts for the HTML pages: server-side SVG drawn by pygal, inlined into the page.

pygal draws real charts (axes, titles, units, legends) as SVG from Python, with no
browser-side code needed to show them. Two adjustments make the SVG fit a
self-contained page that works offline from file://:
- no JavaScript: pygal's tooltip script would come from a CDN (`js=[]`), and its
  inline config <script> is removed from the tree, so the page can forbid every
  script with its Content-Security-Policy. Values stay readable: each chart is
  followed by a table of the same numbers, and every point carries its value in
  the SVG itself (<desc class="value">, shown by the browser on hover as <title>).
- one style for all charts (system fonts, the target line red and dashed).

pygal is imported here only, when a page is built: never on the CLI start-up path.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from xml.etree import ElementTree as ET

SVG_NS = "http://www.w3.org/2000/svg"
COLORS = ("#1f6feb", "#8cb8f5", "#d1242f", "#1a7f37", "#6e7781")   # achieved, band, target, forecast, trend


def duration_unit(max_seconds: float) -> tuple[str, float]:
    """Pure: the unit that keeps axis numbers short: (name, seconds per unit)."""
    if max_seconds >= 3 * 3600:
        return "h", 3600.0
    if max_seconds >= 180:
        return "min", 60.0
    return "s", 1.0


def bytes_unit(max_bytes: float) -> tuple[str, float]:
    for name, size in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 1024.0)):
        if max_bytes >= size:
            return name, size
    return "B", 1.0


def _style():  # noqa: ANN202
    from pygal.style import Style

    return Style(background="transparent", plot_background="#ffffff", foreground="#24292f",
                 foreground_strong="#24292f", foreground_subtle="#d0d7de", opacity=".35", opacity_hover=".5",
                 colors=COLORS, font_family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
                 title_font_size=16, label_font_size=12, major_label_font_size=12, legend_font_size=12,
                 value_font_size=11, tooltip_font_size=12, guide_stroke_color="#d8dee4",
                 major_guide_stroke_color="#afb8c1", guide_stroke_dasharray="3,3",
                 major_guide_stroke_dasharray="3,3")


# Series are always added in this order (empty when there is nothing to show), so each keeps its
# colour from COLORS; the legend is HTML under the chart (LEGENDS), readable at any width.
LEGENDS = {
    "rto": [("RTO achieved (per drill)", COLORS[0]), ("forecast, 95 % band", COLORS[1]),
            ("RTO target (dashed)", COLORS[2]), ("forecast (dotted)", COLORS[3])],
    "size": [("backed up", COLORS[0]), ("growth trend (dotted)", COLORS[1])],
}


def date_format(times: list[datetime]) -> str:
    """Pure: day labels, or day and time when everything happened within three days."""
    if times and (max(times) - min(times)) < timedelta(days=3):
        return "%m-%d %H:%M"
    return "%Y-%m-%d"


def _chart(title: str, y_title: str, value_formatter: Any, times: list[datetime]):  # noqa: ANN202
    import pygal

    fmt = date_format(times)
    return pygal.DateTimeLine(
        js=[], disable_xml_declaration=True, style=_style(), title=title, x_title="date (UTC)", y_title=y_title,
        width=760, height=380, explicit_size=False, show_dots=True, dots_size=4, x_label_rotation=25,
        truncate_label=-1, show_legend=False, x_value_formatter=lambda d: d.strftime(fmt),
        value_formatter=value_formatter, show_minor_x_labels=False, x_labels_major_count=6,
        include_x_axis=True, print_values=False)


def rto_chart(drills: list[dict[str, Any]], forecast: dict[str, Any] | None, target_s: float | None) -> str:
    """RTO achieved per drill, the target line, and the forecast with its 95 % band (SVG markup).
    `drills`: {"at": datetime, "rto_s": float, "passed": bool, "id"}; `forecast`: Forecast.to_dict()."""
    preds = [p for p in (forecast or {}).get("predictions", [])]
    times = [d["at"] for d in drills] + [_dt(p["at"]) for p in preds]
    peak = max([d["rto_s"] for d in drills] + [p["high_s"] for p in preds] + [target_s or 0] + [1.0])
    unit, per = duration_unit(peak)
    chart = _chart("Recovery time (RTO) per drill, target and forecast", f"RTO ({unit})",
                   lambda v: f"{v:.3g} {unit}", times)
    # Each dot carries the exact seconds and the drill's id, for people (label) and for machines.
    chart.add("RTO achieved", [{"value": (d["at"], d["rto_s"] / per),
                                "label": f"{'passed' if d.get('passed') else 'FAILED'}, {d['rto_s']:.1f} s",
                                "node": {"data-rto-s": str(d["rto_s"]), "data-drill": str(d.get("id") or "")}}
                               for d in drills])
    upper = [(_dt(p["at"]), round(p["high_s"] / per, 3)) for p in preds]
    lower = [(_dt(p["at"]), round(p["low_s"] / per, 3)) for p in preds]
    # A closed outline (upper edge forward, lower edge back) filled: the band between the edges.
    chart.add("forecast, 95 % band", upper + lower[::-1], fill=True, show_dots=False, stroke_style={"width": 0})
    line = [(min(times), target_s / per), (max(times), target_s / per)] if target_s and times else []
    chart.add("target", line, show_dots=False, stroke_style={"width": 2, "dasharray": "8,5"})
    chart.add("forecast", [(_dt(p["at"]), round(p["rto_s"] / per, 3)) for p in preds],
              stroke_style={"width": 2, "dasharray": "2,4"})
    return to_svg(chart)


def size_chart(points: list[dict[str, Any]], forecast: dict[str, Any] | None) -> str:
    """Backed-up bytes over time and the fitted growth to +365 days (SVG markup).
    `points`: {"at": datetime, "bytes": int}."""
    growth = (forecast or {}).get("growth") or {}
    preds = (forecast or {}).get("predictions", [])
    trend = []
    if growth and preds and points:
        now, rate, start = _dt(preds[0]["at"]), float(growth.get("bytes_per_day") or 0), float(growth.get("bytes_now") or 0)
        trend = [(now + timedelta(days=d), start + rate * d) for d in (0, 90, 365)]
    peak = max([p["bytes"] for p in points] + [b for _t, b in trend] + [1.0])
    unit, per = bytes_unit(peak)
    chart = _chart("Backed-up data of the restored sources", f"size ({unit})", lambda v: f"{v:.4g} {unit}",
                   [p["at"] for p in points] + [t for t, _b in trend])
    chart.add("backed up", [{"value": (p["at"], p["bytes"] / per), "node": {"data-bytes": str(p["bytes"])}}
                            for p in points], show_dots=len(points) <= 40)
    chart.add("growth trend", [(t, round(b / per, 4)) for t, b in trend], show_dots=False,
              stroke_style={"width": 2, "dasharray": "2,4"})
    return to_svg(chart)


def to_svg(chart: Any) -> str:
    """The chart's <svg> element as text, without any <script> (see the module docstring)."""
    tree = chart.render_tree()
    _drop_scripts(tree)
    return _tostring(tree)


def _drop_scripts(root: Any) -> None:
    for parent in list(root.iter()):
        for child in list(parent):
            tag = child.tag if isinstance(child.tag, str) else ""
            if tag.rsplit("}", 1)[-1] == "script":
                parent.remove(child)


def _tostring(root: Any) -> str:
    try:
        from lxml import etree  # pygal renders with lxml when it is installed
        if isinstance(root, etree._Element):
            return etree.tostring(root, encoding="unicode")
    except ImportError:
        pass
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    return ET.tostring(root, encoding="unicode")


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
