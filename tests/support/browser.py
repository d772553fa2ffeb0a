"""Headless Chromium (Debian's `chromium`) for the pages drtool writes: DOM, console, requests, screenshot.

    page = open_page(path, tmp_path / "shots" / "index.png")
    page.dom            # the DOM after load (--dump-dom)
    page.console        # every console message the page produced
    page.page_requests  # every URL the page itself asked for (from Chromium's net log)

Chromium runs in a fresh network namespace with only loopback up (`unshare --net`,
we are root on the test machines): whatever it or the page tries, no packet can leave
the machine. It also gets the flags that stop its own background traffic and a fresh
profile. Requests the browser makes for itself (component updates, time sync) carry
no page origin in the net log and are told apart from the page's, which are what the
tests assert on. Nothing here downloads a browser: no system chromium, no test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FLAGS = ["--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-default-apps", "--no-pings", "--disable-domain-reliability", "--metrics-recording-only",
         "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
         # Belt and braces inside the namespace: no name resolves, nothing but loopback is reachable.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
CONSOLE_RE = re.compile(r":CONSOLE(?:\(\d+\))?(?::\d+)?\]\s*(.*)")


@dataclass
class Page:
    dom: str
    console: list[str]
    page_requests: list[str]
    screenshot: Path | None
    stderr: str = field(repr=False, default="")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium is not installed: scripts/bootstrap installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _isolated(argv: list[str]) -> list[str]:
    """argv run in a new network namespace with loopback up, when we may (root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return argv
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def _run(url: str, extra: list[str], workdir: Path, timeout: float = 90) -> tuple[str, str, list[str]]:
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
    netlog = workdir / f"netlog-{profile.name}.json"
    argv = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}", *extra, url]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")     # Chromium refuses to run as root with its sandbox
    proc = subprocess.run(_isolated(argv), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout, proc.stderr, page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a page made (those with a page origin), from a Chromium net log."""
    if not netlog.exists():
        return []
    text = netlog.read_text(errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):
        text += "]}"                    # a log cut short at exit: close the events array
    data = json.loads(text)
    types = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    urls = []
    for event in data.get("events", []):
        params = event.get("params") or {}
        if (types.get(event.get("type")) == "URL_REQUEST_START_JOB" and params.get("url")
                and params.get("initiator") != "not an origin"):
            urls.append(params.get("url", ""))
    return urls


def open_page(path: Path, screenshot: Path | None = None, *, width: int = 1280, height: int = 2200) -> Page:
    """Load a file:// page twice (DOM, then screenshot) and collect console messages and requests."""
    workdir = Path(tempfile.mkdtemp(prefix="chromium-"))
    try:
        url = Path(path).resolve().as_uri()
        dom, err1, req1 = _run(url, ["--dump-dom"], workdir)
        err2, req2 = "", []
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            _out, err2, req2 = _run(url, [f"--screenshot={screenshot}", f"--window-size={width},{height}"], workdir)
            assert screenshot.exists() and screenshot.stat().st_size > 1000, "no screenshot written"
        console = [m.group(1) for m in CONSOLE_RE.finditer(err1 + "\n" + err2)]
        return Page(dom, console, req1 + req2, screenshot, err1 + err2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def outside_requests(urls: list[str]) -> list[str]:
    """The URLs that are neither file:// nor loopback (what a page must never ask for)."""
    allowed = re.compile(r"^(file:|data:|about:|https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/)")
    return [u for u in urls if not allowed.match(u)]
