"""A small HTTP server for the dashboard pages: loopback only, read-only, optional token.

    server = DashboardServer(out_dir, "127.0.0.1", 8088, token=None)
    server.start()            # a daemon thread; server.url tells where
    ...
    server.stop()

It serves the files drtool.actions.dashboard wrote, nothing else: GET/HEAD only,
no directory listings, no path outside `out_dir` (symlinks resolved), and it
refuses to bind anything but a loopback address (a dashboard names servers and
their weaknesses; put a TLS reverse proxy with authentication in front of it to
share it). With a token, every request needs `Authorization: Bearer TOKEN` or
`?token=TOKEN` (then a cookie keeps the browser in); compared in constant time.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import logging
import mimetypes
import threading
import urllib.parse
from pathlib import Path

from drtool.errors import UsageError

log = logging.getLogger(__name__)

COOKIE = "drtool_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def check_loopback(host: str) -> str:
    """The address itself when it is a loopback address; UsageError otherwise (nothing bound)."""
    name = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        if ipaddress.ip_address(name).is_loopback:
            return name
    except ValueError:
        pass
    raise UsageError(f"the dashboard server only listens on loopback, not {host!r}",
                     hint="use 127.0.0.1 (or ::1) and a TLS reverse proxy with authentication to share it")


class DashboardServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.host = check_loopback(host)
        self.token = token or None
        handler = _handler(self.root, self.token)
        server_class = _V6Server if ":" in self.host else http.server.ThreadingHTTPServer
        self._server = server_class((self.host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _V6Server(http.server.ThreadingHTTPServer):
    import socket as _socket
    address_family = _socket.AF_INET6


def _handler(root: Path, token: str | None) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "drtool-dashboard"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(body=False)

        def _serve(self, body: bool) -> None:
            url = urllib.parse.urlsplit(self.path)
            if token is not None and not self._authorised(url):
                return self._reply(401, b"a token is needed: ?token=... or Authorization: Bearer ...\n",
                                   "text/plain; charset=utf-8", body)
            path = _resolve(root, urllib.parse.unquote(url.path))
            if path is None:
                return self._reply(404, b"not found\n", "text/plain; charset=utf-8", body)
            extra = {}
            if token is not None and "token=" in (url.query or ""):
                extra["Set-Cookie"] = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/"):
                ctype += "; charset=utf-8"
            self._reply(200, path.read_bytes(), ctype, body, extra)

        def _authorised(self, url: urllib.parse.SplitResult) -> bool:
            offered = []
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                offered.append(auth[7:].strip())
            offered += urllib.parse.parse_qs(url.query).get("token", [])
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    offered.append(value)
            return any(hmac.compare_digest(o.encode(), token.encode()) for o in offered)  # type: ignore[union-attr]

        def _reply(self, code: int, data: bytes, ctype: str, body: bool, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for name, value in {**SECURITY_HEADERS, **(extra or {}), "Content-Type": ctype,
                                "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            # The path only: the query may carry the token, which must never reach a log.
            log.debug("dashboard http %s %s -> %s", self.command, urllib.parse.urlsplit(self.path).path, code)

        def log_message(self, fmt: str, *args: object) -> None:
            pass

    return Handler


def _resolve(root: Path, url_path: str) -> Path | None:
    """The file under root for a URL path ('/' -> index.html), or None (missing, a directory, outside)."""
    rel = url_path.lstrip("/") or "index.html"
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError):
        return None
    if path != root and root not in path.parents:
        return None
    return path if path.is_file() else None
