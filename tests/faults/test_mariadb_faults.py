"""mariadb-dump killed mid-stream (real MariaDB, ~8 MB of rows): no snapshot of the cut dump,
the run recorded and alerted, and the next backup whole."""

from __future__ import annotations

import pytest

from tests.faults.conftest import (
    assert_clean_backup_failure,
    assert_no_leak,
    kill,
    next_run_succeeds,
    stop_after,
    wait_for_child,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def maria():  # noqa: ANN201
    from tests.support.mariadb import mariadb_server

    for server in mariadb_server():
        server.admin_sql("CREATE DATABASE siak; CREATE TABLE siak.arsip (id INT PRIMARY KEY, doc LONGBLOB);"
                         "USE siak; INSERT INTO arsip SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_4000;")
        yield server


def test_mariadb_dump_killed_mid_stream(make_site, receiver, maria) -> None:  # noqa: ANN001
    site = make_site(receiver)
    secret = site.root / "secrets" / "maria.pass"
    secret.write_text(maria.password.reveal())
    secret.chmod(0o600)
    site.policy("arsip", [{"name": "arsip-db", "mariadb": {"database": "siak", "port": maria.port,
                                                           "password": {"file": str(secret)}}}])
    first = next_run_succeeds(site, "arsip", ["arsip-db"])
    size = first["details"]["sources"]["arsip-db"]["streams"]["siak.sql"]["bytes_in"]
    started = site.start("backup", "arsip")
    dump = wait_for_child(started.pid, "mariadb-dump")
    stop_after(dump, size // 2, owner=started)
    kill(dump)
    proc = started.wait()
    assert_clean_backup_failure(site, proc, "arsip", r"dump of arsip-db/siak\.sql was killed by signal 9",
                                db_sources=["arsip-db"])
    next_run_succeeds(site, "arsip", ["arsip-db"])
    assert_no_leak(site)
