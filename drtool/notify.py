"""Notifications: tell a person when a run fails, a target is breached or drtool's own state breaks.

Channels (drtool.yaml `notifications:`), each fed by the one run lifecycle
(drtool/actions/lifecycle.py) after every run, from every entry point:
- webhooks: POST/PUT with optional headers and a Jinja2 body template (sandboxed);
- email: SMTP with STARTTLS when configured (refused if the server does not offer it);
- healthchecks-style pings: <url>/start, <url> (success), <url>/fail, with the duration;
- apprise: every chat/push service Apprise speaks (ntfy, Slack, Matrix, Telegram, Gotify,
  Discord, mailto...), through the well-kept library rather than more hand-written senders.

Which events go where: a channel with an `events:` list gets exactly those; otherwise
it gets every failure/breach, plus successes when `on_success: true`. URLs and header
values may be secret references; every text that leaves the process passes
`drtool.secrets.redact`. Sending never raises and never hangs: each channel has
`attempts` tries with exponential backoff, each bounded by `timeout` (a channel whose
library call does not return in time is abandoned). A notifier that fails is logged and
its `Delivery` recorded in the run; it never turns a good run into a failed one.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from drtool.config.models import AppriseTarget, Email, Healthcheck, Notifications, UrlOrRef, Webhook
from drtool.secrets import Secret, redact

log = logging.getLogger(__name__)

RUN_KINDS = ("backup", "forget", "check", "drill", "kit-verify", "recover", "lock-extend", "copy", "rollback")
FAILURE_KINDS = frozenset(
    {f"{k}_{s}" for k in RUN_KINDS for s in ("failed", "cancelled", "interrupted")}
    | {"rpo_breach", "rto_breach", "forecast_breach", "state_failed", "unit_failed"}
    # Continuous WAL shipping (drtool/actions/wal_ship.py): never a silent drop.
    | {"wal_ship_failed", "wal_spool_full", "wal_gap", "wal_receiver_failed"})
SUCCESS_KINDS = frozenset({f"{k}_succeeded" for k in RUN_KINDS} | {"rpo_recovered", "wal_ship_recovered"})
START_KINDS = frozenset({f"{k}_started" for k in RUN_KINDS})
KINDS = FAILURE_KINDS | SUCCESS_KINDS | START_KINDS
BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Event:
    kind: str                                  # one of KINDS
    message: str                               # one line a person can act on
    policy: str | None = None
    playbook: str | None = None
    run_id: str | None = None
    duration_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; known: {', '.join(sorted(KINDS))}")

    @property
    def is_failure(self) -> bool:
        return self.kind in FAILURE_KINDS

    @property
    def run_kind(self) -> str | None:
        """backup, drill... for run events; None for breaches."""
        head = self.kind.rsplit("_", 1)[0]
        return head if head in RUN_KINDS else None

    def subject(self) -> str:
        what = self.playbook or self.policy or "drtool"
        return redact(f"[drtool] {self.kind.replace('_', ' ')}: {what}")

    def to_dict(self) -> dict[str, Any]:
        # Round-trip through redacted JSON so nested details are masked too.
        data = {"event": self.kind, "message": self.message, "policy": self.policy, "playbook": self.playbook,
                "run_id": self.run_id, "duration_s": self.duration_s, "at": self.at.isoformat(),
                "failure": self.is_failure, "details": self.details}
        return json.loads(redact(json.dumps(data, default=str)))


@dataclass(frozen=True)
class Delivery:
    channel: str                               # "webhook" | "email" | "healthcheck" | "apprise"
    target: str                                # URL without credentials, or mail host
    ok: bool
    attempts: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_url(url: str) -> str:
    """A URL fit for logs: no user:password, no query string (tokens live there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return redact(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def resolve(value: UrlOrRef) -> str:
    """A URL or header value: given in the file, or resolved from a secret reference (then masked)."""
    if isinstance(value, str):
        return value
    return value.resolve().reveal()


class Notifier:
    def __init__(self, config: Notifications, *, timeout: float | None = None, attempts: int | None = None,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.timeout = timeout if timeout is not None else config.timeout
        self.attempts = max(1, attempts if attempts is not None else config.attempts)
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
                out.append(self._deliver("webhook", hook.url, lambda url, h=hook: self._post_webhook(h, url, event)))
        for mail in self.config.email:
            if self.wants(mail.events, event.kind):
                out.append(self._deliver("email", f"smtp://{mail.host}:{mail.port}",
                                         lambda _url, m=mail: self._send_mail(m, event)))
        for hc in self.config.healthchecks:
            if healthcheck_path(hc, event) is not None:
                out.append(self._deliver("healthcheck", hc.url, lambda url, h=hc: self._ping(h, url, event)))
        for target in self.config.apprise:
            if self.wants(target.events, event.kind):
                out.append(self._deliver("apprise", target.url, lambda url, t=target: self._apprise(t, url, event)))
        return out

    # -------------------------------------------------------------- delivery with retries

    def _deliver(self, channel: str, url_ref: UrlOrRef, attempt: Callable[[str], None]) -> Delivery:
        try:
            url = resolve(url_ref)
        except Exception as exc:  # noqa: BLE001 - a bad reference must not stop the other channels
            shown = url_ref.describe() if not isinstance(url_ref, str) else safe_url(url_ref)
            log.warning("notification via %s (%s) not sent: %s", channel, shown, redact(str(exc)))
            return Delivery(channel, shown, False, 0, redact(str(exc))[:300])
        target = safe_url(url)
        error = ""
        n = 0
        for n in range(1, self.attempts + 1):
            try:
                _bounded(lambda: attempt(url), self.timeout + 5.0)
                return Delivery(channel, target, True, n)
            except _Permanent as exc:
                error = redact(str(exc))
                break
            except (OSError, _Transient) as exc:          # smtplib.SMTPException is an OSError
                error = redact(f"{type(exc).__name__}: {exc}")
                if n < self.attempts:
                    self._sleep(self.backoff * 2 ** (n - 1))   # 1s, 2s, 4s...: let a restarting receiver come back
            except Exception as exc:  # noqa: BLE001 - a library's surprise is a failed delivery, not a crash
                error = redact(f"{type(exc).__name__}: {exc}")
                break
        log.warning("notification via %s to %s failed after %d attempt(s): %s", channel, target, n, error)
        return Delivery(channel, target, False, n, error[:300])

    def _post_webhook(self, hook: Webhook, url: str, event: Event) -> None:
        if hook.body is None:
            body = json.dumps(event.to_dict())
        else:
            body = render_template(hook.body, event)
        headers = {"Content-Type": hook.content_type}
        for name, value in hook.headers.items():
            headers[name] = resolve(value)
        _http(url, redact(body).encode(), headers, self.timeout, method=hook.method)

    def _ping(self, hc: Healthcheck, base: str, event: Event) -> None:
        suffix = healthcheck_path(hc, event)
        assert suffix is not None
        url = base.rstrip("/") + suffix
        # Healthchecks shows the request body in its log: a short, redacted summary with the duration.
        duration = f" duration_s={event.duration_s:.1f}" if event.duration_s is not None else ""
        body = redact(f"{event.kind}:{duration} {event.message}")[:10000]
        _http(url, body.encode(), {"Content-Type": "text/plain"}, self.timeout)

    def _send_mail(self, mail: Email, event: Event) -> None:
        import smtplib      # here, not at the top: every run imports notify, few send mail
        from email.message import EmailMessage

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

    def _apprise(self, target: AppriseTarget, url: str, event: Event) -> None:
        import apprise

        Secret(url)       # the URL holds the service's token: masked wherever it could appear
        logging.getLogger("apprise").setLevel(logging.ERROR)
        client = apprise.Apprise()
        if not client.add(url):
            raise _Permanent(f"{safe_url(url)}: Apprise does not understand this URL (see its wiki for the scheme)")
        title = render_template(target.title, event) if target.title else event.subject()
        body = render_template(target.body, event) if target.body else render_text(event)
        if not client.notify(title=redact(title), body=redact(body)):
            raise _Transient(f"{safe_url(url)}: Apprise could not deliver the notification")


class _Transient(Exception):
    """Worth another attempt (5xx, 429, a service that did not answer)."""


class _Permanent(Exception):
    """Retrying will not help (4xx, missing STARTTLS, a URL nobody understands)."""


def _bounded(fn: Callable[[], None], timeout: float) -> None:
    """Run fn, but give up waiting after `timeout` seconds (a library call that hangs is abandoned)."""
    box: dict[str, BaseException] = {}

    def work() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    worker = threading.Thread(target=work, name="notify", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _Transient(f"no answer within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]


def _http(url: str, body: bytes, headers: dict[str, str], timeout: float, *, method: str = "POST") -> None:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _Permanent(f"{safe_url(url)}: only http:// and https:// URLs are supported")
    request = urllib.request.Request(url, data=body, method=method, headers={"User-Agent": "drtool", **headers})
    # No proxies from the environment: a notification goes where the configuration says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"{safe_url(url)} answered HTTP {exc.code}") from None
        raise _Permanent(f"{safe_url(url)} answered HTTP {exc.code}; check the URL and token") from None
    except (urllib.error.URLError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(redact(f"{safe_url(url)} unreachable: {reason}")) from None


def healthcheck_path(hc: Healthcheck, event: Event) -> str | None:
    """The ping path (/start, "" for success, /fail) for this check, or None if it does not care."""
    if hc.policy is not None and hc.policy != event.policy:
        return None
    if event.run_kind not in hc.kinds:
        return None
    if event.kind in START_KINDS:
        return "/start"
    if event.kind in SUCCESS_KINDS:
        return ""
    return "/fail"


def render_template(template: str, event: Event) -> str:
    """A Jinja2 template (sandboxed: a config file cannot reach Python) with the event's fields."""
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
    try:
        # Fields: event (the kind), message, policy, playbook, run_id, duration_s, at, failure, details.
        text = env.from_string(template).render(**event.to_dict())
    except Exception as exc:  # noqa: BLE001 - a broken template is reported as a failed delivery
        raise _Permanent(f"the notification template cannot be rendered: {type(exc).__name__}: {exc}") from None
    return text[:BODY_LIMIT]


def render_text(event: Event) -> str:
    lines = [event.message, "", f"event:    {event.kind}", f"time:     {event.at.isoformat()}"]
    for label, value in (("policy", event.policy), ("playbook", event.playbook), ("run", event.run_id)):
        if value:
            lines.append(f"{label + ':':<9} {value}")
    if event.duration_s is not None:
        lines.append(f"{'duration:':<9} {event.duration_s:.1f}s")
    for key, value in sorted(event.details.items()):
        lines.append(f"{key + ':':<9} {value}")
    return redact("\n".join(lines) + "\n")
