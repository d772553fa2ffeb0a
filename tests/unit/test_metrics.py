"""Prometheus metrics (prometheus_client): exposition text, textfile, Pushgateway, endpoint."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import parser

from drtool.report.prometheus import MetricsServer, PlaybookMetrics, PolicyMetrics, push, registry, render, write_textfile
from tests.support.services import free_port

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
POLICIES = [PolicyMetrics('we"ird\\name', "offsite", NOW - timedelta(hours=2), 12.5, 2048, True,
                          NOW - timedelta(hours=30), 86400.0),
            PolicyMetrics("never", "offsite", rpo_target_s=3600.0)]
PLAYBOOKS = [PlaybookMetrics("pb", "db", NOW, 95.0, 60.0, False)]


def sample_text() -> str:
    return render(POLICIES, PLAYBOOKS, NOW)


def _values(text: str) -> dict:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def test_prometheus_text_parses_and_holds_the_values() -> None:
    families = _values(sample_text())

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("drtool_snapshot_age_seconds", policy='we"ird\\name') == 30 * 3600
    assert value("drtool_rpo_breached", policy='we"ird\\name') == 1
    assert value("drtool_rpo_breached", policy="never") == 1                  # no snapshot at all
    assert value("drtool_drill_passed", playbook="pb") == 0
    assert value("drtool_drill_rto_achieved_seconds", playbook="pb") == 95
    # Unknown values are left out, not written as 0.
    assert all(s.labels["policy"] != "never" for s in families["drtool_backup_last_duration_seconds"].samples)


def test_a_removed_policy_disappears_from_the_next_render() -> None:
    # Each render is a fresh registry: no global state keeps old series alive.
    assert 'policy="never"' in sample_text()
    assert 'policy="never"' not in render(POLICIES[:1], PLAYBOOKS, NOW)


def test_write_textfile_is_atomic_replace(tmp_path: Path) -> None:
    target = tmp_path / "collector" / "drtool.prom"
    write_textfile(target, registry(POLICIES[1:], [], NOW))
    before = target.stat().st_ino
    write_textfile(target, registry(POLICIES, PLAYBOOKS, NOW))
    assert target.read_text() == sample_text() and target.stat().st_ino != before   # renamed over, not rewritten
    assert [p.name for p in target.parent.iterdir()] == ["drtool.prom"]
    assert target.stat().st_mode & 0o777 == 0o644                                 # node_exporter reads it


def test_push_reaches_a_pushgateway_with_the_samples() -> None:
    received: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.command, self.path, body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        push(f"http://127.0.0.1:{server.server_address[1]}", registry(POLICIES, PLAYBOOKS, NOW), instance="h1")
    finally:
        server.shutdown()
    [(method, path, body)] = received
    assert method == "PUT" and path == "/metrics/job/drtool/instance/h1"
    assert b"drtool_drill_rto_achieved_seconds" in body


def test_metrics_endpoint_serves_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        MetricsServer(free_port(), sample_text, host="0.0.0.0")
    server = MetricsServer(free_port(), sample_text).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert b"drtool_drill_passed" in response.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    finally:
        server.stop()
