"""The dashboard's HTTP server on a random loopback port: token, no path escape, loopback only."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from drtool.errors import UsageError
from drtool.report.server import DashboardServer


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:   # noqa: S310 - loopback test server
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture()
def site(tmp_path):
    root = tmp_path / "site"
    (root / "drills").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>i</title><p>index page</p>")
    (root / "drills" / "d1.html").write_text("<p>drill one</p>")
    (tmp_path / "secret.txt").write_text("outside the site")
    (root / "escape.html").symlink_to(tmp_path / "secret.txt")
    return root


def test_serves_pages_with_a_token_and_nothing_else(site):
    server = DashboardServer(site, "127.0.0.1", 0, token="t0k3n-for-test").start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        code, body, _ = get(server.url)
        assert code == 401 and b"token" in body
        code, body, headers = get(server.url, {"Authorization": "Bearer t0k3n-for-test"})
        assert code == 200 and b"index page" in body and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        code, body, headers = get(server.url + "drills/d1.html?token=t0k3n-for-test")
        assert code == 200 and b"drill one" in body and "HttpOnly" in headers.get("Set-Cookie", "")
        assert get(server.url, {"Cookie": "drtool_token=t0k3n-for-test"})[0] == 200
        assert get(server.url, {"Authorization": "Bearer wrong"})[0] == 401
        auth = {"Authorization": "Bearer t0k3n-for-test"}
        assert get(server.url + "escape.html", auth)[0] == 404              # a symlink out of the site
        assert get(server.url + "../secret.txt", auth)[0] == 404
        assert get(server.url + "%2e%2e/secret.txt", auth)[0] == 404
        assert get(server.url + "drills/", auth)[0] == 404                  # no directory listing
    finally:
        server.stop()


def test_without_token_serves_and_refuses_non_loopback(site):
    server = DashboardServer(site, "localhost", 0).start()
    try:
        assert get(server.url)[0] == 200
    finally:
        server.stop()
    for address in ("0.0.0.0", "192.0.2.10", "example.org", "::"):
        with pytest.raises(UsageError, match="only listens on loopback"):
            DashboardServer(site, address, 0)
