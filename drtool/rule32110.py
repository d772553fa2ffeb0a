"""The 3-2-1-1-0 rule for one policy (pure): 3 copies of the data, on 2 media or providers,
1 offsite, 1 immutable, 0 errors after verification.

    3   copies: production, plus every repository that holds the backup (the policy's own
        repository when it has a complete backup, each `copies:` repository when its last copy
        run succeeded and was verified)
    2   distinct media/providers among those copies (production counts as "this server"; a
        repository's `provider:`, else its endpoint host:port)
    1o  at least one copy is off this machine (an s3:, rest: or sftp: repository)
    1i  at least one copy is immutable, as proven by the last attack drill on it (an
        `immutability:` step that passed), never by configuration alone
    0   the last repository check succeeded and the last drill that verified a restore passed

Each letter that falls short says why and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

PRODUCTION = "this server"
LETTERS = ("3", "2", "1o", "1i", "0")
NAMES = {"3": "copies", "2": "media", "1o": "offsite", "1i": "immutable", "0": "errors"}


@dataclass(frozen=True)
class RepoFacts:
    name: str
    url: str
    provider: str
    offsite: bool
    holds_copy: bool
    copy_detail: str                       # "complete backup of <time>", "last copy failed: ..."
    attack: dict[str, Any] | None = None   # the last attack drill on it: passed, at, drill, through
    configured: str | None = None          # immutable mode in the configuration, for the advice


@dataclass(frozen=True)
class Letter:
    key: str
    met: bool
    detail: str
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"letter": self.key, "name": NAMES[self.key], "met": self.met, "detail": self.detail,
                "advice": self.advice}


def provider_of(url: str, provider: str | None) -> tuple[str, bool]:
    """(provider, offsite) of a repository URL (pure)."""
    if url.startswith(("/", "local:")):
        return provider or PRODUCTION, False
    scheme, body = url.split(":", 1)
    if body.startswith("http"):
        where = urlsplit(body).netloc.rsplit("@", 1)[-1]
    elif scheme == "sftp":                # sftp:user@host:/path
        where = body.lstrip("/").rsplit("@", 1)[-1].split(":", 1)[0].split("/", 1)[0]
    else:                                 # s3:host/bucket
        where = body.lstrip("/").split("/", 1)[0]
    return provider or where, True


def assess(repos: list[RepoFacts], *, last_check: dict[str, Any] | None,
           last_verified_drill: dict[str, Any] | None) -> dict[str, Any]:
    letters = [_copies(repos), _media(repos), _offsite(repos), _immutable(repos),
               _errors(last_check, last_verified_drill)]
    short = [x for x in letters if not x.met]
    detail = "met" if not short else "falls short on " + ", ".join(f"{x.key} ({NAMES[x.key]})" for x in short)
    return {"met": not short, "letters": {x.key: x.met for x in letters}, "detail": detail,
            "assessment": [x.to_dict() for x in letters],
            "repositories": [{"name": r.name, "provider": r.provider, "offsite": r.offsite,
                              "holds_copy": r.holds_copy, "copy": r.copy_detail, "attack": r.attack}
                             for r in repos]}


def _copies(repos: list[RepoFacts]) -> Letter:
    holding = [r for r in repos if r.holds_copy]
    n = 1 + len(holding)
    names = ", ".join(["production"] + [r.name for r in holding])
    if n >= 3:
        return Letter("3", True, f"{n} copies: {names}")
    missing = [f"{r.name}: {r.copy_detail}" for r in repos if not r.holds_copy]
    advice = ("; ".join(missing) + "; ") if missing else ""
    advice += (f"add {3 - n} more repositor{'y' if 3 - n == 1 else 'ies'} to the policy's `copies:`"
               if len(repos) < 2 else "fix the failing copy (see `drtool runs`)")
    return Letter("3", False, f"{n} cop{'y' if n == 1 else 'ies'}: {names}", advice)


def _media(repos: list[RepoFacts]) -> Letter:
    providers = sorted({PRODUCTION} | {r.provider for r in repos if r.holds_copy})
    if len(providers) >= 2:
        return Letter("2", True, f"{len(providers)} media/providers: {', '.join(providers)}")
    return Letter("2", False, "every copy is on this server",
                  "keep a copy with another provider or on another medium (set a repository's `provider:` when "
                  "two endpoints belong to different providers)")


def _offsite(repos: list[RepoFacts]) -> Letter:
    away = [r.name for r in repos if r.offsite and r.holds_copy]
    if away:
        return Letter("1o", True, f"offsite: {', '.join(away)}")
    return Letter("1o", False, "no copy is off this machine",
                  "back up or copy to an s3:, rest: or sftp: repository in another building")


def _immutable(repos: list[RepoFacts]) -> Letter:
    proven = [r for r in repos if r.holds_copy and r.attack and r.attack.get("passed")]
    if proven:
        r = proven[0]
        return Letter("1i", True, f"{r.name}: the attack drill of {str(r.attack.get('at'))[:10]} "
                                  f"({r.attack.get('drill')}) was refused in every attempt")
    failed = [r for r in repos if r.attack and not r.attack.get("passed")]
    if failed:
        r = failed[0]
        through = ", ".join(r.attack.get("through") or []) or "see the drill report"
        return Letter("1i", False, f"{r.name}: the last attack drill ({str(r.attack.get('at'))[:10]}) got through: "
                                   f"{through}",
                      "make the storage enforce it (a store with Object Lock that refuses these calls, or an "
                      "append-only REST server; see the README), then drill the attack again")
    configured = [r.name for r in repos if r.configured]
    said = f" ({', '.join(configured)} configured immutable: configuration is not proof)" if configured else ""
    return Letter("1i", False, "no attack drill has proven any copy immutable" + said,
                  "add a step `immutability: {}` to a playbook of this policy (`from: REPO` to attack a copy)"
                  + ("" if configured else ", with an immutable repository (immutable: in drtool.yaml)"))


def _errors(check: dict[str, Any] | None, drill: dict[str, Any] | None) -> Letter:
    problems, advice = [], []
    if check is None:
        problems.append("no repository check yet")
        advice.append("set `check: {schedule: ...}` in the policy (or run `drtool check`)")
    elif check.get("status") != "success":
        problems.append(f"the last check ({str(check.get('started_at'))[:10]}) failed")
        advice.append("see `drtool runs --policy P` and run `drtool check` again")
    if drill is None:
        problems.append("no drill has verified a restore")
        advice.append("drill a playbook with restore and verify steps")
    elif not drill.get("passed"):
        problems.append(f"the last verifying drill ({str(drill.get('started_at'))[:10]}) failed")
        advice.append("fix what it found and drill again")
    if not problems:
        return Letter("0", True, f"last check {str(check.get('started_at'))[:10]} passed, last verifying drill "
                                 f"{str(drill.get('started_at'))[:10]} passed")
    return Letter("0", False, "; ".join(problems), "; ".join(advice))


def last_attacks(drills: list[dict[str, Any]], default_repository: str) -> dict[str, dict[str, Any]]:
    """Per repository, the last attack drill's outcome, from drill reports oldest first (pure)."""
    out: dict[str, dict[str, Any]] = {}
    for report in drills:
        for step in report.get("steps") or []:
            if step.get("kind") != "immutability" or step.get("status") == "skipped":
                continue
            repo = step.get("repository") or report.get("repository") or default_repository
            out[repo] = {"passed": step.get("status") == "passed", "at": report.get("started_at"),
                         "drill": report.get("id"),
                         "through": [a["name"] for a in step.get("attempts") or []
                                     if a.get("outcome") not in ("refused", "intact")]}
    return out


def last_verified_drill(drills: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest drill with a verify step (oldest first in, pure)."""
    for report in reversed(drills):
        if any(s.get("kind") == "verify" for s in report.get("steps") or []):
            return report
    return None
