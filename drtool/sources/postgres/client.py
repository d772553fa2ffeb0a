"""PostgreSQL: talking to a server through a Runner -- one-shot SQL and kept-open sessions."""

from __future__ import annotations

from drtool.errors import SourceError
from drtool.execute import Runner
from drtool.sources.postgres.commands import Endpoint, parse_records
from drtool.sources.psql import PsqlSession, failure_hint, psql_argv

QUERY_TIMEOUT = 600.0


def open_session(runner: Runner, ep: Endpoint, database: str) -> PsqlSession:
    return PsqlSession(runner, psql_argv(ep.bin_dir, ep.conn, database), ep.env, ep.where(database))


def run_sql(runner: Runner, ep: Endpoint, database: str, sql: str,
            timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
    """Rows as text (NULL as ''), one psql process per call."""
    # SQL goes through stdin: no argv length limit, and not visible in `ps`.
    argv = psql_argv(ep.bin_dir, ep.conn, database, records=True)
    result = runner.run(argv, env=ep.env, input=sql.encode(), timeout=timeout, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip()
        raise SourceError(f"SQL failed on {ep.where(database)} (psql exit code {result.returncode}): "
                          f"{tail[-2000:] or 'no error text'}",
                          hint=failure_hint(result.returncode, tail, ep.where(database)))
    return parse_records(result.stdout)
