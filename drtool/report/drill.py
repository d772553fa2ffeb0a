"""Drill reports for people (a rich table) and machines (JSON, JUnit XML).

The JSON file is the report dict, signed when signing is available, so the
file an auditor receives can be checked with `drtool verify-report`. The
JUnit file has one test case per step plus one per target (RTO, RPO), so a
CI system shows a breached target like a failed test.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from drtool.config.durations import format_duration

STATUS_STYLE = {"passed": "green", "failed": "bold red", "timed_out": "bold red", "skipped": "yellow"}


def _fmt_s(value: float | None) -> str:
    return format_duration(value)


def _bytes(n: int | None) -> str:
    if not n:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def render_table(report: dict[str, Any]):  # noqa: ANN201 - rich renderables, imported lazily
    """A rich Group: the steps table (with restore phases), then the verdict lines."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    snap = report.get("snapshot") or {}
    title = (f"drill {report['playbook']} (policy {report['policy']}) - snapshot "
             f"{snap.get('short_id') or snap.get('id', '-')[:8]} taken {str(snap.get('time', '-'))[:19]}")
    table = Table(title=title, title_justify="left")
    for column, justify in (("step", "left"), ("kind", "left"), ("status", "left"),
                            ("time", "right"), ("detail", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for step in report["steps"]:
        status = step["status"]
        table.add_row(step["name"], step["kind"], Text(status, style=STATUS_STYLE.get(status, "")),
                      _fmt_s(step["duration_s"]) if step.get("started_at") else "-", step.get("detail", ""))
        for phase in step.get("phases", []):
            rate = f" @ {phase['throughput_mb_s']} MB/s" if phase.get("throughput_mb_s") else ""
            size = f"{_bytes(phase.get('bytes'))}{rate}"
            table.add_row("", "", Text("  " + phase["name"], style="dim"), Text(_fmt_s(phase["duration_s"]), style="dim"),
                          Text(size, style="dim"))
    lines = [table, _target_line("RTO", report["rto"]), _target_line("RPO", report["rpo"])]
    verdict = Text("PASSED", style="bold green") if report["passed"] else Text("FAILED", style="bold red")
    lines.append(Text.assemble("verdict: ", verdict))
    for failure in report.get("failures", []):
        lines.append(Text(f"  - {failure}", style="red"))
    for kept in report.get("kept", []):
        lines.append(Text(f"kept {kept}", style="yellow"))
    return Group(*lines)


def _target_line(name: str, target: dict[str, Any]):  # noqa: ANN202
    from rich.text import Text

    met = target.get("met")
    mark = {True: ("met", "green"), False: ("BREACHED", "bold red"), None: ("no target", "dim")}[met]
    return Text.assemble(f"{name}: achieved {_fmt_s(target.get('achieved_s'))}, "
                         f"target {_fmt_s(target.get('target_s'))}: ", (mark[0], mark[1]))


def print_report(report: dict[str, Any], console: Any = None) -> None:
    import sys

    from rich.console import Console

    if console is None:
        # On a pipe (cron mail, | tee): as wide as the table needs, never folded at 80 columns.
        console = Console() if sys.stdout.isatty() else Console(width=10_000, no_color=True, highlight=False)
    console.print(render_table(report))


def write_json(report: dict[str, Any], path: Path) -> Path:
    _atomic_write(path, json.dumps(report, indent=2, default=str) + "\n")
    return path


def junit_xml(report: dict[str, Any]) -> str:
    suite_name = f"drill {report['playbook']}"
    classname = f"drill.{report['playbook']}"
    cases = []
    for step in report["steps"]:
        case = ET.Element("testcase", classname=classname, name=step["name"], time=f"{step['duration_s']:.3f}")
        if step["status"] in ("failed", "timed_out"):
            node = ET.SubElement(case, "failure", message=f"{step['status']}: {step['detail'][:500]}",
                                 type=step["status"])
            node.text = step["detail"]
        elif step["status"] == "skipped":
            ET.SubElement(case, "skipped", message=step["detail"][:500])
        else:
            ET.SubElement(case, "system-out").text = step["detail"]
        cases.append(case)
    for name in ("rto", "rpo"):
        target = report[name]
        if target.get("target_s") is None:
            continue
        case = ET.Element("testcase", classname=classname, name=f"{name.upper()} target", time="0")
        text = f"achieved {_fmt_s(target.get('achieved_s'))}, target {_fmt_s(target['target_s'])}"
        if not target.get("met"):
            ET.SubElement(case, "failure", message=f"{name.upper()} breached: {text}", type="target").text = text
        else:
            ET.SubElement(case, "system-out").text = text
        cases.append(case)
    if report.get("error"):
        case = ET.Element("testcase", classname=classname, name="drill", time="0")
        ET.SubElement(case, "error", message=report["error"][:500]).text = report["error"]
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    total = sum(s["duration_s"] for s in report["steps"])
    root = ET.Element("testsuites", name="drtool drills", tests=str(len(cases)), failures=str(failures),
                      errors=str(errors), time=f"{total:.3f}")
    suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(cases)), failures=str(failures),
                          errors=str(errors), skipped=str(skipped), time=f"{total:.3f}",
                          timestamp=str(report["started_at"])[:19], id=str(report.get("id", "")))
    props = ET.SubElement(suite, "properties")
    for key, value in (("policy", report["policy"]), ("passed", report["passed"]),
                       ("snapshot", (report.get("snapshot") or {}).get("id")),
                       ("rto_achieved_s", report["rto"].get("achieved_s")),
                       ("rpo_achieved_s", report["rpo"].get("achieved_s"))):
        ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: dict[str, Any], path: Path) -> Path:
    _atomic_write(path, junit_xml(report))
    return path


def write_report_dir(report: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = report.get("id") or report["playbook"]
    return [write_json(report, folder / f"{stem}.json"), write_junit(report, folder / f"{stem}.junit.xml")]


def _atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
