"""A throwaway directory to restore a SQLite database into."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import TracebackType

from drtool.scratch.common import private_dir
from drtool.sources.base import DbTarget

log = logging.getLogger(__name__)


class ScratchSqlite:
    """Context manager: a private 0700 directory and a target file path inside it."""

    def __init__(self, keep: bool = False, base_dir: str | None = None, name: str = "restored.sqlite") -> None:
        self.keep = keep
        self.base_dir = base_dir
        self.name = name
        self.home: Path | None = None

    @property
    def path(self) -> Path:
        assert self.home is not None, "ScratchSqlite is not started"
        return self.home / self.name

    def target(self) -> DbTarget:
        return DbTarget(kind="sqlite", host=None, path=self.path,
                        env={"DRTOOL_SQLITE_PATH": str(self.path)})

    def connection_hint(self) -> str:
        return f"sqlite3 {self.path}"

    def __enter__(self) -> ScratchSqlite:
        self.home = private_dir("sqlite", base=self.base_dir)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.keep:
            log.warning("keeping scratch SQLite: %s", self.connection_hint())
            return
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
