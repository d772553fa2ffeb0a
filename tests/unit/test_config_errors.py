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
