"""The check steps: `sql` against a restored database, `command` (here or on a host), `http`.

A `command:` is a program drtool does not control: here it runs contained (nothing it
starts outlives the step) with a clean environment (DRTOOL_* and its own `env:`, never
drtool's secrets); on a host it runs over the SSH channel with the same variables.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from urllib.parse import urlparse

from drtool.actions.drill.context import DrillContext
from drtool.actions.drill.model import Outcome, StepFailed, check_expect
from drtool.config.models import Step
from drtool.errors import UsageError
from drtool.secrets import redact

COMMAND_TIMEOUT_S = 3600.0       # when the step sets none
HTTP_TIMEOUT_S = 60.0
HTTP_BODY_LIMIT = 1 << 20
OUTPUT_TAIL = 2000


def sql(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.sql
    restored = ctx.restored_source(spec.source)
    if restored.db is None or restored.target is None:
        raise UsageError(f"source {spec.source!r} is files; sql steps need a database source")
    database = spec.database or (restored.databases[0] if restored.databases else None)
    rows = restored.db.query(restored.target, spec.query, database)
    value = rows[0][0] if rows and rows[0] else None
    ex = spec.expect
    problems = check_expect(value, ex.equals, ex.min, ex.max, ex.regex)
    shown = "no row" if value is None else repr(value[:200])
    if problems:
        raise StepFailed(f"{'; '.join(problems)} (query: {spec.query.strip()[:200]})", data={"value": value})
    return Outcome(f"got {shown}, as expected", data={"value": value})


def command(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.command
    # Our own subprocess timeout is a little longer than the step's: the step timer
    # fires first and reports timed_out.
    timeout = (step.timeout + 5.0) if step.timeout else COMMAND_TIMEOUT_S
    runner = ctx.runner(spec.host, untrusted=True)
    env = {**ctx.command_env(), **spec.env}
    result = runner.run(spec.argv, env=env, timeout=timeout, check=False)
    out = redact(result.stdout.decode("utf-8", "replace"))[-OUTPUT_TAIL:]
    err = redact(result.stderr.decode("utf-8", "replace"))[-OUTPUT_TAIL:]
    where = f" on host {spec.host}" if spec.host else ""
    data = {"exit_code": result.returncode, "stdout_tail": out, "stderr_tail": err,
            **({"host": spec.host} if spec.host else {})}
    if result.returncode != 0:
        last = (err.strip() or out.strip()).splitlines()[-1:] or ["no output"]
        raise StepFailed(f"{spec.argv[0]}{where} exited with code {result.returncode}: {last[0][:300]}", data=data)
    last = out.strip().splitlines()[-1:] or ["no output"]
    return Outcome(f"{spec.argv[0]}{where} exited 0: {last[0][:300]}", data=data)


def http(ctx: DrillContext, step: Step) -> Outcome:
    spec = step.http
    url = urlparse(spec.url)
    if url.scheme not in ("http", "https"):
        raise UsageError(f"http step URL must be http:// or https://, got {spec.url!r}")
    timeout = step.timeout or HTTP_TIMEOUT_S
    # No proxies: a drill checks the restored service directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(spec.url, method="GET"), timeout=timeout) as resp:
            status, body = resp.status, resp.read(HTTP_BODY_LIMIT)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(HTTP_BODY_LIMIT) if exc.fp else b""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StepFailed(f"GET {redact(spec.url)} failed: {reason}") from None
    text = body.decode("utf-8", "replace")
    problems = []
    if status != spec.status:
        problems.append(f"status {status}, expected {spec.status}")
    if spec.body_regex and re.search(spec.body_regex, text) is None:
        problems.append(f"body does not match /{spec.body_regex}/")
    data = {"status": status, "bytes": len(body)}
    if problems:
        raise StepFailed(f"GET {redact(spec.url)}: {'; '.join(problems)}", data=data)
    return Outcome(f"GET {redact(spec.url)}: status {status}" + (", body matches" if spec.body_regex else ""),
                   data=data)
