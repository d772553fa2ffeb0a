"""Loading the whole setup: every problem is reported as file:line:col, all at once.

YAML documents with positions come from `yaml_doc`; pydantic validates them
(with context {"file": True}, see models.Duration) and its error `loc` is looked
up in the document's position map. Cross-file rules (a policy's repository, a
playbook's policy and sources) are checked here, after every file was read, so
one run of `validate` lists every problem.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from drtool.config.models import NAME_PATTERN, NAME_RULE, PART_SOURCE_KINDS, Config, Playbook, Policy, beside
from drtool.config.yaml_doc import Document, parse_document, read_document
from drtool.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

__all__ = ["Document", "Settings", "find_config", "load_settings", "parse_document", "read_document", "validate"]


def loc_text(loc: tuple) -> str:
    """('sources', 0, 'files') -> 'sources[0].files'."""
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
        return model.model_validate(data, context={"file": True})
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
        elif err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
            msg = f"a name is {NAME_RULE}; found {_found(err['input'])}"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}; found {_found(err['input'])}"
        line = f"{doc.where(loc)}: at '{loc_text(loc)}': {msg}"
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

    def with_state_dir(self, state_dir: Path) -> "Settings":
        """The same settings keeping their state elsewhere (a sandbox, a recovery on a new machine)."""
        config = self.config.model_copy(update={"state_dir": str(Path(state_dir).resolve())})
        return dataclasses.replace(self, config=config)

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


@dataclass
class Loaded:
    """Everything that could be read, and every problem found: what `validate` reports from."""

    path: Path
    config: Config | None                   # None: drtool.yaml itself is invalid
    policies: dict[str, Policy]
    playbooks: dict[str, Playbook]
    problems: list[str]
    invalid: dict[str, set[str]]            # names of policies/playbooks whose files are invalid


def load_settings(option: str | None = None) -> Settings:
    """Load everything and report every problem at once (as one ConfigError)."""
    loaded = load_all(option)
    if loaded.problems or loaded.config is None:
        raise ConfigError(loaded.problems)
    # The variables secrets are read from ({env: NAME}) reach no child process: one that needs
    # a secret gets it passed explicitly (restic its AWS_* keys, pg_dump its PGPASSWORD).
    from drtool.config.secrets import referenced_env_names
    from drtool.execute import hide_from_children

    hide_from_children(referenced_env_names(loaded.config, *loaded.policies.values(), *loaded.playbooks.values()))
    return Settings(loaded.path, loaded.config, loaded.policies, loaded.playbooks)


def load_all(option: str | None = None) -> Loaded:
    """Read drtool.yaml, every policy and every playbook; keep going past each problem."""
    path = find_config(option)
    problems: list[str] = []
    config, raw = None, {}
    try:
        doc = read_document(path)
        raw = doc.data if isinstance(doc.data, dict) else {}
        config = validate(Config, doc, what="drtool.yaml")
    except ConfigError as exc:
        problems.extend(exc.problems)
    loaded = Loaded(path, config, {}, {}, problems, {"policy": set(), "playbook": set()})
    for key, model, what, into in (("policies_dir", Policy, "policy", loaded.policies),
                                   ("playbooks_dir", Playbook, "playbook", loaded.playbooks)):
        configured = getattr(config, key) if config else raw.get(key)   # even an invalid drtool.yaml says where
        folder = beside(path, configured if isinstance(configured, str) else None, key.removesuffix("_dir"))
        for file in _yaml_files(folder):
            _collect(file, model, what, into, loaded)
    for policy in loaded.policies.values():
        problems += check_policy(policy, config)
    for playbook in loaded.playbooks.values():
        problems += check_playbook(playbook, loaded.policies, loaded.invalid["policy"])
    return loaded


def _collect(file: Path, model: type[M], what: str, into: dict[str, Any], loaded: Loaded) -> None:
    try:
        doc = read_document(file)
        item = validate(model, doc, what=what)
    except ConfigError as exc:
        loaded.problems.extend(exc.problems)
        name = _raw_name(file)
        if name:
            loaded.invalid[what].add(name)
        return
    name = item.name  # type: ignore[attr-defined]
    if name in into:
        loaded.problems.append(f"{file}:1:1: {what} name {name!r} is also used by {into[name].path}")
    else:
        into[name] = item


def _raw_name(file: Path) -> str | None:
    """The name an invalid file meant to define (its `name:` if readable, else the file's stem)."""
    try:
        data = read_document(file).data
    except ConfigError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        return data["name"]
    return file.stem


def _field_pos(path: str | None, loc: tuple) -> str:
    if not path:
        return "?"
    try:
        return read_document(Path(path)).where(loc)
    except ConfigError:
        return f"{path}:1:1"


def check_policy(policy: Policy, config: Config | None) -> list[str]:
    """Cross-file rules of one policy; with an invalid drtool.yaml (None) only its own rules."""
    problems = []
    if config is not None and policy.repository not in config.repositories:
        known = ", ".join(sorted(config.repositories)) or "none"
        problems.append(f"{_field_pos(policy.path, ('repository',))}: at 'repository': "
                        f"no repository named {policy.repository!r} in drtool.yaml (known: {known})")
    for i, name in enumerate(policy.copies):
        if config is not None and name not in config.repositories:
            known = ", ".join(sorted(config.repositories)) or "none"
            problems.append(f"{_field_pos(policy.path, ('copies', i))}: at 'copies[{i}]': "
                            f"no repository named {name!r} in drtool.yaml (known: {known})")
        elif name == policy.repository:
            problems.append(f"{_field_pos(policy.path, ('copies', i))}: at 'copies[{i}]': {name!r} is the policy's "
                            "own repository; a copy must go to another one")
    if config is not None and policy.host and policy.host not in config.hosts:
        problems.append(f"{_field_pos(policy.path, ('host',))}: at 'host': no host named {policy.host!r} in drtool.yaml")
    for loc, expr in ((("schedule",), policy.schedule), (("forget_schedule",), policy.forget_schedule),
                      (("check", "schedule"), policy.check.schedule)):
        problem = _schedule_problem(expr)
        if problem:
            problems.append(f"{_field_pos(policy.path, loc)}: at '{'.'.join(loc)}': {problem}")
    return problems


def check_playbook(playbook: Playbook, policies: dict[str, Policy], invalid: set[str] = frozenset()) -> list[str]:
    policy = policies.get(playbook.policy)
    if policy is None and playbook.policy in invalid:
        return [f"{_field_pos(playbook.path, ('policy',))}: at 'policy': "
                f"policy {playbook.policy!r} is invalid (see above)"]
    if policy is None:
        known = ", ".join(sorted(policies)) or "none"
        return [f"{_field_pos(playbook.path, ('policy',))}: at 'policy': no policy named {playbook.policy!r} (known: {known})"]
    problems = []
    names = {s.name for s in policy.sources}
    repos = policy.repositories
    if playbook.from_ is not None and playbook.from_ not in repos:
        problems.append(f"{_field_pos(playbook.path, ('from',))}: at 'from': {playbook.from_!r} is not a repository "
                        f"of policy {policy.name!r} (it has: {', '.join(repos)})")
    for i, step in enumerate(playbook.steps):
        attacked = getattr(step.spec, "repository", None) if step.kind == "immutability" else None
        if attacked is not None and attacked not in repos:
            problems.append(f"{_field_pos(playbook.path, ('steps', i, 'immutability', 'repository'))}: at "
                            f"'steps[{i}].immutability.repository': {attacked!r} is not a repository of policy "
                            f"{policy.name!r} (it has: {', '.join(repos)})")
        source = getattr(step.spec, "source", None)
        if source is not None and source not in names:
            problems.append(f"{_field_pos(playbook.path, ('steps', i, step.kind, 'source'))}: at 'steps[{i}].{step.kind}.source': "
                            f"policy {policy.name!r} has no source {source!r} (it has: {', '.join(sorted(names))})")
        elif step.kind == "restore" and source is not None:
            problems += _part_problems(playbook, i, step.spec, policy.source(source).kind)
    problem = _schedule_problem(playbook.schedule)
    if problem:
        problems.append(f"{_field_pos(playbook.path, ('schedule',))}: at 'schedule': {problem}")
    return problems


def _part_problems(playbook: Playbook, i: int, spec: Any, kind: str) -> list[str]:
    """A restore step's paths:/tables:/schemas: against the kind of its source (as `restore --path`)."""
    wrong = [(key, allowed) for key, allowed in PART_SOURCE_KINDS.items() if getattr(spec, key) and kind not in allowed]
    return [f"{_field_pos(playbook.path, ('steps', i, 'restore', key))}: at 'steps[{i}].restore.{key}': "
            f"a {kind} source has no {key} ({key}: is for {' and '.join(allowed)} sources)" for key, allowed in wrong]


def _schedule_problem(expr: str | None) -> str | None:
    if not expr:
        return None
    from drtool.schedule_math import parse_schedule

    try:
        parse_schedule(expr)
    except ValueError as exc:
        return str(exc)
    return None
