"""Use case: the static HTML dashboard (index + one page per policy + the recent drill reports).

    build_dashboard(settings, out_dir, offsite="auto") -> Dashboard
    refresh_dashboard(settings, out_dir) -> Dashboard      (what the daemon calls after each run)

Data: the same status rows as `drtool status` (the repository's snapshots of
this host, the catalog, or the signed records offsite on a fresh machine), the
forecast of each policy, and its history. Records whose signature fails are
shown as such and never counted (drtool.actions.history). Pages are written
atomically, so a browser or the daemon's HTTP server never sees half a page.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from drtool.actions.common import restic_host
from drtool.actions.forecast import alert_horizon_days, rto_drills
from drtool.actions.history import OffsiteCache, OffsiteMode, PolicyHistory, load_history
from drtool.actions.status import drill_summary, policy_status
from drtool.catalog import Catalog, utcnow
from drtool.config.loader import Settings
from drtool.config.models import Policy
from drtool.forecast import drill_point, size_series
from drtool.report import pages
from drtool.report.html import drill_html, render, write_text
from drtool.report.text import forecast_lines

log = logging.getLogger(__name__)

DRILL_PAGES = 20          # newest drill reports of each policy written as their own page


def build_dashboard(settings: Settings, out_dir: Path, *, offsite: OffsiteMode = "auto") -> pages.Dashboard:
    from drtool.report.charts import rto_chart, size_chart

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog, cache, now = Catalog(settings.state_dir), OffsiteCache(settings), utcnow()
    policy_pages, origins = [], set()
    for policy in sorted(settings.policies.values(), key=lambda p: p.name):
        history = load_history(settings, policy, catalog, offsite=offsite, cache=cache)
        page = _policy_page(settings, policy, catalog, cache, history, now)
        page.rto_svg = rto_chart(page.rto_points, page.forecast, policy.targets.rto)
        page.size_svg = size_chart(page.size_points, page.forecast)
        page.drills = _write_drill_pages(out_dir, page.drills, history, cache.expected_key)
        policy_pages.append(page)
        origins |= history.origins
    dash = pages.Dashboard(now, restic_host(settings), policy_pages, sorted(origins))
    for page in policy_pages:
        write_text(out_dir / page.filename, render("policy.html", p=page, title=f"drtool: {page.name}"))
    dash.fleet = _fleet_page(settings, out_dir)
    write_text(out_dir / "index.html", render("index.html", dash=dash, title="drtool dashboard"))
    return dash


def _fleet_page(settings: Settings, out_dir: Path) -> dict | None:
    """fleet.html, when drtool.yaml names a fleet file (a central site); its summary for the index."""
    if not settings.config.fleet:
        return None
    from drtool.actions.fleet.status import fleet_status
    from drtool.config.fleet import load_fleet
    from drtool.config.models import beside
    from drtool.report.fleet_page import write_fleet_page

    status = fleet_status(load_fleet(str(beside(settings.path, settings.config.fleet, "fleet.yaml"))))
    write_fleet_page(status, out_dir / "fleet.html")
    return status.to_dict()["summary"]


def refresh_dashboard(settings: Settings, out_dir: Path) -> pages.Dashboard | None:
    """Rebuild the pages after a run; a failure is logged, never raised (the run itself is what matters)."""
    try:
        return build_dashboard(settings, out_dir)
    except Exception:  # noqa: BLE001 - a dashboard must never fail a backup or the daemon
        log.warning("could not refresh the dashboard in %s", out_dir, exc_info=True)
        return None


def _policy_page(settings: Settings, policy: Policy, catalog: Catalog, cache: OffsiteCache,
                 history: PolicyHistory, now: datetime) -> pages.PolicyPage:
    row = policy_status(settings, policy, catalog, now, cache, alert_horizon_days(settings), history=history)
    forecast = row["forecast"]
    counted = rto_drills(settings, policy, history.usable_drills())
    points = [p for p in (drill_point(d) for d in counted) if p is not None]
    sizes = size_series(history.usable_runs("backup"), points[-1].sources if points else ())
    drills = [drill_summary(r.data) | {"origin": r.origin, "signature": r.signature, "link": None, "record": r}
              for r in reversed(history.drills)]
    return pages.PolicyPage(
        name=policy.name, row=row, forecast=forecast, forecast_text=forecast_lines(forecast),
        drills=drills, rto_points=pages.rto_points(counted), size_points=pages.size_points(sizes),
        runs=pages.run_rows(history.runs), calendar=pages.backup_calendar([r.data for r in history.runs], now.date()),
        signatures=pages.signature_summary(history.drills + history.runs), rule_32110=pages.rule_32110(row))


def _write_drill_pages(out_dir: Path, drills: list[dict], history: PolicyHistory, expected_key: str | None) -> list[dict]:
    """drills/<id>.html for the newest drills; each row gets its link (and loses the raw record)."""
    rows = []
    for n, row in enumerate(drills):
        record = row.pop("record")
        if n < DRILL_PAGES and row.get("id"):
            name = f"drills/{row['id']}.html"
            signature = {"state": record.signature, "detail": record.signature_detail or
                         "read from this machine's catalog, never left it"}
            write_text(out_dir / name, drill_html(record.data, signature))
            row["link"] = name
        rows.append(row)
    return rows
