"""YAML loading with positions: every problem is reported as file:line:col.

PyYAML's composer gives each node a start mark; we build plain Python data
and, beside it, a map from the key path (e.g. ('sources', 0, 'postgres',
'port')) to the node's position. Pydantic's error `loc` is then looked up in
that map, so the message points at the offending line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from drtool.config.models import Config, Playbook, Policy, beside
from drtool.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
Pos = tuple[int, int]
MAX_YAML_BYTES = 4 * 1024 * 1024


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps node positions and forbids duplicate keys."""


@dataclass
class Document:
    path: Path
    data: Any
    positions: dict[tuple, Pos] = field(default_factory=dict)

    def where(self, loc: tuple) -> str:
        # Walk up the path until a position is known (a missing key has none).
        for n in range(len(loc), -1, -1):
            pos = self.positions.get(tuple(loc[:n]))
            if pos:
                return f"{self.path}:{pos[0]}:{pos[1]}"
        return f"{self.path}:1:1"


def read_document(path: Path) -> Document:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: file is larger than {MAX_YAML_BYTES} bytes; is it really a drtool YAML file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}:1:1: not UTF-8 text (byte {exc.start})") from None
    return parse_document(text, path)


def parse_document(text: str, path: Path) -> Document:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{path}:{line}:{col}: YAML syntax error: {problem}",
                          hint="check indentation, colons and quotes around this spot") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ConfigError(f"{path}:1:1: YAML syntax error: {type(exc).__name__}") from None
    doc = Document(path, None)
    if node is None:
        return doc
    try:
        doc.data = _build(node, (), doc.positions, path, depth=0)
    except RecursionError:
        raise ConfigError(f"{path}:1:1: YAML nesting is too deep") from None
    return doc


def _build(node: yaml.Node, loc: tuple, positions: dict[tuple, Pos], path: Path, depth: int) -> Any:
    if depth > 64:
        raise ConfigError(f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: YAML nesting is too deep")
    positions.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
            if key is None or isinstance(key, (list, dict)):
                raise ConfigError(f"{where}: mapping keys must be plain names")
            if key == "<<":
                raise ConfigError(f"{where}: YAML merge keys (<<) are not supported; write the keys out")
            if key in out:
                raise ConfigError(f"{where}: duplicate key {key!r}", hint="remove one of the two")
            positions[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, (*loc, key), positions, path, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), positions, path, depth + 1) for i, item in enumerate(node.value)]
    return _scalar(node, path)


def _scalar(node: yaml.Node, path: Path) -> Any:
    try:
        return _Loader.construct_object(_Loader(""), node)  # type: ignore[arg-type]
    except (yaml.YAMLError, ValueError, OverflowError):
        mark = node.start_mark
        raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: cannot read value {node.value!r}") from None


def _loc_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _clean_loc(loc: tuple) -> tuple:
    # Pydantic inserts union member names ("SnapshotBefore", "literal['latest']",
    # "function-before[...]") into loc; they are not keys in the file.
    return tuple(p for p in loc if isinstance(p, int) or not (
        p[:1].isupper() or "[" in p or p.startswith(("function-", "literal", "str", "list"))))


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(model: type[M], doc: Document, *, what: str) -> M:
    if not isinstance(doc.data, dict):
        found = "an empty file" if doc.data is None else type(doc.data).__name__
        raise ConfigError(f"{doc.path}:1:1: expected a mapping of {what} settings, found {found}")
    data = {**doc.data, "path": str(doc.path)} if "path" in model.model_fields else doc.data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, doc)) from None


def format_validation_error(exc: ValidationError, doc: Document) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?); allowed keys are listed in the configuration reference"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}; found {_found(err['input'])}"
        line = f"{doc.where(loc)}: at '{_loc_text(loc)}': {msg}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


# ---------------------------------------------------------------- the whole setup

@dataclass
class Settings:
    """drtool.yaml plus every policy and playbook, cross-checked."""

    path: Path
    config: Config
    policies: dict[str, Policy]
    playbooks: dict[str, Playbook]

    @property
    def state_dir(self) -> Path:
        p = Path(self.config.state_dir)
        return p if p.is_absolute() else self.path.parent / p

    @property
    def policies_dir(self) -> Path:
        return beside(self.path, self.config.policies_dir, "policies")

    @property
    def playbooks_dir(self) -> Path:
        return beside(self.path, self.config.playbooks_dir, "playbooks")

    def policy(self, name: str) -> Policy:
        try:
            return self.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.policies)) or "none"
            raise ConfigError(f"no policy named {name!r} (known: {known})",
                              hint=f"policies are read from {self.policies_dir}") from None

    def playbook(self, name_or_file: str) -> Playbook:
        if name_or_file in self.playbooks:
            return self.playbooks[name_or_file]
        path = Path(name_or_file)
        if path.suffix in (".yaml", ".yml") or path.exists():
            for pb in self.playbooks.values():
                if pb.path and Path(pb.path).resolve() == path.resolve():
                    return pb
            pb = validate(Playbook, read_document(path), what="playbook")
            problems = check_playbook(pb, self.policies)
            if problems:
                raise ConfigError(problems)
            return pb
        known = ", ".join(sorted(self.playbooks)) or "none"
        raise ConfigError(f"no playbook named {name_or_file!r} (known: {known})")


def find_config(option: str | None) -> Path:
    """--config, then $DRTOOL_CONFIG, then ./drtool.yaml, then /etc/drtool/drtool.yaml."""
    for candidate in (option, os.environ.get("DRTOOL_CONFIG")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"configuration file {path} does not exist",
                                  hint="create one with `drtool init DIR`")
            return path
    for path in (Path("drtool.yaml"), Path("/etc/drtool/drtool.yaml")):
        if path.is_file():
            return path
    raise ConfigError("no drtool.yaml found (looked at --config, $DRTOOL_CONFIG, ./drtool.yaml, /etc/drtool/drtool.yaml)",
                      hint="create one with `drtool init DIR` or pass --config FILE")


def _yaml_files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_settings(option: str | None = None) -> Settings:
    """Load everything and report every problem at once (as one ConfigError)."""
    path = find_config(option)
    config = validate(Config, read_document(path), what="drtool.yaml")
    problems: list[str] = []
    policies: dict[str, Policy] = {}
    playbooks: dict[str, Playbook] = {}
    settings = Settings(path, config, policies, playbooks)
    for file in _yaml_files(settings.policies_dir):
        _collect(file, Policy, "policy", policies, problems)
    for file in _yaml_files(settings.playbooks_dir):
        _collect(file, Playbook, "playbook", playbooks, problems)
    for policy in policies.values():
        problems += check_policy(policy, config)
    for playbook in playbooks.values():
        problems += check_playbook(playbook, policies)
    if problems:
        raise ConfigError(problems)
    return settings


def _collect(file: Path, model: type[M], what: str, into: dict[str, Any], problems: list[str]) -> None:
    try:
        item = validate(model, read_document(file), what=what)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return
    name = item.name  # type: ignore[attr-defined]
    if name in into:
        problems.append(f"{file}:1:1: {what} name {name!r} is also used by {into[name].path}")
    else:
        into[name] = item


def _field_pos(path: str | None, loc: tuple) -> str:
    if not path:
        return "?"
    try:
        return read_document(Path(path)).where(loc)
    except ConfigError:
        return f"{path}:1:1"


def check_policy(policy: Policy, config: Config) -> list[str]:
    problems = []
    if policy.repository not in config.repositories:
        known = ", ".join(sorted(config.repositories)) or "none"
        problems.append(f"{_field_pos(policy.path, ('repository',))}: at 'repository': "
                        f"no repository named {policy.repository!r} in drtool.yaml (known: {known})")
    if policy.host and policy.host not in config.hosts:
        problems.append(f"{_field_pos(policy.path, ('host',))}: at 'host': no host named {policy.host!r} in drtool.yaml")
    for loc, expr in ((("schedule",), policy.schedule), (("forget_schedule",), policy.forget_schedule),
                      (("check", "schedule"), policy.check.schedule)):
        problem = _schedule_problem(expr)
        if problem:
            problems.append(f"{_field_pos(policy.path, loc)}: at '{'.'.join(loc)}': {problem}")
    return problems


def check_playbook(playbook: Playbook, policies: dict[str, Policy]) -> list[str]:
    policy = policies.get(playbook.policy)
    if policy is None:
        known = ", ".join(sorted(policies)) or "none"
        return [f"{_field_pos(playbook.path, ('policy',))}: at 'policy': no policy named {playbook.policy!r} (known: {known})"]
    problems = []
    names = {s.name for s in policy.sources}
    for i, step in enumerate(playbook.steps):
        source = getattr(step.spec, "source", None)
        if source is not None and source not in names:
            problems.append(f"{_field_pos(playbook.path, ('steps', i, step.kind, 'source'))}: at 'steps[{i}].{step.kind}.source': "
                            f"policy {policy.name!r} has no source {source!r} (it has: {', '.join(sorted(names))})")
    problem = _schedule_problem(playbook.schedule)
    if problem:
        problems.append(f"{_field_pos(playbook.path, ('schedule',))}: at 'schedule': {problem}")
    return problems


def _schedule_problem(expr: str | None) -> str | None:
    if not expr:
        return None
    try:
        from drtool.schedule_math import parse_schedule
    except ImportError:  # scheduler not built yet: nothing to check against
        return None
    try:
        parse_schedule(expr)
    except ValueError as exc:
        return str(exc)
    return None
