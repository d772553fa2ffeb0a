"""`drtool schema`: the JSON Schema accepts every shipped example and rejects broken files; the copy is current."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from drtool.cli import main
from drtool.config.schema import KINDS, json_schema, schema_text, shipped_path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "drtool" / "templates"


def load(path: Path) -> object:
    return json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))   # dates as YAML text


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


EXAMPLES = [("config", ROOT / "drtool.yaml"), ("config", TEMPLATES / "drtool.yaml"),
            ("policy", TEMPLATES / "policy.yaml"), ("playbook", TEMPLATES / "playbook.yaml"),
            *[("policy", p) for p in sorted((ROOT / "policies").glob("*.yaml"))],
            *[("playbook", p) for p in sorted((ROOT / "playbooks").glob("*.yaml"))]]


@pytest.mark.parametrize("kind, path", EXAMPLES, ids=[f"{k}:{p.relative_to(ROOT)}" for k, p in EXAMPLES])
def test_shipped_examples_are_valid(kind: str, path: Path) -> None:
    errors = [e.message for e in validator(kind).iter_errors(load(path))]
    assert errors == []


BROKEN = {
    "policy": [
        ("colour: red", "Additional properties"),                                   # unknown key
        ("targets: {rpo: 24}", "is not of type 'string'"),                          # a duration needs a unit
        ("targets: {rpo: 24x}", "does not match"),
        ("name: 'p q!'", "does not match"),
        ("sources: []", "should be non-empty"),
        ("sources: [{name: db, postgres: {database: x, password: hunter2}}]", "is not of type 'object'"),
        ("sources: [{name: db, postgres: {database: x, password: {env: A, file: /b}}}]", "has too many properties"),
    ],
    "playbook": [("steps: [{name: s, sql: {source: db}}]", "'query' is a required property")],
    "config": [("repositories: {offsite: {url: /r}}", "'password' is a required property")],
}


@pytest.mark.parametrize("kind, line, expected", [(k, line, e) for k, cases in BROKEN.items() for line, e in cases])
def test_broken_files_are_rejected(kind: str, line: str, expected: str) -> None:
    base = load({"config": ROOT / "drtool.yaml", "policy": ROOT / "policies" / "siak.yaml",
                 "playbook": ROOT / "playbooks" / "siak-drill.yaml"}[kind])
    base.update(yaml.safe_load(line))
    errors = _messages(validator(kind).iter_errors(base))
    assert any(expected in e for e in errors), errors


def _messages(errors) -> list[str]:  # noqa: ANN001 - anyOf failures nest their reasons in .context
    out = []
    for error in errors:
        out.append(error.message)
        out += _messages(error.context or [])
    return out


def test_shorthands_the_models_accept_are_in_the_schema() -> None:
    steps = [{"name": "c", "command": ["/bin/true"]}, {"name": "k", "kit": True}, {"name": "k2", "kit": None}]
    assert not list(validator("playbook").iter_errors({"name": "p", "policy": "siak", "steps": steps}))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_shipped_copy_is_current(kind: str) -> None:
    assert shipped_path(kind).read_text() == schema_text(kind), "run `python -m drtool.config.schema`"


def test_cli_prints_schema_and_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "policy"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "drtool: a policy (policies/NAME.yaml)"
    assert main(["schema", "playbook", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(shipped_path("playbook"))
    assert main(["schema", "nope"]) == 2
