"""How the MariaDB source reaches its client programs: lookup once, one-shot SQL."""

from __future__ import annotations

from drtool.errors import CommandError, SourceError
from drtool.execute import Runner
from drtool.sources.mariadb.commands import QUERY_TIMEOUT, Conn, access_hint, client_argv, parse_batch


class Client:
    """The runner plus the client programs found on its host (mariadb or mysql, ...)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._programs: dict[str, str] = {}

    def program(self, *names: str) -> str:
        key = names[0]
        if key not in self._programs:
            found = next((p for p in (self.runner.which(n) for n in names) if p), None)
            if not found:
                raise SourceError(f"{' / '.join(names)} not found on {self.runner.name}",
                                  hint="install the MariaDB client tools (Debian: mariadb-client)")
            self._programs[key] = found
        return self._programs[key]

    def client(self) -> str:
        return self.program("mariadb", "mysql")

    def run_sql(self, conn: Conn, sql: str, database: str | None = None,
                timeout: float = QUERY_TIMEOUT) -> list[list[str]]:
        argv = client_argv(self.client(), conn, database)
        try:
            res = self.runner.run(argv, env=conn.env(), input=sql.encode(), timeout=timeout)
        except CommandError as exc:
            raise SourceError(f"MariaDB query at {conn.describe()} failed: {exc.message}",
                              hint=access_hint(exc.stderr_tail)) from None
        return parse_batch(res.text)
