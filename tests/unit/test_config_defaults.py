"""The config models are built lazily (defer_build) and their model defaults made by
`base.defaults` (model_construct): each such default is the value `Model()` would give."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel

from drtool.config import fleet, models, secrets

MODELS = sorted({obj for module in (models, fleet, secrets) for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel},
                key=lambda m: m.__name__)
MODEL_DEFAULTS = [(m, name, f.default) for m in MODELS for name, f in m.model_fields.items()
                  if isinstance(f.default, BaseModel)]


def test_model_defaults_are_found() -> None:
    assert {(m.__name__, name) for m, name, _ in MODEL_DEFAULTS} >= {("Config", "notifications"),
                                                                    ("Policy", "retention"),
                                                                    ("Fleet", "records")}


@pytest.mark.parametrize("model, name, default", MODEL_DEFAULTS,
                         ids=[f"{m.__name__}.{name}" for m, name, _ in MODEL_DEFAULTS])
def test_model_default_equals_a_validated_instance(model: type[BaseModel], name: str, default: BaseModel) -> None:
    validated = type(default)()
    assert default == validated
    assert default.model_fields_set == validated.model_fields_set == set()
    assert default.model_dump() == validated.model_dump()


def test_importing_the_loader_builds_no_validator() -> None:
    code = ("import sys, pydantic, drtool.config.loader, drtool.config.fleet\n"
            "def walk(c): return [c, *(d for s in c.__subclasses__() for d in walk(s))]\n"
            "built = sorted(c.__name__ for c in walk(pydantic.BaseModel) if c.__module__.startswith('drtool')"
            " and c.__pydantic_complete__)\n"
            "print(built, 'pydantic.plugin._loader' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"
