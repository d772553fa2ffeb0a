"""Every module of drtool imports on its own in a fresh interpreter (as pip-tools does for its
own): an import cycle, or a module that only works when another was imported first, fails here.
Also: adapters never import actions or the CLI (the one-way flow in the README)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import drtool

ROOT = Path(drtool.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="drtool.")
                 if not m.name.endswith("__main__"))
ADAPTERS = ("drtool.engine", "drtool.sources", "drtool.storage", "drtool.remote", "drtool.scratch",
            "drtool.crypto", "drtool.execute", "drtool.report")
UPPER = ("drtool.actions", "drtool.cli")


def test_every_module_is_found() -> None:
    assert len(MODULES) > 100 and "drtool.actions.lifecycle" in MODULES and "drtool.remote.ssh" in MODULES


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    # One interpreter per module would take a minute; one per module *in a loop inside one child*
    # would hide order effects. So: one child per module, run in parallel batches.
    procs = [(name, subprocess.Popen([sys.executable, "-c", f"import {name}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)) for name in MODULES]
    failures = {}
    for name, proc in procs:
        _out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures[name] = err.decode("utf-8", "replace").strip().splitlines()[-1:]
    assert not failures, failures


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_never_import_actions_or_the_cli(adapter: str) -> None:
    base = ROOT.joinpath(*adapter.split(".")[1:])
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    offenders = {str(f.relative_to(ROOT)): sorted(n for n in _imports(f) if n.startswith(UPPER))
                 for f in files}
    assert not {f: n for f, n in offenders.items() if n}
