"""JSON Schema of drtool.yaml, a policy and a playbook, generated from the pydantic models.

Editors validate and complete the files with it (yaml-language-server reads a
`# yaml-language-server: $schema=...` comment). The models stay the one source of
truth; this module only adjusts what pydantic cannot know:
- shorthands the models accept before validation (`command: [argv...]`, `kit: true`);
- a secret reference is exactly one of env/file/command;
- defaults that would mislead an editor (durations are shown with a unit, null and
  empty defaults are left out); `path` (where a file was read from) is internal.

A copy of each schema ships in the package (drtool/schemas/); regenerate them with
`python -m drtool.config.schema` (tests/unit/test_schema.py fails when they are stale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from drtool.config.fleet import Fleet
from drtool.config.models import DURATION_PATTERN, Config, Playbook, Policy

KINDS = {"config": (Config, "drtool.yaml"), "policy": (Policy, "a policy (policies/NAME.yaml)"),
         "playbook": (Playbook, "a playbook (playbooks/NAME.yaml)"),
         "fleet": (Fleet, "a fleet file (fleet.yaml: the sites a central office watches, its drill pool)")}
SHIPPED = Path(__file__).resolve().parent.parent / "schemas"


class _Generator(GenerateJsonSchema):
    def encode_default(self, dft: Any) -> Any:
        # A model instance as a default (config.base.defaults) may be of a class not built yet
        # (defer_build), which pydantic_core cannot encode; its own model_dump builds it first.
        if isinstance(dft, BaseModel):
            dft = dft.model_dump(mode="json", by_alias=self.by_alias)
        return super().encode_default(dft)


def json_schema(kind: str) -> dict[str, Any]:
    model, what = KINDS[kind]
    schema = model.model_json_schema(by_alias=True, schema_generator=_Generator)
    schema.get("properties", {}).pop("path", None)
    _tidy(schema)
    defs = schema.get("$defs", {})
    if "SecretRef" in defs:
        defs["SecretRef"].update(minProperties=1, maxProperties=1,
                                 description="a secret reference: exactly one of {env: NAME}, {file: PATH} "
                                             "(mode 0600) or {command: [argv...]}")
    if "Step" in defs:
        props = defs["Step"]["properties"]
        props["command"]["anyOf"].insert(1, {"type": "array", "items": {"type": "string"}, "minItems": 1})
        props["kit"]["anyOf"].insert(1, {"const": True})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"drtool-{kind}.schema.json",
            "title": f"drtool: {what}", **{k: v for k, v in schema.items() if k != "title"}}


def _tidy(node: Any) -> None:
    if isinstance(node, dict):
        if "default" in node:
            default = node["default"]
            if default is None or default == [] or default == {} or isinstance(default, dict):
                del node["default"]
            elif node.get("pattern") == DURATION_PATTERN and isinstance(default, (int, float)):
                node["default"] = f"{default:g}s"
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for value in node:
            _tidy(value)


def schema_text(kind: str) -> str:
    return json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"


def shipped_path(kind: str) -> Path:
    return SHIPPED / f"{kind}.schema.json"


def write_shipped() -> list[Path]:
    SHIPPED.mkdir(exist_ok=True)
    written = []
    for kind in KINDS:
        shipped_path(kind).write_text(schema_text(kind))
        written.append(shipped_path(kind))
    return written


if __name__ == "__main__":
    for path in write_shipped():
        print(path)
