"""Bad configuration: one clear message per problem with file:line:col, exit 2, never a traceback."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from drtool.cli import main
from drtool.config.durations import parse_duration
from drtool.config.loader import load_settings
from drtool.errors import ConfigError

CONFIG = """\
state_dir: ./state
repositories:
  offsite:
    url: s3:http://127.0.0.1:9000/b/p
    password: {env: PW}
"""


def _setup(tmp_path: Path, policy: str) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "drtool.yaml").write_text(CONFIG)
    (tmp_path / "policies" / "p.yaml").write_text(policy)
    return tmp_path / "drtool.yaml"


def test_every_problem_reported_with_position(tmp_path):
    cfg = _setup(tmp_path, "name: p\nrepository: offsite\ntargets: {rpo: 24x}\nsources:\n"
                           "  - name: db\n    postgres: {database: x, port: abc, colour: red}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg))
    text = str(info.value)
    assert "p.yaml:3:" in text and "targets.rpo" in text and "24x" in text
    assert "p.yaml:6:" in text and "sources[0].postgres.port" in text and "'abc'" in text
    assert "sources[0].postgres.colour" in text and "unknown key" in text


def test_unknown_repository_and_step_source(tmp_path):
    cfg = _setup(tmp_path, "name: p\nrepository: elsewhere\nsources:\n  - name: f\n    files: {paths: [/x]}\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2:\d+: at 'repository': no repository named 'elsewhere'"):
        load_settings(str(cfg))


def test_cli_exit_code_2_and_no_traceback(tmp_path, capsys):
    cfg = _setup(tmp_path, "name: [unclosed\n")
    assert main(["-c", str(cfg), "validate"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml:2:1" in err and "YAML syntax error" in err and "Traceback" not in err


def test_missing_config_is_usage_error(tmp_path, capsys):
    assert main(["-c", str(tmp_path / "nope.yaml"), "validate"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(150))
def test_fuzzed_yaml_never_tracebacks(tmp_path, seed):
    rng = random.Random(seed)
    base = "name: p\nrepository: offsite\nsources:\n  - name: f\n    files: {paths: [/x], exclude: ['*.tmp']}\n"
    chars = list(base)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(chars))
        op = rng.random()
        junk = rng.choice(string.printable + "\t{}[]:-&*!|>%@`'\"\x00\u00e9")
        if op < 0.4:
            chars[pos] = junk
        elif op < 0.7:
            chars.insert(pos, junk)
        else:
            del chars[pos]
    cfg = _setup(tmp_path, "".join(chars))
    try:
        load_settings(str(cfg))
    except ConfigError as exc:
        assert "p.yaml:" in str(exc) or "drtool.yaml" in str(exc)


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("30m", 1800), ("1h30m", 5400), ("90s", 90), (45, 45), ("2w", 1209600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "24", "h", "-5m", "1x", True, [1]])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


# ---------------------------------------------------------------- issue 10 item 11, issue 11 item 5, issue 19

BOMB = ("name: p\nrepository: offsite\n"
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n")


def test_alias_bomb_is_refused_quickly_with_position(tmp_path, capsys):
    import time

    cfg = _setup(tmp_path, BOMB)
    started = time.monotonic()
    assert main(["-c", str(cfg), "validate", "--static"]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "p.yaml:" in err and "anchors and aliases" in err and "Traceback" not in err
    assert elapsed < 1.0, f"alias bomb took {elapsed:.2f}s"       # 6-18 s before the bound


def test_a_few_aliases_still_work(tmp_path):
    cfg = _setup(tmp_path, "name: p\nrepository: offsite\nsources:\n  - name: f\n    files: &f {paths: [/x]}\n"
                           "  - name: g\n    files: *f\n")
    assert load_settings(str(cfg)).policies["p"].sources[1].files.paths == ["/x"]


@pytest.mark.parametrize("value", ["24", "'24'", "0.5"])
def test_duration_without_unit_is_refused(tmp_path, value):
    cfg = _setup(tmp_path, f"name: p\nrepository: offsite\ntargets: {{rpo: {value}}}\nsources:\n"
                           "  - name: f\n    files: {paths: [/x]}\n")
    with pytest.raises(ConfigError, match=r"p.yaml:3:\d+: at 'targets.rpo': .* has no unit; write it with a unit: "
                                          r"90s, 30m, 24h, 7d or 1h30m"):
        load_settings(str(cfg))


def test_python_callers_may_still_pass_seconds():
    from drtool.config.models import Retention, Targets
    assert Targets(rpo=3600).rpo == 3600 and Retention(within=60).within == 60


@pytest.mark.parametrize("inline", ["hunter2", "'hunter2'", "[hunter2]", "{value: hunter2}", "{env: [hunter2]}",
                                    "{command: hunter2}", "!!binary aHVudGVyMg=="])
def test_inline_password_is_never_echoed(tmp_path, capsys, inline):
    cfg = _setup(tmp_path, "name: p\nrepository: offsite\nsources:\n  - name: db\n"
                           f"    postgres: {{database: x, password: {inline}}}\n")
    assert main(["-c", str(cfg), "validate", "--static"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "aHVudGVyMg" not in err
    assert "p.yaml:5:" in err and "sources[0].postgres.password" in err


def test_plain_string_secret_names_the_reference_kinds(tmp_path):
    cfg = _setup(tmp_path, "name: p\nrepository: offsite\nsources:\n  - name: db\n"
                           "    postgres: {database: x, password: hunter2}\n")
    with pytest.raises(ConfigError, match=r"a secret reference \{env: NAME\}, \{file: PATH\} or \{command: "
                                          r"\[argv\.\.\.\]\} was expected; the value is not shown"):
        load_settings(str(cfg))


def test_name_rule_is_said_in_words(tmp_path):
    cfg = _setup(tmp_path, "name: 'p q!'\nrepository: offsite\nsources:\n  - name: f\n    files: {paths: [/x]}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg))
    text = str(info.value)
    assert "a name is ASCII letters, digits, `_ . -`, up to 64 characters" in text and "[A-Za-z" not in text


def test_playbook_of_an_invalid_policy_says_see_above(tmp_path):
    cfg = _setup(tmp_path, "name: siak\nrepository: offsite\ntargets: {rpo: 24}\nsources:\n"
                           "  - name: f\n    files: {paths: [/x]}\n")
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "d.yaml").write_text("name: d\npolicy: siak\nsteps:\n  - name: r\n    restore: {source: f}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg))
    problems = info.value.problems
    assert len(problems) == 2 and "targets.rpo" in problems[0]
    assert problems[1].endswith("d.yaml:2:1: at 'policy': policy 'siak' is invalid (see above)")


def test_invalid_drtool_yaml_does_not_hide_policy_problems(tmp_path):
    cfg = _setup(tmp_path, "name: p\nrepository: offsite\nsources:\n  - name: f\n    files: {paths: [relative]}\n")
    cfg.write_text(CONFIG + "colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg))
    text = str(info.value)
    assert "drtool.yaml:6:1: at 'colour': unknown key" in text and "p.yaml:5:" in text and "must be absolute" in text


def test_from_nothing_playbook_takes_only_checks_and_one_key() -> None:
    from pydantic import ValidationError

    from drtool.config.models import Playbook

    ok = Playbook.model_validate({"name": "fire", "policy": "siak", "schedule": "0 3 1 * *",
                                  "from_nothing": {"kit": "siak.age", "passphrase": {"env": "KIT_PASS"}}})
    assert ok.steps == [] and ok.from_nothing.mode == "drtool"
    with pytest.raises(ValidationError, match="checks"):
        Playbook.model_validate({"name": "fire", "policy": "siak", "from_nothing": {"kit": "k", "identity": "id"},
                                 "steps": [{"name": "r", "restore": {"source": "db"}}]})
    with pytest.raises(ValidationError, match="exactly one of passphrase"):
        Playbook.model_validate({"name": "fire", "policy": "siak", "from_nothing": {"kit": "k"}})
    with pytest.raises(ValidationError, match="at least one step"):
        Playbook.model_validate({"name": "p", "policy": "siak", "steps": []})


def test_partial_restore_step_fits_its_source(tmp_path):
    """tables:/schemas: of a restore step are for database sources (schemas: PostgreSQL only), at
    their position; and they cannot be combined with at: (a point-in-time recovery is whole)."""
    cfg = _setup(tmp_path, "name: siak\nrepository: offsite\nsources:\n  - name: f\n    files: {paths: [/x]}\n"
                           "  - name: m\n    mariadb: {database: x}\n")
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "d.yaml").write_text(
        "name: d\npolicy: siak\nsteps:\n  - name: r\n    restore: {source: f, tables: [t]}\n"
        "  - name: s\n    restore:\n      source: m\n      schemas: [arsip]\n"
        "  - name: p\n    restore: {source: m, paths: [x]}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg))
    problems = info.value.problems
    assert any("d.yaml:5:" in p and "steps[0].restore.tables" in p and "a files source has no tables" in p
               for p in problems), problems
    assert any("d.yaml:9:" in p and "steps[1].restore.schemas" in p and "is for postgres sources" in p
               for p in problems), problems
    assert any("d.yaml:11:" in p and "a mariadb source has no paths" in p for p in problems), problems
    from pydantic import ValidationError

    from drtool.config.models import RestoreStep
    with pytest.raises(ValidationError, match="choose one"):
        RestoreStep.model_validate({"source": "db", "at": "latest", "tables": ["t"]})
    assert RestoreStep.model_validate({"source": "db", "tables": ["t"]}).tables == ["t"]
