"""Prometheus metrics with the official client: node_exporter textfile, Pushgateway, /metrics.

Every render builds a fresh `CollectorRegistry` from the samples it is given (the
current settings and the catalog), never the client's global registry: a policy
removed from the configuration disappears from the next textfile, push or scrape.
prometheus_client costs ~40 ms to import (`python -X importtime`), paid only after a
run, never on `drtool --help` or `validate`.

The textfile is replaced atomically (the client writes a temp file and renames it),
so the collector never reads half a file. The HTTP endpoint listens on loopback only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PolicyMetrics:
    policy: str
    repository: str
    last_success: datetime | None = None       # finish time of the last successful backup
    last_duration_s: float | None = None       # of the last backup run, any outcome
    last_bytes_added: int | None = None
    last_ok: bool | None = None                # did the last backup run succeed
    newest_snapshot: datetime | None = None
    rpo_target_s: float | None = None
    last_check_ok: bool | None = None
    last_forget_ok: bool | None = None


@dataclass(frozen=True)
class PlaybookMetrics:
    playbook: str
    policy: str
    last_run: datetime | None = None
    rto_achieved_s: float | None = None
    rto_target_s: float | None = None
    passed: bool | None = None


Sample = Callable[[Any, datetime], float | None]

# name -> (help, value of one sample or None: a metric without a value is left out, never faked)
_POLICY_METRICS: list[tuple[str, str, Sample]] = [
    ("drtool_backup_last_success_timestamp_seconds", "Unix time the last successful backup finished.",
     lambda m, now: _ts(m.last_success)),
    ("drtool_backup_last_duration_seconds", "Duration of the last backup run.", lambda m, now: m.last_duration_s),
    ("drtool_backup_last_bytes_added", "Bytes the last backup added to the repository.",
     lambda m, now: m.last_bytes_added),
    ("drtool_backup_last_run_success", "1 if the last backup run succeeded, else 0.",
     lambda m, now: _flag(m.last_ok)),
    ("drtool_snapshot_age_seconds", "Age of the newest snapshot of the policy.",
     lambda m, now: None if m.newest_snapshot is None else max(0.0, (now - m.newest_snapshot).total_seconds())),
    ("drtool_rpo_target_seconds", "Recovery point objective of the policy.", lambda m, now: m.rpo_target_s),
    ("drtool_rpo_breached", "1 if the newest snapshot is older than the RPO target (or missing).",
     lambda m, now: _rpo_breached(m, now)),
    ("drtool_check_last_run_success", "1 if the last repository check succeeded, else 0.",
     lambda m, now: _flag(m.last_check_ok)),
    ("drtool_forget_last_run_success", "1 if the last retention run succeeded, else 0.",
     lambda m, now: _flag(m.last_forget_ok)),
]
_PLAYBOOK_METRICS: list[tuple[str, str, Sample]] = [
    ("drtool_drill_last_run_timestamp_seconds", "Unix time the last drill of the playbook started.",
     lambda m, now: _ts(m.last_run)),
    ("drtool_drill_rto_achieved_seconds", "Recovery time measured by the last drill.", lambda m, now: m.rto_achieved_s),
    ("drtool_drill_rto_target_seconds", "Recovery time objective of the playbook.", lambda m, now: m.rto_target_s),
    ("drtool_drill_passed", "1 if the last drill passed, else 0.", lambda m, now: _flag(m.passed)),
]


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


def _rpo_breached(m: PolicyMetrics, now: datetime) -> float | None:
    if m.rpo_target_s is None:
        return None
    if m.newest_snapshot is None:
        return 1.0
    return float((now - m.newest_snapshot).total_seconds() > m.rpo_target_s)


def registry(policies: list[PolicyMetrics], playbooks: list[PlaybookMetrics], now: datetime) -> Any:
    """A new CollectorRegistry holding exactly these samples."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry(auto_describe=True)
    for name, help_text, get in _POLICY_METRICS:
        _family(reg, Gauge, name, help_text, ("policy", "repository"),
                [((m.policy, m.repository), get(m, now)) for m in policies])
    for name, help_text, get in _PLAYBOOK_METRICS:
        _family(reg, Gauge, name, help_text, ("playbook", "policy"),
                [((m.playbook, m.policy), get(m, now)) for m in playbooks])
    Gauge("drtool_metrics_generated_timestamp_seconds", "Unix time these metrics were written.",
          registry=reg).set(now.timestamp())
    return reg


def _family(reg: Any, gauge: Any, name: str, help_text: str, labels: tuple[str, ...],
            samples: list[tuple[tuple[str, ...], float | None]]) -> None:
    present = [(values, value) for values, value in samples if value is not None]
    if not present:
        return
    family = gauge(name, help_text, labels, registry=reg)
    for values, value in present:
        family.labels(*values).set(value)


def render(policies: list[PolicyMetrics], playbooks: list[PlaybookMetrics], now: datetime) -> str:
    """The exposition text of these samples."""
    from prometheus_client import generate_latest

    return generate_latest(registry(policies, playbooks, now)).decode("utf-8")


def write_textfile(path: str | Path, reg: Any) -> None:
    """Replace `path` atomically; world-readable on purpose (node_exporter reads it; no secrets in it)."""
    from prometheus_client import write_to_textfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(target), reg)
    os.chmod(target, 0o644)


def push(url: str, reg: Any, *, job: str = "drtool", instance: str | None = None) -> None:
    """Push to a Pushgateway (hosts without node_exporter); replaces this job's group."""
    from prometheus_client import push_to_gateway

    grouping = {"instance": instance} if instance else None
    push_to_gateway(url, job=job, registry=reg, timeout=PUSH_TIMEOUT_S, grouping_key=grouping)


class MetricsServer:
    """GET /metrics on 127.0.0.1 only; the text comes from `provider` at each scrape."""

    def __init__(self, port: int, provider: Callable[[], str], host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError(f"the metrics endpoint listens on loopback only, not {host}")
        handler = _handler(provider)
        self._server = ThreadingHTTPServer((host, port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(provider: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                body = provider().encode()
            except Exception:  # noqa: BLE001 - a scrape must never kill the daemon
                log.exception("rendering metrics failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler
