"""Config fuzzing (issue 10): a few thousand mutated setups; never a traceback, exit 0 or 2, under 1 s each.

Two mutators, both derandomized (the same cases on every run) and bounded by hypothesis'
per-case deadline (the 1 s budget) and by max_examples:
- text: characters YAML cares about inserted, replaced or deleted anywhere in a file;
- structure: one value anywhere in the parsed file replaced by random YAML data
  (numbers, strings, lists, mappings, nulls, booleans, very long or nested values).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drtool.cli import main

FILES = {
    "drtool.yaml": "state_dir: ./state\ntimezone: Asia/Jakarta\nrepositories:\n  offsite:\n"
                   "    url: s3:http://127.0.0.1:9/bkt/p\n    password: {file: /nonexistent/pw}\n"
                   "    s3: {access_key_id: {env: K}, secret_access_key: {env: S}}\n"
                   "hosts:\n  db1: {address: 127.0.0.1, port: 2222, connect_timeout: 5s}\n"
                   "notifications:\n  webhooks: [{url: 'http://127.0.0.1:9/hook'}]\n",
    "policies/p.yaml": "name: p\nrepository: offsite\nschedule: daily 02:00 jitter 10m\n"
                       "targets: {rpo: 24h, rto: 1h30m}\nretention: {daily: 7, within: 3d}\n"
                       "check: {schedule: weekly sun 04:00, read_data_subset: 1/3}\n"
                       "sources:\n  - name: db\n    postgres: {database: x, password: {env: PGPW}}\n"
                       "  - name: f\n    files: {paths: [/srv/x], exclude: ['*.tmp']}\n"
                       "hooks: {before: [[/bin/true]], timeout: 5m}\n",
    "playbooks/d.yaml": "name: d\npolicy: p\nsnapshot: {random_within: 7d}\nschedule: '30 5 * * 1-5'\n"
                        "steps:\n  - name: r\n    restore: {source: db, into: scratch}\n    timeout: 10m\n"
                        "  - name: v\n    verify: {source: db}\n"
                        "  - name: q\n    sql: {source: db, query: select 1, expect: {equals: 1}}\n",
}
JUNK = "\t\n {}[]:,-&*!|>%@`'\"#?\\\x00\x7f\u00e9\u2028\ufeff0123456789aZ_./"
FUZZ = settings(max_examples=1000, deadline=1000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run_validate(files: dict[str, str]) -> tuple[int, str]:
    root = Path(tempfile.mkdtemp(prefix="drtool-fuzz-"))
    try:
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["-c", str(root / "drtool.yaml"), "validate", "--static"])
        return code, err.getvalue()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check(files: dict[str, str]) -> None:
    code, err = run_validate(files)       # an unexpected exception fails the case with its traceback
    assert code in (0, 2), f"exit {code}:\n{err}"
    assert "Traceback" not in err
    if code == 2:
        assert "drtool: error:" in err


def test_unmutated_setup_is_valid() -> None:
    assert run_validate(FILES) == (0, "note: --static: secrets, paths and servers were not checked\n")


@FUZZ
@given(target=st.sampled_from(sorted(FILES)), edits=st.lists(
    st.tuples(st.floats(0, 1), st.sampled_from(["insert", "replace", "delete"]), st.sampled_from(JUNK)),
    min_size=1, max_size=8))
def test_text_mutations(target: str, edits: list[tuple[float, str, str]]) -> None:
    chars = list(FILES[target])
    for where, op, junk in edits:
        pos = min(int(where * len(chars)), len(chars) - 1)
        if op == "insert":
            chars.insert(pos, junk)
        elif op == "replace":
            chars[pos] = junk
        elif len(chars) > 1:
            del chars[pos]
    check({**FILES, target: "".join(chars)})


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80)
    | st.sampled_from(["24", "24h", "-5m", "1/0", "0/3", "every 0s", "daily 25:00", "* * * * 8", "Asia/Jakartaa",
                       "../etc", "s3:", "/", "", "x" * 5000, "{env: X}", "latest"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["env", "file", "command", "name", "paths", "before", "equals", "min", "x"]), inner, max_size=4),
    max_leaves=12)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


@FUZZ
@given(target=st.sampled_from(sorted(FILES)), pick=st.floats(0, 1), value=YAML_VALUES, add_key=st.booleans())
def test_structure_mutations(target: str, pick: float, value: Any, add_key: bool) -> None:
    data = yaml.safe_load(FILES[target])
    paths = _paths(data)[1:]
    path = paths[min(int(pick * len(paths)), len(paths) - 1)]
    node = data
    for part in path[:-1]:
        node = node[part]
    if add_key and isinstance(node, dict):
        node["zz_extra"] = value
    else:
        node[path[-1]] = value
    check({**FILES, target: yaml.safe_dump(data, allow_unicode=True)})
