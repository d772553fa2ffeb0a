"""Restore part of a PostgreSQL dump: which entries of its table of contents to keep (pure logic).

`pg_restore -t NAME` restores a table's definition and data but none of what belongs to it
(indexes, constraints, triggers, its serial sequence), so drtool reads the dump's table of
contents (`pg_restore -l -v`, with each entry's dependencies) and writes a list for
`pg_restore -L` holding:

* the selected tables (`--table [SCHEMA.]NAME`) or everything in a schema (`--schema NAME`),
* what belongs to them: data, indexes, constraints, triggers, defaults, owned sequences and
  their values, comments, grants, row-security policies, partitions and inheritance children,
* what they need: their schema, types, functions (e.g. of triggers), sequences they use;
  a table they need (an inheritance parent) as a definition without its data,
* never a foreign key or view that needs a table left out (listed as skipped), nor large objects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from drtool.errors import UsageError

# pg_dump's entry descriptions; the longest one that prefixes an entry wins.
DESCS = sorted((
    "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOB METADATA", "BLOBS", "CAST", "CHECK CONSTRAINT",
    "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE", "DATABASE PROPERTIES", "DEFAULT",
    "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER", "EXTENSION", "FK CONSTRAINT",
    "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "FOREIGN TABLE", "FUNCTION", "INDEX", "INDEX ATTACH",
    "LARGE OBJECT", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "OPERATOR", "OPERATOR CLASS",
    "OPERATOR FAMILY", "POLICY", "PROCEDURAL LANGUAGE", "PROCEDURE", "PUBLICATION", "PUBLICATION TABLE",
    "ROW SECURITY", "RULE", "SCHEMA", "SEARCHPATH", "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY",
    "SEQUENCE SET", "SERVER", "SHELL TYPE", "STATISTICS", "STDSTRINGS", "SUBSCRIPTION", "TABLE",
    "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM", "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
), key=len, reverse=True)
TABLE_LIKE = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"})
NEVER = frozenset({"BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT", "VIEW", "MATERIALIZED VIEW",
                   "MATERIALIZED VIEW DATA", "DATABASE", "DATABASE PROPERTIES"})
_LINE = re.compile(r"^(\d+); \d+ \d+ (.*)$")


@dataclass
class TocEntry:
    id: int
    desc: str
    schema: str                        # '-' for objects outside any schema
    rest: str                          # name (and more) and owner, as pg_restore prints them
    line: str
    deps: list[int] = field(default_factory=list)

    @property
    def table_name(self) -> str:
        """A TABLE entry's name: what is left once the owner (the last word) is taken off."""
        return self.rest.rsplit(" ", 1)[0] if " " in self.rest else self.rest


@dataclass
class Selection:
    lines: list[str]                   # for pg_restore -L, in the archive's order
    tables: list[str]                  # schema.name of the tables restored with their data
    skipped: list[str]                 # entries left out because they need what is not restored


def parse_toc(text: str) -> list[TocEntry]:
    entries: list[TocEntry] = []
    for raw in text.splitlines():
        if raw.startswith(";\tdepends on:") and entries:
            entries[-1].deps += [int(x) for x in raw.split(":", 1)[1].split()]
            continue
        match = _LINE.match(raw)
        if match is None:
            continue
        body = match.group(2)
        desc = next((d for d in DESCS if body == d or body.startswith(d + " ")), body.split(" ", 1)[0])
        schema, _, rest = body[len(desc):].strip().partition(" ")
        entries.append(TocEntry(int(match.group(1)), desc, schema, rest.strip(), raw))
    return entries


def _seeds(entries: Sequence[TocEntry], tables: Sequence[str], schemas: Sequence[str]) -> set[int]:
    seeds: set[int] = set()
    for wanted in tables:
        schema, _, name = wanted.rpartition(".")
        found = [e for e in entries if e.desc == "TABLE" and e.table_name == name and schema in ("", e.schema)]
        if not found:
            raise UsageError(f"the dump has no table {wanted!r}",
                             hint="list its tables with `drtool ls POLICY --source SOURCE`")
        if len(found) > 1:
            raise UsageError(f"--table {wanted!r} is in several schemas "
                             f"({', '.join(sorted(e.schema for e in found))}); name one as SCHEMA.{name}")
        seeds.add(found[0].id)
    for schema in schemas:
        found = [e for e in entries if e.schema == schema or (e.desc == "SCHEMA" and e.table_name == schema)]
        if not found:
            raise UsageError(f"the dump has no schema {schema!r}")
        seeds.update(e.id for e in found if e.desc not in NEVER)
    return seeds


def select(entries: Sequence[TocEntry], tables: Sequence[str] = (), schemas: Sequence[str] = ()) -> Selection:
    """The entries that restore exactly these tables / schemas with what they need."""
    by_id = {e.id: e for e in entries}
    kept: dict[int, str] = {i: "seed" for i in _seeds(entries, tables, schemas)}
    skipped: set[int] = set()
    changed = True
    while changed:
        changed = _add_dependents(entries, by_id, kept, skipped) | _add_prerequisites(by_id, kept)
    chosen = [e for e in entries if e.id in kept]
    restored = [f"{e.schema}.{e.table_name}" for e in chosen if e.desc == "TABLE" and kept[e.id] != "prerequisite"]
    return Selection([e.line for e in chosen], restored,
                     [by_id[i].line.split(" ", 3)[-1] for i in sorted(skipped - set(kept))])


def _add_dependents(entries: Sequence[TocEntry], by_id: dict[int, TocEntry], kept: dict[int, str],
                    skipped: set[int]) -> bool:
    """What belongs to a kept table: everything depending on it whose other needs can be met."""
    owners = {i for i, role in kept.items() if role != "prerequisite"}
    changed = False
    for e in entries:
        if e.id in kept or e.desc in NEVER:
            continue
        owned_by, sequence_value = _ties(e, by_id, kept, owners)
        if not owned_by and not sequence_value:
            continue
        if _needs_a_table_left_out(e, by_id, kept):
            skipped.add(e.id)         # e.g. a foreign key to a table that is not restored
            continue
        kept[e.id] = "dependent" if owned_by else "prerequisite"
        changed = True
    return changed


def _ties(e: TocEntry, by_id: dict[int, TocEntry], kept: dict[int, str], owners: set[int]) -> tuple[list[int], bool]:
    """(kept tables/objects that own `e`, whether `e` sets the value of a kept sequence)."""
    sequence_value = e.desc == "SEQUENCE SET" and any(by_id.get(d, e).desc == "SEQUENCE" and d in kept for d in e.deps)
    owned_by = [d for d in e.deps if d in owners]
    if e.desc == "TABLE":   # partitions and children only through a table, never via a shared sequence
        owned_by = [d for d in owned_by if by_id[d].desc == "TABLE"]
    return owned_by, sequence_value


def _needs_a_table_left_out(e: TocEntry, by_id: dict[int, TocEntry], kept: dict[int, str]) -> bool:
    return any(d in by_id and d not in kept and by_id[d].desc in TABLE_LIKE | {"TABLE DATA"} for d in e.deps)


def _add_prerequisites(by_id: dict[int, TocEntry], kept: dict[int, str]) -> bool:
    changed = False
    for i in list(kept):
        for d in by_id[i].deps:
            if d in by_id and d not in kept and by_id[d].desc not in NEVER | {"TABLE DATA"}:
                kept[d] = "prerequisite"
                changed = True
    return changed
