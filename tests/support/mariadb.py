"""A started scratch MariaDB for other test modules' fixtures.

    @pytest.fixture(scope="module")
    def mariadb():
        yield from mariadb_server()
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from drtool.execute import LocalRunner, Process
from drtool.scratch.mariadb import ScratchMariadb
from drtool.sources.base import DumpSession


def mariadb_server() -> Iterator[ScratchMariadb]:
    if shutil.which("mariadb-install-db") is None:
        pytest.skip("mariadb-server is not installed")
    with ScratchMariadb() as server:
        yield server


class FileStreamReader:
    """A StreamReader over files in a directory: what `restic dump` would give back.

    Each stream is read by a real `cat` process, so restores see a real pipe
    and a real exit status.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_file())

    def open(self, name: str) -> Process:
        return LocalRunner().start(["cat", str(self.root / name)])

    def save(self, name: str, dest: Path) -> int:
        shutil.copyfile(self.root / name, dest)
        return dest.stat().st_size

    def size(self, name: str) -> int | None:
        return (self.root / name).stat().st_size


def save_streams(session: DumpSession, root: Path) -> dict[str, int]:
    """Consume every stream into root/<name>, as the engine pipes them to restic.

    Returns each producer's exit status.
    """
    root.mkdir(parents=True, exist_ok=True)
    codes: dict[str, int] = {}
    for stream in session.streams:
        proc = stream.start()
        with open(root / stream.name, "wb") as out:
            shutil.copyfileobj(proc.stdout, out)
        codes[stream.name] = proc.wait(60)
    return codes
