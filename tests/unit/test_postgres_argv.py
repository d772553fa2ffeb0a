"""Pure builders of the PostgreSQL source and scratch: exact argv, SQL text and parsing."""

from __future__ import annotations

import pytest

from drtool.errors import SourceError
from drtool.scratch.postgres import hba_conf, pick_bin_dir, server_conf
from drtool.sources.postgres import (
    count_sql,
    filter_globals,
    parse_records,
    pg_dump_argv,
    pg_dumpall_globals_argv,
    pg_restore_argv,
    stream_databases,
)
from drtool.sources.psql import (
    conn_args,
    connection_hint,
    conninfo_dbname,
    libpq_env,
    psql_argv,
    quote_ident,
)

CONN = ["-h", "127.0.0.1", "-p", "5433", "-U", "backup", "-w"]
BIN = "/usr/lib/postgresql/15/bin"


def test_conn_args_never_prompt() -> None:
    assert conn_args("127.0.0.1", 5433, "backup") == CONN
    assert conn_args(None, None, None) == ["-w"]


def test_conninfo_dbname_quotes_names_libpq_would_parse() -> None:
    assert conninfo_dbname("siak") == "dbname='siak'"
    assert conninfo_dbname("host=evil") == "dbname='host=evil'"
    assert conninfo_dbname("o'brien\\x") == "dbname='o\\'brien\\\\x'"


def test_psql_argv_session_and_records() -> None:
    assert psql_argv(BIN, CONN, "siak") == [
        f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\x1f", *CONN, "--dbname=dbname='siak'"]
    assert psql_argv(None, CONN, "siak", records=True, stop_on_error=False) == [
        "psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-R", "\x1e", *CONN, "--dbname=dbname='siak'"]


def test_pg_dump_argv_uses_snapshot_and_custom_format() -> None:
    assert pg_dump_argv(BIN, CONN, "siak", "00000003-0000001B-1") == [
        f"{BIN}/pg_dump", "-Fc", "-Z0", "--snapshot=00000003-0000001B-1", *CONN, "--dbname=dbname='siak'"]


def test_pg_dumpall_globals_argv() -> None:
    assert pg_dumpall_globals_argv(None, CONN) == ["pg_dumpall", "--globals-only", *CONN]


def test_pg_restore_argv_stream_and_parallel_sections() -> None:
    assert pg_restore_argv(None, CONN, "siak") == [
        "pg_restore", *CONN, "--exit-on-error", "--no-tablespaces", "--dbname=dbname='siak'"]
    assert pg_restore_argv(BIN, CONN, "siak", file="/t/siak.pgdump", jobs=2, sections=("pre-data", "data"),
                           keep_owners=False) == [
        f"{BIN}/pg_restore", *CONN, "--exit-on-error", "--no-tablespaces", "--no-owner", "--no-privileges",
        "-j", "2", "--section=pre-data", "--section=data", "--dbname=dbname='siak'", "/t/siak.pgdump"]
    assert pg_restore_argv(None, CONN, "siak", sections=("pre-data", "data"), single_transaction=True) == [
        "pg_restore", *CONN, "--exit-on-error", "--no-tablespaces", "--single-transaction",
        "--section=pre-data", "--section=data", "--dbname=dbname='siak'"]


def test_no_password_in_any_argv() -> None:
    env = libpq_env("s3cret-pw")
    assert env["PGPASSWORD"] == "s3cret-pw"
    for argv in (pg_dump_argv(None, CONN, "d", "s"), pg_restore_argv(None, CONN, "d"), psql_argv(None, CONN, "d")):
        assert not any("s3cret" in a for a in argv)
    assert "PGPASSWORD" not in libpq_env(None)


def test_count_sql_quotes_keys_and_names() -> None:
    sql = count_sql([("public.a", "public.a"), ("arsip.Kartu 'K'", 'arsip."Kartu \'K\'"')])
    assert sql == (
        "SELECT coalesce(json_object_agg(k, n), '{}') FROM ("
        "SELECT 'public.a' AS k, count(*) AS n FROM public.a UNION ALL "
        "SELECT 'arsip.Kartu ''K''' AS k, count(*) AS n FROM arsip.\"Kartu 'K'\") s")
    assert quote_ident('we"ird') == '"we""ird"'


def test_stream_databases_maps_and_renames() -> None:
    names = ["globals.sql", "siak.pgdump", "kota.pgdump"]
    assert stream_databases(names, None) == {"kota.pgdump": "kota", "siak.pgdump": "siak"}
    assert stream_databases(["siak.pgdump", "globals.sql"], "drill") == {"siak.pgdump": "drill"}
    assert stream_databases(names, "kota") == {"kota.pgdump": "kota"}
    with pytest.raises(SourceError, match="several databases"):
        stream_databases(names, "other")
    with pytest.raises(SourceError, match="no PostgreSQL dump"):
        stream_databases(["globals.sql"], None)


def test_filter_globals_keeps_the_connecting_role_untouched() -> None:
    sql = ("CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'SCRAM-SHA-256$x';\n"
           "CREATE ROLE postgres_ro;\nALTER ROLE postgres_ro WITH LOGIN;\n"
           'CREATE ROLE "Admin";\nALTER ROLE "Admin" WITH LOGIN;\n')
    assert filter_globals(sql, "postgres") == (
        "CREATE ROLE postgres_ro;\nALTER ROLE postgres_ro WITH LOGIN;\n"
        'CREATE ROLE "Admin";\nALTER ROLE "Admin" WITH LOGIN;\n')
    assert filter_globals(sql, "Admin").count("Admin") == 0
    assert filter_globals(sql, None) == sql


def test_parse_records_handles_newlines_and_empty_output() -> None:
    assert parse_records(b"a\nb\x1f\x1f3\x1ec\x1fd\x1f4\n") == [["a\nb", "", "3"], ["c", "d", "4"]]
    assert parse_records(b"") == []


def test_connection_hint_names_the_likely_cause() -> None:
    where = "postgres u@127.0.0.1:5/d"
    assert "wrong password" in connection_hint('FATAL:  password authentication failed for user "u"', where)
    assert "server running" in connection_hint("Connection refused", where)
    assert "pg_hba.conf" in connection_hint("FATAL:  no pg_hba.conf entry for host", where)
    assert "wants a password" in connection_hint("fe_sendauth: no password supplied", where)


def test_pick_bin_dir_lowest_major_at_least_min() -> None:
    majors = {13: "/pg/13/bin", 15: "/pg/15/bin", 16: "/pg/16/bin"}
    assert pick_bin_dir(None, majors) == (13, "/pg/13/bin")
    assert pick_bin_dir(14, majors) == (15, "/pg/15/bin")
    with pytest.raises(SourceError, match="(?s)17 or newer.*installed: 13, 15, 16.*postgresql-17"):
        pick_bin_dir(17, majors)


def test_server_conf_listens_on_loopback_only_and_is_tuned() -> None:
    conf = server_conf(5544, "/tmp/drtool-pg-x")
    assert "listen_addresses = '127.0.0.1'\n" in conf
    assert "port = 5544\n" in conf and "unix_socket_directories = '/tmp/drtool-pg-x'\n" in conf
    assert "fsync = off\n" in conf and "maintenance_work_mem = 512MB\n" in conf
    assert hba_conf(False).splitlines()[1:] == ["local all all trust", "host all all 127.0.0.1/32 trust"]
    assert hba_conf(True).splitlines()[-1] == "host all all 127.0.0.1/32 scram-sha-256"
