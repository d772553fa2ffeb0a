"""Pure logic of partial restores: restic-style path patterns, the PostgreSQL TOC selection,
the MariaDB dump section filter."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from drtool.errors import UsageError
from drtool.sources.mariadb.partial import SectionFilter, relay_sections
from drtool.sources.patterns import ancestors, check_pattern, matches
from drtool.sources.postgres.partial import parse_toc, select

TOC = (Path(__file__).parent / "data" / "pg_toc_sample.txt").read_text()


@pytest.mark.parametrize("pattern, path, expect", [
    ("scans/2026/11/*", "/srv/scans/2026/11/a.pdf", True),
    ("scans/2026/11/*", "/srv/scans/2026/11/sub/b.pdf", True),      # below a match: restored too
    ("scans/2026/11/*", "/srv/scans/2026/11", False),
    ("scans/2026/11/*", "/srv/scans/2026/10/a.pdf", False),
    ("/srv/scans/2026", "/srv/scans/2026/10/a.pdf", True),
    ("/srv/scans/2026", "/other/srv/scans/2026/x", False),            # absolute: from the root only
    ("srv/scans", "/other/srv/scans/x", True),                       # relative: at any depth
    ("/srv/**/a.pdf", "/srv/scans/2026/10/a.pdf", True),
    ("/srv/**/a.pdf", "/srv/a.pdf", True),
    ("*.pdf", "/srv/scans/b.txt", False),
    ("ktp-[^0]*", "/srv/ktp-1.pdf", True),
    ("ktp-[^0]*", "/srv/ktp-0.pdf", False),
])
def test_patterns_follow_restics_include_rules(pattern: str, path: str, expect: bool) -> None:
    assert matches([pattern], path) is expect


def test_pattern_checks_and_ancestors() -> None:
    with pytest.raises(UsageError, match="'..'"):
        check_pattern("scans/../../etc")
    with pytest.raises(UsageError):
        check_pattern("  ")
    assert ancestors("/srv/scans/a.pdf") == ["/srv", "/srv/scans"]


def test_toc_selection_brings_what_belongs_to_a_table_and_what_it_needs() -> None:
    entries = parse_toc(TOC)
    chosen = select(entries, tables=["public.a"])
    ids = [int(line.split(";")[0]) for line in chosen.lines]
    # table, data, comment, grant, owned sequence (+ owned by, value, default), pkey, index,
    # trigger, the trigger's function and the standalone sequence the table uses (+ its value)
    assert ids == [221, 215, 217, 3376, 3377, 216, 3378, 3212, 3367, 3379, 3380, 3217, 3215, 3221]
    assert chosen.tables == ["public.a"]
    assert chosen.skipped == ["FK CONSTRAINT public b b_id_fkey postgres"]     # b is not restored
    both = select(entries, tables=["public.a", "public.b"])
    assert 3220 in [int(line.split(";")[0]) for line in both.lines] and both.skipped == []
    assert 220 not in [int(line.split(";")[0]) for line in both.lines]           # views never


def test_toc_selection_of_a_schema_and_name_errors() -> None:
    entries = parse_toc(TOC)
    assert [int(line.split(";")[0]) for line in select(entries, schemas=["arsip"]).lines] == [6, 219, 3369, 3219]
    with pytest.raises(UsageError, match="several schemas"):
        select(entries, tables=["a"])
    with pytest.raises(UsageError, match="no table 'zz'"):
        select(entries, tables=["zz"])
    spaced = parse_toc("216; 1259 16393 TABLE public Kartu Keluarga postgres\n"
                       "3379; 0 16393 TABLE DATA public Kartu Keluarga postgres\n;\tdepends on: 216\n")
    assert select(spaced, tables=["Kartu Keluarga"]).tables == ["public.Kartu Keluarga"]


DUMP = b"""/*!40101 SET NAMES utf8mb4 */;
/*!40103 SET TIME_ZONE='+00:00' */;
--
-- Table structure for table `a`
--
CREATE TABLE `a` (id int);
--
-- Dumping data for table `a`
--
INSERT INTO `a` VALUES (1);
--
-- Table structure for table `odd name`
--
CREATE TABLE `odd name` (z int);
--
-- Dumping data for table `odd name`
--
INSERT INTO `odd name` VALUES (2);
CREATE TRIGGER t ...;
--
-- Dumping routines for database 'd'
--
CREATE FUNCTION f() ...;
"""


def test_section_filter_keeps_preamble_and_the_chosen_tables_only() -> None:
    out = io.BytesIO()
    sections = SectionFilter(["odd name"])
    assert relay_sections(io.BytesIO(DUMP), out, sections) == len(DUMP)
    text = out.getvalue().decode()
    assert "SET NAMES" in text and "CREATE TABLE `odd name`" in text and "CREATE TRIGGER t" in text
    assert "`a`" not in text and "FUNCTION" not in text
    assert sections.found == {"odd name"}


def test_section_filter_reads_long_lines_in_pieces_without_looking_inside() -> None:
    long_row = b"INSERT INTO `a` VALUES ('" + b"-- Table structure for table `b`" * 5000 + b"');\n"
    dump = b"-- Table structure for table `a`\n" + long_row + b"-- Table structure for table `b`\nB\n"
    out = io.BytesIO()
    relay_sections(io.BytesIO(dump), out, SectionFilter(["a"]))
    assert out.getvalue() == b"-- Table structure for table `a`\n" + long_row
