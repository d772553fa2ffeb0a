"""Notifications received by a real SMTP server (aiosmtpd) and a local HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from drtool.config.models import Email, Healthcheck, Notifications, Webhook
from drtool.notify import Event, Notifier
from drtool.secrets import Secret
from tests.support.services import free_port

pytestmark = pytest.mark.integration

CANARY = "canary-Zx81-notify-secret"


@dataclass
class Receiver:
    """An HTTP receiver that answers 503 to the first `fail_first` requests."""

    port: int
    fail_first: int = 0
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    rec = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rec.lock:
                rec.requests.append((self.path, body))
                failing = len(rec.requests) <= rec.fail_first
            self.send_response(503 if failing else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", rec.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture()
def smtp() -> Iterator[tuple[int, list]]:
    from aiosmtpd.controller import Controller

    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, received
    controller.stop()


def failure_event() -> Event:
    Secret(CANARY)   # registered like any resolved config secret
    return Event("backup_failed", f"pg_dump failed: password authentication failed for {CANARY}",
                 policy="siak", run_id="r1", details={"stderr": f"PGPASSWORD={CANARY}"})


def test_webhook_receives_redacted_json(receiver: Receiver) -> None:
    notifier = Notifier(Notifications(webhooks=[Webhook(url=receiver.url())]), sleep=lambda s: None)
    result = notifier.send(failure_event())
    assert [d.ok for d in result] == [True]
    assert len(receiver.requests) == 1
    path, body = receiver.requests[0]
    payload = json.loads(body)
    assert path == "/hook" and payload["event"] == "backup_failed" and payload["policy"] == "siak"
    assert CANARY.encode() not in body and "***" in payload["message"]


def test_failing_webhook_is_retried_with_backoff(receiver: Receiver) -> None:
    receiver.fail_first = 2
    sleeps: list[float] = []
    notifier = Notifier(Notifications(webhooks=[Webhook(url=receiver.url())]), attempts=3, backoff=0.5,
                        sleep=sleeps.append)
    [delivery] = notifier.send(failure_event())
    assert delivery.ok and delivery.attempts == 3
    assert sleeps == [0.5, 1.0] and len(receiver.requests) == 3


def test_webhook_gives_up_and_reports_without_raising(receiver: Receiver) -> None:
    receiver.fail_first = 99
    notifier = Notifier(Notifications(webhooks=[Webhook(url=receiver.url())]), attempts=2, sleep=lambda s: None)
    [delivery] = notifier.send(failure_event())
    assert not delivery.ok and delivery.attempts == 2 and "503" in (delivery.error or "")


def test_unreachable_webhook_is_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"   # nothing listens there
    [delivery] = Notifier(Notifications(webhooks=[Webhook(url=url)]), attempts=2, timeout=2,
                          sleep=lambda s: None).send(failure_event())
    assert not delivery.ok and "unreachable" in (delivery.error or "")


def test_success_events_only_when_asked(receiver: Receiver) -> None:
    ok = Event("backup_succeeded", "backup of siak done", policy="siak")
    assert Notifier(Notifications(webhooks=[Webhook(url=receiver.url())])).send(ok) == []
    assert len(Notifier(Notifications(webhooks=[Webhook(url=receiver.url())], on_success=True)).send(ok)) == 1
    only_rpo = Notifications(webhooks=[Webhook(url=receiver.url(), events=["rpo_breach"])])
    assert Notifier(only_rpo).send(failure_event()) == []
    assert len(receiver.requests) == 1


def test_healthcheck_pings_start_success_fail(receiver: Receiver) -> None:
    hc = Notifications(healthchecks=[Healthcheck(url=receiver.url("/ping/abc"), policy="siak"),
                                     Healthcheck(url=receiver.url("/ping/other"), policy="other")])
    notifier = Notifier(hc)
    for kind in ("backup_started", "backup_succeeded", "backup_failed"):
        notifier.send(Event(kind, f"{kind} {CANARY}", policy="siak"))
    assert [p for p, _ in receiver.requests] == ["/ping/abc/start", "/ping/abc", "/ping/abc/fail"]
    assert all(CANARY.encode() not in body for _, body in receiver.requests)


def test_email_delivered_redacted(smtp: tuple[int, list]) -> None:
    port, received = smtp
    mail = Email.model_validate({"host": "127.0.0.1", "port": port, "starttls": False,
                                 "from": "drtool@example.org", "to": ["ops@example.org"]})
    [delivery] = Notifier(Notifications(email=[mail])).send(failure_event())
    assert delivery.ok
    [envelope] = received
    text = envelope.content.decode()
    assert envelope.rcpt_tos == ["ops@example.org"] and "backup failed: siak" in text
    assert CANARY not in text and "***" in text


def test_email_refuses_plaintext_when_starttls_is_required(smtp: tuple[int, list]) -> None:
    port, received = smtp
    mail = Email.model_validate({"host": "127.0.0.1", "port": port, "starttls": True,
                                 "from": "drtool@example.org", "to": ["ops@example.org"]})
    [delivery] = Notifier(Notifications(email=[mail]), sleep=lambda s: None).send(failure_event())
    assert not delivery.ok and delivery.attempts == 1 and "STARTTLS" in (delivery.error or "")
    assert received == []
