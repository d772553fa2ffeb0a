"""Notifications: tell a person when a backup or drill fails or a target is breached.

Channels (drtool.yaml `notifications:`):
- webhooks: JSON POST, retried with exponential backoff on network errors, 5xx and 429;
- email: SMTP with STARTTLS when configured (refused if the server does not offer it);
- healthchecks-style pings: <url>/start, <url> (success), <url>/fail, for backups.

Which events go where: a channel with an `events:` list gets exactly those;
otherwise it gets every failure/breach, plus successes when `on_success: true`.
Every text that leaves the process passes `drtool.secrets.redact`. Sending
never raises: a broken mail server must not stop the next night's backup; the
outcome of each delivery is returned and logged.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any

from drtool.config.models import Email, Healthcheck, Notifications, Webhook
from drtool.secrets import redact

log = logging.getLogger(__name__)

FAILURE_KINDS = frozenset({
    "backup_failed", "backup_cancelled", "forget_failed", "check_failed", "drill_failed",
    "drill_cancelled", "rpo_breach", "rto_breach",
    "unit_failed",                             # a systemd unit / cron line failed (schedule on-failure)
})
SUCCESS_KINDS = frozenset({
    "backup_succeeded", "forget_succeeded", "check_succeeded", "drill_succeeded", "rpo_recovered",
})
START_KINDS = frozenset({"backup_started", "forget_started", "check_started", "drill_started"})
KINDS = FAILURE_KINDS | SUCCESS_KINDS | START_KINDS


@dataclass(frozen=True)
class Event:
    kind: str                                  # one of KINDS
    message: str                               # one line a person can act on
    policy: str | None = None
    playbook: str | None = None
    run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; known: {', '.join(sorted(KINDS))}")

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURE_KINDS

    def subject(self) -> str:
        what = self.playbook or self.policy or "drtool"
        return redact(f"[drtool] {self.kind.replace('_', ' ')}: {what}")

    def to_dict(self) -> dict[str, Any]:
        # Round-trip through redacted JSON so nested details are masked too.
        data = {"event": self.kind, "message": self.message, "policy": self.policy, "playbook": self.playbook,
                "run_id": self.run_id, "at": self.at.isoformat(), "failure": self.is_failure,
                "details": self.details}
        return json.loads(redact(json.dumps(data, default=str)))


@dataclass(frozen=True)
class Delivery:
    channel: str                               # "webhook" | "email" | "healthcheck"
    target: str                                # URL without credentials, or mail host
    ok: bool
    attempts: int
    error: str | None = None


def safe_url(url: str) -> str:
    """A URL fit for logs: no user:password, no query string (tokens live there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return redact(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")))


class Notifier:
    def __init__(self, config: Notifications, *, timeout: float = 10.0, attempts: int = 3,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._sleep = sleep

    def wants(self, events: list[str] | None, kind: str) -> bool:
        if events is not None:
            return kind in events
        return kind in FAILURE_KINDS or (self.config.on_success and kind in SUCCESS_KINDS)

    def send(self, event: Event) -> list[Delivery]:
        """Deliver to every interested channel; never raises."""
        out: list[Delivery] = []
        for hook in self.config.webhooks:
            if self.wants(hook.events, event.kind):
                out.append(self._deliver("webhook", safe_url(hook.url), lambda h=hook: self._post_webhook(h, event)))
        for mail in self.config.email:
            if self.wants(mail.events, event.kind):
                out.append(self._deliver("email", f"{mail.host}:{mail.port}", lambda m=mail: self._send_mail(m, event)))
        for hc in self.config.healthchecks:
            url = healthcheck_url(hc, event)
            if url:
                out.append(self._deliver("healthcheck", safe_url(url), lambda u=url: self._ping(u, event)))
        return out

    # -------------------------------------------------------------- delivery with retries

    def _deliver(self, channel: str, target: str, attempt: Callable[[], None]) -> Delivery:
        error = ""
        for n in range(1, self.attempts + 1):
            try:
                attempt()
                return Delivery(channel, target, True, n)
            except _Permanent as exc:
                error = str(exc)
                break
            except (OSError, smtplib.SMTPException, _Transient) as exc:
                error = redact(f"{type(exc).__name__}: {exc}")
                if n < self.attempts:
                    self._sleep(self.backoff * 2 ** (n - 1))   # 1s, 2s, 4s...: let a restarting receiver come back
        log.warning("notification via %s to %s failed after %d attempt(s): %s", channel, target, n, error)
        return Delivery(channel, target, False, n, error)

    def _post_webhook(self, hook: Webhook, event: Event) -> None:
        body = redact(json.dumps(event.to_dict())).encode()
        _http(hook.url, body, "application/json", self.timeout)

    def _ping(self, url: str, event: Event) -> None:
        # Healthchecks shows the request body in its log: a short, redacted summary.
        _http(url, redact(f"{event.kind}: {event.message}")[:10000].encode(), "text/plain", self.timeout)

    def _send_mail(self, mail: Email, event: Event) -> None:
        msg = EmailMessage()
        msg["Subject"] = event.subject()
        msg["From"] = mail.sender
        msg["To"] = ", ".join(mail.to)
        msg.set_content(render_text(event))
        with smtplib.SMTP(mail.host, mail.port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if mail.starttls:
                if not smtp.has_extn("starttls"):
                    raise _Permanent(f"mail server {mail.host}:{mail.port} does not offer STARTTLS; "
                                     "refusing to send in clear text (set starttls: false only on a trusted link)")
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if mail.username and mail.password:
                smtp.login(mail.username, mail.password.resolve().reveal())
            smtp.send_message(msg)


class _Transient(Exception):
    """Worth another attempt (5xx, 429)."""


class _Permanent(Exception):
    """Retrying will not help (4xx, missing STARTTLS)."""


def _http(url: str, body: bytes, content_type: str, timeout: float) -> None:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _Permanent(f"{safe_url(url)}: only http:// and https:// URLs are supported")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, "User-Agent": "drtool"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"{safe_url(url)} answered HTTP {exc.code}") from None
        raise _Permanent(f"{safe_url(url)} answered HTTP {exc.code}; check the URL and token") from None
    except (urllib.error.URLError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(redact(f"{safe_url(url)} unreachable: {reason}")) from None


def healthcheck_url(hc: Healthcheck, event: Event) -> str | None:
    """The ping URL for a backup event of this check's policy, or None."""
    if hc.policy is not None and hc.policy != event.policy:
        return None
    base = hc.url.rstrip("/")
    if event.kind == "backup_started":
        return f"{base}/start"
    if event.kind == "backup_succeeded":
        return base
    if event.kind in ("backup_failed", "backup_cancelled"):
        return f"{base}/fail"
    return None


def render_text(event: Event) -> str:
    lines = [event.message, "", f"event:    {event.kind}", f"time:     {event.at.isoformat()}"]
    for label, value in (("policy", event.policy), ("playbook", event.playbook), ("run", event.run_id)):
        if value:
            lines.append(f"{label + ':':<9} {value}")
    for key, value in sorted(event.details.items()):
        lines.append(f"{key + ':':<9} {value}")
    return redact("\n".join(lines) + "\n")
