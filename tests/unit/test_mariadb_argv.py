"""Pure logic of the MariaDB / SQLite sources and the scratch server: argv, SQL text, parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from drtool.config.models import MariadbSource
from drtool.errors import SourceError
from drtool.scratch.mariadb import install_db_argv, server_argv, sql_string
from drtool.secrets import Secret
from drtool.sources.base import DbTarget
from drtool.sources.mariadb import (
    Conn,
    build_fingerprint,
    client_argv,
    conn_from_spec,
    conn_from_target,
    counts_sql,
    dump_argv,
    missing_databases,
    parse_batch,
    quote_ident,
    restore_plan,
    tables_sql,
    unescape_field,
)
from drtool.sources.sqlite import pick_stream, producer_argv

PW = "s3cret-unit-pw"
TCP = Conn("127.0.0.1", 3307, None, "backup", Secret(PW), use_socket=False)


def test_dump_argv_tcp_exact() -> None:
    assert dump_argv("mariadb-dump", TCP, "siak") == [
        "mariadb-dump", "--no-defaults", "--host=127.0.0.1", "--port=3307", "--protocol=TCP", "--user=backup",
        "--single-transaction", "--quick", "--routines", "--triggers", "--events", "--hex-blob",
        "--default-character-set=utf8mb4", "--max-allowed-packet=1G", "--", "siak"]


def test_password_only_in_env_never_in_argv() -> None:
    argvs = [dump_argv("mariadb-dump", TCP, "siak"), client_argv("mariadb", TCP, "siak", force=True)]
    assert all(PW not in " ".join(a) for a in argvs)
    assert TCP.env() == {"MYSQL_PWD": PW}
    assert Conn("h", 1, None, "u", None, use_socket=False).env() == {}


def test_client_argv_with_database_and_force() -> None:
    argv = client_argv("mariadb", TCP, "-weird", force=True)
    assert argv[:2] == ["mariadb", "--no-defaults"]
    assert argv[-2:] == ["--force", "--database=-weird"]      # a name can never become an option
    assert "--unbuffered" in argv and "--batch" in argv


def test_spec_socket_wins_over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_PW", PW)
    spec = MariadbSource(database="d", socket="/run/m.sock", password={"env": "UNIT_PW"})
    conn = conn_from_spec(spec)
    assert conn.args() == ["--socket=/run/m.sock", "--protocol=SOCKET", "--user=root"]
    assert conn.password == Secret(PW)
    assert conn_from_spec(MariadbSource(database="d", port=3310)).args()[:3] == [
        "--host=127.0.0.1", "--port=3310", "--protocol=TCP"]


def test_target_prefers_tcp_when_port_known() -> None:
    both = DbTarget(kind="mariadb", port=4000, socket="/s", user="root")
    assert conn_from_target(both).args()[:3] == ["--host=127.0.0.1", "--port=4000", "--protocol=TCP"]
    sock_only = DbTarget(kind="mariadb", port=None, socket="/s")
    assert conn_from_target(sock_only).args() == ["--socket=/s", "--protocol=SOCKET", "--user=root"]


@pytest.mark.parametrize(("names", "rename", "plan"), [
    (["a.sql", "b.sql"], None, [("a.sql", "a"), ("b.sql", "b")]),
    (["a.sql"], "drill", [("a.sql", "drill")]),
    (["a.sql", "b.sql"], "b", [("b.sql", "b")]),
])
def test_restore_plan(names: list[str], rename: str | None, plan: list[tuple[str, str]]) -> None:
    assert restore_plan(names, rename) == plan


def test_restore_plan_errors() -> None:
    with pytest.raises(SourceError, match="no MariaDB dump streams"):
        restore_plan(["app.sqlite"], None)
    with pytest.raises(SourceError, match="several databases"):
        restore_plan(["a.sql", "b.sql"], "c")


def test_batch_output_unescaping() -> None:
    assert unescape_field(r"a\tb\nc\\d\0") == "a\tb\nc\\d\0"
    assert parse_batch("x\\ty\t2\n\nz\t3\n") == [["x\ty", "2"], ["z", "3"]]


def test_sql_quoting() -> None:
    assert quote_ident("odd`name") == "`odd``name`"
    assert sql_string("it's \\ x") == "'it\\'s \\\\ x'"
    assert "'x\\'y'" in tables_sql(["x'y"])
    assert counts_sql([("d", "t`1")]) == "SELECT 0, COUNT(*) FROM `d`.`t``1`;\n"


def test_fingerprint_built_by_position_and_missing_dbs() -> None:
    tables = [("d", "a b"), ("e", "t")]
    fp = build_fingerprint(["d", "e", "empty"], tables, [["0", "5"], ["1", "0"]])
    assert fp == {"kind": "mariadb", "databases": {"d": {"a b": 5}, "e": {"t": 0}, "empty": {}}}
    assert missing_databases(["d", "x"], ["d", "mysql"]) == ["x"]


def test_scratch_server_argv_is_loopback_with_grants() -> None:
    argv = server_argv("mariadbd", Path("/h"), 4444, as_root=True)
    assert argv[:3] == ["mariadbd", "--no-defaults", "--user=mysql"]
    assert "--bind-address=127.0.0.1" in argv and "--port=4444" in argv and "--socket=/h/mysqld.sock" in argv
    assert not any("skip-grant" in a for a in argv)
    assert "--skip-log-bin" in argv and "--innodb-doublewrite=0" in argv
    assert "--user=mysql" not in server_argv("mariadbd", Path("/h"), 1, as_root=False)


def test_install_db_argv() -> None:
    argv = install_db_argv("mariadb-install-db", Path("/h/data"), as_root=True, socket_user="root")
    assert argv[:3] == ["mariadb-install-db", "--no-defaults", "--datadir=/h/data"]
    assert "--user=mysql" in argv and "--skip-test-db" in argv
    assert "--tmpdir=/h/tmp" in argv


def test_sqlite_producer_argv_and_stream_pick() -> None:
    assert producer_argv("python3", "cat", "/x/app.sqlite") == [
        "python3", "-m", "drtool.sources.sqlite_dump", "cat", "/x/app.sqlite"]
    assert pick_stream(["other", "app.sqlite"], "app.sqlite") == "app.sqlite"
    assert pick_stream(["renamed.db"], "app.sqlite") == "renamed.db"
    with pytest.raises(SourceError):
        pick_stream(["a", "b"], "app.sqlite")
