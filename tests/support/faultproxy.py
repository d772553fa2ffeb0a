"""A misbehaving S3 in front of a real one: an HTTP proxy on loopback that injects faults.

    proxy = FaultProxy(backend_port).start()
    url = proxy.endpoint                      # use instead of the real server's endpoint
    proxy.mode = "slowdown"                   # every request answered 503 SlowDown
    proxy.set("slowdown", seconds=20)         # ... for the next 20 s, then pass through again
    proxy.mode = "truncate"                   # responses cut in the middle of their body
    proxy.latency = 0.5                       # each request waits 0.5 s first
    proxy.mode = "refuse"                     # connections closed without an answer

The Host header is forwarded unchanged, so SigV4 signatures made for the proxy's address
verify at the backend. Request bodies and responses are relayed whole (small objects in
tests). Counts of requests and of injected faults are kept for assertions.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                 b"<Message>We encountered an internal error. Please try again.</Message></Error>")
MODES = ("pass", "slowdown", "internal", "truncate", "refuse")


class FaultProxy:
    def __init__(self, backend_port: int, *, backend_host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = (backend_host, backend_port)
        self.mode = "pass"
        self.latency = 0.0
        self.until: float | None = None          # monotonic time the current fault ends
        self.only_methods: set[str] | None = None  # inject only for these methods (e.g. {"PUT"})
        self.requests = 0
        self.faults = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)   # port: come back where it was
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def repo_url(self, bucket: str, prefix: str) -> str:
        return f"s3:{self.endpoint}/{bucket}/{prefix}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set(self, mode: str, *, seconds: float | None = None, methods: set[str] | None = None) -> None:
        assert mode in MODES, mode
        with self._lock:
            self.mode = mode
            self.only_methods = methods
            self.until = None if seconds is None else time.monotonic() + seconds

    # ------------------------------------------------------------ per request

    def _current(self, method: str) -> str:
        with self._lock:
            self.requests += 1
            if self.until is not None and time.monotonic() >= self.until:
                self.mode, self.until, self.only_methods = "pass", None, None
            mode = self.mode
            if self.only_methods is not None and method not in self.only_methods:
                mode = "pass"
            if mode != "pass":
                self.faults += 1
            return mode

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if self.latency:
            time.sleep(self.latency)
        mode = self._current(req.command)
        if mode == "refuse":
            req.close_connection = True
            try:
                req.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if mode in ("slowdown", "internal"):
            code, reason, payload = ((503, "Slow Down", SLOWDOWN_BODY) if mode == "slowdown"
                                     else (500, "Internal Server Error", INTERNAL_BODY))
            req.send_response(code, reason)
            req.send_header("Content-Type", "application/xml")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            if req.command != "HEAD":
                req.wfile.write(payload)
            return
        status, reason, headers, data = self._forward(req, body)
        req.send_response(status, reason)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                req.send_header(key, value)
        # A HEAD answer has no body but the object's length: keep the backend's.
        declared = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0)) \
            if req.command == "HEAD" else len(data)
        req.send_header("Content-Length", str(declared))
        req.end_headers()
        if req.command == "HEAD":
            return
        if mode == "truncate" and declared > 1:
            req.wfile.write(data[: declared // 2])
            req.wfile.flush()
            req.close_connection = True
            try:
                req.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        req.wfile.write(data)

    def _forward(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.backend, timeout=60)
        try:
            conn.putrequest(req.command, req.path, skip_host=True, skip_accept_encoding=True)
            for key, value in req.headers.items():
                if key.lower() not in ("connection", "proxy-connection", "keep-alive"):
                    conn.putheader(key, value)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()
