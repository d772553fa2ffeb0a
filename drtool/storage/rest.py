"""restic's REST protocol (rest-server, `rclone serve restic`): the repository URL with its
credentials, and a small client that speaks the protocol directly (the attack drill uses it
to try what ransomware would, with the production credentials).

restic 0.14 reads REST credentials only from the URL's user info (RESTIC_REST_USERNAME /
PASSWORD came in 0.16), so drtool passes `rest:http://USER:PASSWORD@host:port/path` in
restic's environment (RESTIC_REPOSITORY), never on its command line; drtool.yaml holds the
URL without them and the password as a secret reference.

    GET    /{type}/           list (Accept: application/vnd.x.restic.rest.v2 -> [{name, size}])
    GET    /{type}/{name}     read;  POST: write;  DELETE: remove   (type: data, index, snapshots, keys, locks)
    GET    /config            the repository config (POST writes it)
An append-only server answers 403 to every DELETE but of locks, and to writing a name that exists.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from drtool.errors import StorageError
from drtool.secrets import Secret

REST_V2 = "application/vnd.x.restic.rest.v2"


def authenticated_url(url: str, username: str, password: Secret | None) -> str:
    """rest:http://host:port/path -> rest:http://user:password@host:port/path (percent-encoded)."""
    scheme, sep, rest = url.removeprefix("rest:").partition("://")
    if not sep:
        raise StorageError(f"invalid rest: repository URL {url!r}", hint="write it as rest:http://HOST:PORT/PATH")
    auth = urllib.parse.quote(username, safe="")
    if password is not None:
        auth += ":" + urllib.parse.quote(password.reveal(), safe="")
    return f"rest:{scheme}://{auth}@{rest}"


@dataclass
class Reply:
    status: int
    body: bytes


class RestClient:
    """The repository's REST endpoint with HTTP basic auth; loopback or wherever the URL points."""

    def __init__(self, url: str, username: str | None, password: Secret | None, *, timeout: float = 30.0) -> None:
        self.base = url.removeprefix("rest:").rstrip("/")
        self.timeout = timeout
        self._auth = None
        if username is not None:
            token = f"{username}:{password.reveal() if password else ''}".encode()
            self._auth = "Basic " + base64.b64encode(token).decode()

    def where(self) -> str:
        return "rest:" + self.base

    def request(self, method: str, path: str, body: bytes | None = None, *, accept: str | None = None) -> Reply:
        """One request; an HTTP error status is a Reply (the drill judges it), a dead server a StorageError."""
        req = urllib.request.Request(f"{self.base}/{path.lstrip('/')}", data=body, method=method)
        if self._auth:
            req.add_header("Authorization", self._auth)
        if accept:
            req.add_header("Accept", accept)
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the configured server
                return Reply(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read() or b"")
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError(f"cannot reach the REST server {self.where()}: {getattr(exc, 'reason', exc)}",
                               hint="check the repository URL and that the server is running") from None

    def listing(self, kind: str) -> list[dict]:
        reply = self.request("GET", f"{kind}/", accept=REST_V2)
        if reply.status != 200:
            raise StorageError(f"listing {kind}/ at {self.where()} answered HTTP {reply.status}",
                               hint="check the REST credentials (rest.username / rest.password)")
        return list(json.loads(reply.body or b"[]"))
