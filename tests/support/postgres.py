"""A running PostgreSQL for tests: the product's own ScratchPostgres.

    @pytest.fixture(scope="module")
    def pg():
        yield from pg_server()
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from drtool.scratch.postgres import ScratchPostgres, installed_majors
from drtool.secrets import Secret


def pg_server(min_major: int | None = None, password: Secret | None = None) -> Iterator[ScratchPostgres]:
    """Yield a started ScratchPostgres on 127.0.0.1, stopped (and removed) afterwards."""
    if not installed_majors() and not os.environ.get("CI"):
        pytest.skip("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)")
    with ScratchPostgres(min_major=min_major, password=password) as server:
        yield server
