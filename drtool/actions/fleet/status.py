"""Use case: `drtool fleet status` -- which offices could not recover today, and how long each would take.

    fleet_status(fleet, sites=None, use_cache=True) -> FleetStatus

Reads every site's newest signed records straight from its bucket, with the site's
read-only credentials, `fleet.concurrency` sites at a time (drtool.actions.fleet.read),
and evaluates each site as `drtool status` would at the site (drtool.actions.fleet.evaluate).
Nothing runs at the sites and nothing is written to their buckets. A site that cannot be
read is a breach (nothing proves its RPO), shown with what the cache last knew.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drtool.actions.fleet.evaluate import site_status
from drtool.actions.fleet.read import SiteRead, read_site
from drtool.catalog import utcnow
from drtool.config.fleet import Fleet, Site
from drtool.errors import DrtoolError
from drtool.forecast import DAY_S


@dataclass
class FleetStatus:
    generated_at: datetime
    fleet_file: str | None
    sites: list[dict[str, Any]]
    seconds: float

    @property
    def breached(self) -> list[str]:
        return [s["site"] for s in self.sites if s["breach"]]

    def to_dict(self) -> dict[str, Any]:
        policies = [p for s in self.sites for p in s["policies"]]
        return {"generated_at": self.generated_at.isoformat(), "fleet_file": self.fleet_file,
                "summary": {"sites": len(self.sites), "sites_in_breach": len(self.breached),
                            "policies": len(policies), "policies_in_breach": sum(1 for p in policies if p["problems"]),
                            "invalid_records": sum(len(s["invalid_records"]) for s in self.sites),
                            "seconds": round(self.seconds, 3),
                            "fetched": sum(s["read"]["fetched"] for s in self.sites),
                            "cached": sum(s["read"]["cached"] for s in self.sites)},
                "breached": self.breached, "sites": self.sites}


def fleet_status(fleet: Fleet, sites: list[str] | None = None, *, use_cache: bool = True,
                 now: datetime | None = None, horizon_days: float | None = None) -> FleetStatus:
    import time

    started = time.monotonic()
    chosen = [fleet.site(n) for n in sites] if sites else list(fleet.sites)
    cache_dir = fleet.state_path / "fleet-cache" if use_cache else None
    horizon = fleet.forecast.horizon / DAY_S if horizon_days is None else horizon_days
    with ThreadPoolExecutor(max_workers=min(fleet.concurrency, len(chosen)),
                            thread_name_prefix="fleet-read") as pool:
        reads = list(pool.map(lambda s: _read(fleet, s, cache_dir), chosen))
    moment = now or utcnow()
    rows = [site_status(site, read, moment, horizon) for site, read in zip(chosen, reads)]
    return FleetStatus(moment, fleet.path, rows, time.monotonic() - started)


def _read(fleet: Fleet, site: Site, cache_dir: Any) -> SiteRead:
    try:
        return read_site(fleet, site, cache_dir)
    except DrtoolError as exc:          # e.g. a secret reference that does not resolve here
        return SiteRead(site.name, error=exc.message.splitlines()[0][:300])
