"""Use case: write a drill's report files -- the signed JSON, JUnit XML and the HTML rendered from it.

The HTML page shows the outcome of checking the very JSON it was rendered from, so the JSON
is signed first (with this installation's key) and the page built from the signed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drtool.actions.common import signed
from drtool.config.loader import Settings


def write_reports(settings: Settings, report: dict[str, Any], *, junit_file: Path | None = None,
                  report_dir: Path | None = None, html_file: Path | None = None) -> list[Path]:
    """Write what was asked; returns the files written. `report_dir` gets ID.json, ID.junit.xml, ID.html."""
    from drtool.report.drill import write_json, write_junit

    written: list[Path] = []
    if junit_file:
        write_junit(report, junit_file)
        written.append(junit_file)
    if not (report_dir or html_file):
        return written
    from drtool.actions.history import local_public_key
    from drtool.report.html import write_drill_html

    record = signed(settings, report)
    key = local_public_key(settings)
    if report_dir:
        base = report_dir / str(record["id"])
        for path, write in ((base.with_suffix(".json"), lambda p: write_json(record, p)),
                            (base.with_name(base.name + ".junit.xml"), lambda p: write_junit(report, p)),
                            (base.with_suffix(".html"), lambda p: write_drill_html(record, p, key))):
            write(path)
            written.append(path)
    if html_file:
        write_drill_html(record, html_file, key)
        written.append(html_file)
    return written
