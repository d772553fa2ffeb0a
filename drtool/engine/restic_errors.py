"""What went wrong in a restic run, from its exit code and stderr (pure functions).

restic 0.14 (Debian 12) exits 1 for nearly everything and, when it cannot open
the repository's config file for *any* reason, adds "Is there a repository at the
following location?" under the real cause. So the cause is read from the first
`Fatal:` line (or the first line that is not Go's stack dump), never from that
question. Newer restic also has exit codes 10 (no repository), 11 (locked) and 12
(wrong password); both are understood.

    WrongPassword        "wrong password or no key found"
    RepositoryMissing    "The specified key does not exist" while opening config, NoSuchBucket
    AccessDenied         SignatureDoesNotMatch, InvalidAccessKeyId, AccessDenied, 403
    StorageThrottled     SlowDown / "reduce your request rate", 503, InternalError / 500
    StorageUnreachable   connection refused / reset / closed, DNS, timeouts, unexpected EOF
    RepositoryLocked     "repository is already locked", "unable to create lock"
"""

from __future__ import annotations

import re

from drtool.errors import (AccessDenied, DrtoolError, RepositoryLocked, RepositoryMissing, StorageThrottled,
                           StorageUnreachable, WrongPassword)

_GO_FRAME = re.compile(r"^(\t|\s{2,}\S+\.go:\d+|goroutine \d+|[\w./-]+\.\(?[\w*]+\)?\.[\w.()*-]+$|"
                       r"[\w.-]+/[\w./-]+\.[\w.()*-]+$|main\.[\w.]+$|runtime\.\w+)")
_QUESTION = "is there a repository at the following location"

_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "connection reset", "connection closed",
                "broken pipe", "unexpected eof", "context deadline exceeded", "network is unreachable",
                "tls handshake timeout", "server misbehaving", "eof")
_THROTTLED = ("slowdown", "slow down", "reduce your request rate", "503", "service unavailable",
              "internalerror", "internal error", "500 internal", "502 bad gateway", "504 gateway")
_DENIED = ("signaturedoesnotmatch", "signature we calculated does not match", "invalidaccesskeyid",
           "access key id you provided does not exist", "access denied", "accessdenied", "forbidden",
           "403")
_MISSING = ("specified key does not exist", "repository does not exist", "nosuchkey", "nosuchbucket",
            "specified bucket does not exist", "no such file or directory",
            "<config/> does not exist")   # restic's REST backend


def clean_stderr(stderr: str, limit: int = 15) -> str:
    """restic's own lines, without Go stack dumps and the misleading repository question."""
    lines = []
    skip_url = False
    for line in stderr.splitlines():
        low = line.strip().lower()
        if skip_url:
            skip_url = False
            if ":" in low and " " not in low.strip():
                continue        # the repository URL printed under the question
        if not low or _GO_FRAME.match(line):
            continue
        if _QUESTION in low:
            skip_url = True
            continue
        lines.append(line.rstrip())
    return "\n".join(lines[-limit:])


def cause_line(stderr: str) -> str:
    """The line that says why restic failed: its first `Fatal:` line, else the first clean line."""
    cleaned = clean_stderr(stderr, limit=200).splitlines()
    for line in cleaned:
        if line.startswith("Fatal:"):
            return line.removeprefix("Fatal:").strip()
    return cleaned[0].strip() if cleaned else ""


_QUOTED_URL = re.compile(r'"[a-z][a-z0-9+.-]*://[^"]*"')


def _matches(text: str, markers: tuple[str, ...]) -> str | None:
    for marker in markers:
        if marker == "eof" or marker.isdigit():
            # Whole words: "503" inside an object id (.../data/e2/...a25034...) or a port is no status.
            if re.search(rf"\b{marker}\b", text):
                return marker
        elif marker in text:
            return marker
    return None


def _without_urls(text: str) -> str:
    """The cause without the URLs Go quotes in it (`Put "http://.../data/ab/abcd...": dial tcp ...`):
    an object id, a bucket or a prefix may hold any marker ("503", "forbidden")."""
    return _QUOTED_URL.sub('"URL"', text)


def classify(code: int | None, stderr: str, url: str) -> DrtoolError | None:
    """A typed error for a known cause, or None (the caller keeps restic's own lines)."""
    cause = cause_line(stderr)
    low = _without_urls(cause.lower())
    shown = cause[:300]
    if code == 12 or "wrong password" in low or "no key found" in low:
        return WrongPassword(f"restic could not open repository {url}: wrong password or no key found",
                             hint="check the repository password reference in drtool.yaml (or the recovery kit)")
    if code == 11 or "already locked" in low or "unable to create lock" in low:
        return RepositoryLocked(f"repository {url} is locked by another restic process ({shown})",
                                hint="drtool removes locks of dead processes on this host by itself and waits "
                                     "`lock_wait` for live ones; `drtool unlock POLICY` shows who holds them")
    if _matches(low, _DENIED):
        return AccessDenied(f"the storage of repository {url} refused the credentials ({shown})",
                            hint="check access_key_id / secret_access_key in drtool.yaml and the bucket policy")
    if _matches(low, _THROTTLED):
        return StorageThrottled(f"the storage of repository {url} is throttling or failing requests ({shown})",
                                hint="the S3 service answered 'slow down' / 5xx; drtool waited it out as long as "
                                     "`wait_unavailable` allows; try again later or raise that limit")
    marker = _matches(low, _UNREACHABLE)
    if marker:
        return StorageUnreachable(f"cannot reach the storage of repository {url} ({shown})",
                                  hint="check the endpoint address, the network, and that the S3 server is up")
    if code == 10 or (_matches(low, _MISSING) and ("config" in low or "bucket" in low or "repository" in low)):
        return RepositoryMissing(f"no restic repository at {url} ({shown})",
                                 hint="run `drtool init-repo NAME` (or a first `drtool backup`, which initialises it)")
    return None
