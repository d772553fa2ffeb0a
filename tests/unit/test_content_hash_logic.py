"""Pure logic of content fingerprints: SQL builders, comparison, name mapping, SQLite row form."""

from __future__ import annotations

import pytest

from drtool.errors import SourceError
from drtool.sources.base import compare_fingerprints, content_methods, expected_for
from drtool.sources.mariadb.commands import build_content, group_columns, hashes_sql
from drtool.sources.postgres.commands import (
    HASH_MD5_UTF8,
    HASH_RECORD,
    HASH_TEXT,
    ContentTable,
    content_sql,
    content_tables_sql,
    hash_method,
    row_hash_sql,
)
from drtool.sources.sqlite_dump import _Text, _value_bytes


def test_hash_method_depends_on_version_and_encoding() -> None:
    assert hash_method(150004, "UTF8") == HASH_RECORD
    assert hash_method(140000, "UTF8") == HASH_RECORD          # hash_record_extended from 14 on
    assert hash_method(130011, "UTF8") == HASH_TEXT
    assert hash_method(150004, "LATIN1") == HASH_MD5_UTF8     # a restore converts it to UTF8
    assert hash_method(100023, "UTF8") == HASH_MD5_UTF8       # no hashtextextended before 11


def test_row_hash_sql_uses_row_text_or_sorted_jsonb_for_children() -> None:
    plain = ContentTable("public.t", '"public"."t"')
    child = ContentTable("public.c", '"public"."c"', is_child=True)
    assert row_hash_sql(HASH_TEXT, plain) == "hashtextextended(ROW(r.*)::text, 0)"
    assert row_hash_sql(HASH_TEXT, child) == "hashtextextended(to_jsonb(r)::text, 0)"
    assert row_hash_sql(HASH_MD5_UTF8, plain) == (
        "('x' || left(md5(convert_to(ROW(r.*)::text, 'UTF8')), 16))::bit(64)::bigint")
    with pytest.raises(SourceError, match="unknown PostgreSQL content hash method 'v99'"):
        row_hash_sql("v99", plain)


def test_record_hash_only_where_every_column_hashes_its_value_and_the_order_is_kept() -> None:
    hashable = ContentTable("public.t", '"public"."t"', record_hashable=True)
    hashable_child = ContentTable("public.c", '"public"."c"', is_child=True, record_hashable=True)
    other = ContentTable("public.e", '"public"."e"')          # an enum, a regclass, a nondeterministic collation...
    assert row_hash_sql(HASH_RECORD, hashable) == "hash_record_extended(r, 0)"
    assert row_hash_sql(HASH_RECORD, hashable_child) == "hashtextextended(to_jsonb(r)::text, 0)"
    assert row_hash_sql(HASH_RECORD, other) == "hashtextextended(ROW(r.*)::text, 0)"
    # The catalog is only asked for it under HASH_RECORD (collisdeterministic: PostgreSQL 12+).
    assert "collisdeterministic" in content_tables_sql(HASH_RECORD)
    assert "collisdeterministic" not in content_tables_sql(HASH_TEXT) and "false)" in content_tables_sql(HASH_TEXT)
    assert "'{16,17,18,19,20,21,23,25,26,700,701,1042,1043,1082,1083,1114,1184,1700,2950,3802}'::oid[]" in \
        content_tables_sql(HASH_RECORD)


def test_content_sql_exact() -> None:
    tables = [ContentTable("public.t", "public.t"), ContentTable("public.p", "public.p", partitioned=True),
              ContentTable("public.par", "public.par", has_children=True)]
    assert content_sql(tables, HASH_TEXT) == (
        "SELECT coalesce(json_object_agg(k, json_build_array(n, h)), '{}') FROM ("
        "SELECT 'public.t' AS k, count(*) AS n, coalesce(sum(hashtextextended(ROW(r.*)::text, 0)), 0)::text AS h "
        "FROM public.t AS r"
        " UNION ALL SELECT 'public.p' AS k, count(*) AS n, NULL::text AS h FROM public.p"
        " UNION ALL SELECT 'public.par' AS k, (SELECT count(*) FROM public.par) AS n, "
        "(SELECT coalesce(sum(hashtextextended(ROW(r.*)::text, 0)), 0)::text FROM ONLY public.par AS r) AS h"
        ") s")


def test_mariadb_hash_sql_sorts_columns_and_skips_tables_without_columns() -> None:
    columns = group_columns([["db", "t", "z"], ["db", "t", "a`b"], ["db", "u", "x"]])
    assert columns == {("db", "t"): ["a`b", "z"], ("db", "u"): ["x"]}
    sql = hashes_sql([("db", "t"), ("db", "nocols")], columns)
    assert sql == ("SELECT 0, IFNULL(SUM(CAST(CONV(LEFT(MD5(CONCAT_WS(',', IFNULL(MD5(`a``b`), 'N'), "
                   "IFNULL(MD5(`z`), 'N'))), 16), 16, 10) AS UNSIGNED)), 0) FROM `db`.`t`;\n")
    assert build_content(["db"], [("db", "t")], [["0", "42"]]) == {
        "db": {"method": "mariadb-md5-sum-v1", "tables": {"t": "42"}}}


FP = {"kind": "postgres", "databases": {"siak": {"public.a": 3, "public.b": 2}},
      "content": {"siak": {"method": HASH_TEXT, "tables": {"public.a": "10", "public.b": "20"}}}}


def test_compare_names_the_table_whose_content_differs_in_backup_order() -> None:
    actual = {"databases": {"siak": {"public.a": 3, "public.b": 2}},
              "content": {"siak": {"method": HASH_TEXT, "tables": {"public.a": "11", "public.b": "21"}}}}
    problems = compare_fingerprints(FP, actual)
    assert problems == [
        "siak.public.a: content differs from the backup (same 3 rows, content hash 11 restored, 10 at backup)",
        "siak.public.b: content differs from the backup (same 2 rows, content hash 21 restored, 20 at backup)"]


def test_compare_reports_a_count_before_content_and_ignores_hashes_missing_on_either_side() -> None:
    actual = {"databases": {"siak": {"public.a": 4, "public.b": 2}},
              "content": {"siak": {"method": HASH_TEXT, "tables": {"public.a": "99", "public.b": "20"}}}}
    assert compare_fingerprints(FP, actual) == ["siak.public.a: 4 rows restored, 3 at backup"]
    counts_only = {"databases": {"siak": {"public.a": 3, "public.b": 2}}}
    assert compare_fingerprints(FP, counts_only) == []                         # nothing hashed: counts
    old = {"databases": FP["databases"]}
    assert compare_fingerprints(old, {**counts_only, "content": actual["content"]}) == []


def test_expected_for_carries_content_under_the_restored_name() -> None:
    assert expected_for(FP, ["siak_copy"]) == {"databases": {"siak_copy": FP["databases"]["siak"]},
                                               "content": {"siak_copy": FP["content"]["siak"]}}
    assert content_methods(expected_for(FP, ["siak_copy"])) == {"siak_copy": HASH_TEXT}
    assert content_methods({"databases": {}}) == {}


def test_sqlite_value_form_keeps_storage_classes_apart() -> None:
    forms = {_value_bytes(v) for v in (1, _Text(b"1"), b"1", 1.0, None)}
    assert len(forms) == 5
    assert _value_bytes("1") == _value_bytes(_Text(b"1"))
    assert _value_bytes(_Text(b"ab")) == b"t2:ab"
    assert _value_bytes(None) == b"n0:"
