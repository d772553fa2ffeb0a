"""A started scratch MariaDB for other test modules' fixtures.

    @pytest.fixture(scope="module")
    def mariadb():
        yield from mariadb_server()
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from drtool.scratch.mariadb import ScratchMariadb


def mariadb_server() -> Iterator[ScratchMariadb]:
    if shutil.which("mariadb-install-db") is None:
        pytest.skip("mariadb-server is not installed")
    with ScratchMariadb() as server:
        yield server
