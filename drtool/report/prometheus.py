"""Prometheus text exposition for node_exporter's textfile collector and --metrics-port.

Written by hand rather than with prometheus_client: the format is a few lines
of text, prometheus_client is not a declared dependency, and its global
registry would keep series of policies removed by a SIGHUP reload. Here every
render starts from the current settings, so a deleted policy's series vanish.

The textfile is replaced atomically (temp file in the same directory, fsync,
rename) so the collector never reads half a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


@dataclass(frozen=True)
class PlaybookMetrics:
    playbook: str
    policy: str
    last_run: datetime | None = None
    rto_achieved_s: float | None = None
    rto_target_s: float | None = None
    passed: bool | None = None


# name -> (help, function of a sample returning a value or None)
_POLICY_METRICS: list[tuple[str, str, Callable[[PolicyMetrics, datetime], float | None]]] = [
    ("drtool_backup_last_success_timestamp_seconds", "Unix time the last successful backup finished.",
     lambda m, now: _ts(m.last_success)),
    ("drtool_backup_last_duration_seconds", "Duration of the last backup run.", lambda m, now: m.last_duration_s),
    ("drtool_backup_last_bytes_added", "Bytes the last backup added to the repository.",
     lambda m, now: m.last_bytes_added),
    ("drtool_backup_last_run_success", "1 if the last backup run succeeded, else 0.",
     lambda m, now: None if m.last_ok is None else float(m.last_ok)),
    ("drtool_snapshot_age_seconds", "Age of the newest snapshot of the policy.",
     lambda m, now: None if m.newest_snapshot is None else max(0.0, (now - m.newest_snapshot).total_seconds())),
    ("drtool_rpo_target_seconds", "Recovery point objective of the policy.", lambda m, now: m.rpo_target_s),
    ("drtool_rpo_breached", "1 if the newest snapshot is older than the RPO target (or missing).",
     lambda m, now: _rpo_breached(m, now)),
]
_PLAYBOOK_METRICS: list[tuple[str, str, Callable[[PlaybookMetrics, datetime], float | None]]] = [
    ("drtool_drill_last_run_timestamp_seconds", "Unix time the last drill of the playbook started.",
     lambda m, now: _ts(m.last_run)),
    ("drtool_drill_rto_achieved_seconds", "Recovery time measured by the last drill.", lambda m, now: m.rto_achieved_s),
    ("drtool_drill_rto_target_seconds", "Recovery time objective of the playbook.", lambda m, now: m.rto_target_s),
    ("drtool_drill_passed", "1 if the last drill passed, else 0.",
     lambda m, now: None if m.passed is None else float(m.passed)),
]


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _rpo_breached(m: PolicyMetrics, now: datetime) -> float | None:
    if m.rpo_target_s is None:
        return None
    if m.newest_snapshot is None:
        return 1.0
    return float((now - m.newest_snapshot).total_seconds() > m.rpo_target_s)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(policies: list[PolicyMetrics], playbooks: list[PlaybookMetrics], now: datetime) -> str:
    """The whole exposition text; metrics without a value are left out rather than faked."""
    lines: list[str] = []
    for name, help_text, get in _POLICY_METRICS:
        lines += _family(name, help_text, [(_labels(policy=m.policy, repository=m.repository), get(m, now))
                                          for m in policies])
    for name, help_text, get in _PLAYBOOK_METRICS:
        lines += _family(name, help_text, [(_labels(playbook=m.playbook, policy=m.policy), get(m, now))
                                          for m in playbooks])
    lines += _family("drtool_metrics_generated_timestamp_seconds", "Unix time these metrics were written.",
                     [("", now.timestamp())])
    return "\n".join(lines) + "\n"


def _family(name: str, help_text: str, samples: list[tuple[str, float | None]]) -> list[str]:
    present = [(labels, value) for labels, value in samples if value is not None]
    if not present:
        return []
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
            *(f"{name}{labels} {_number(value)}" for labels, value in present)]


def write_textfile(path: str | Path, text: str) -> None:
    """Replace `path` atomically; world-readable on purpose (node_exporter reads it; it holds no secrets)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
