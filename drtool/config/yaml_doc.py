"""YAML documents with positions: every value keeps the file:line:col it came from.

PyYAML's composer gives each node a start mark; we build plain Python data
and, beside it, a map from the key path (e.g. ('sources', 0, 'postgres',
'port')) to the node's position. Pydantic's error `loc` is then looked up in
that map, so the message points at the offending line.

Anchors and aliases (`&a` / `*a`) are expanded here, within bounds: an alias
bomb (nine aliases of nine aliases of ...) composes into a tiny node graph but
expands into billions of values, so both the number of alias uses and the
number of values built are capped and the file is refused with its position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drtool.errors import ConfigError

Pos = tuple[int, int]
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
# A real drtool file has hundreds of values and a handful of aliases; these bounds are
# far above that and far below what takes a noticeable time to build (~0.1 s).
MAX_NODES = 50_000
MAX_ALIASES = 1_000


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
        doc.data = _Builder(path, doc.positions).build(node, (), 0)
    except RecursionError:
        raise ConfigError(f"{path}:1:1: YAML nesting is too deep") from None
    return doc


class _Builder:
    """Turns a composed node graph into plain data, counting what aliases expand to."""

    def __init__(self, path: Path, positions: dict[tuple, Pos]) -> None:
        self.path = path
        self.positions = positions
        self.seen: set[int] = set()          # node ids already built once: a second visit is an alias
        self.nodes = 0
        self.aliases = 0
        self.constructor = _Loader("")

    def where(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"

    def build(self, node: yaml.Node, loc: tuple, depth: int) -> Any:
        self._count(node, depth)
        self.positions.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def _count(self, node: yaml.Node, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ConfigError(f"{self.where(node)}: YAML nesting is too deep")
        self.nodes += 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if id(node) in self.seen:
                self.aliases += 1
            self.seen.add(id(node))
        if self.aliases > MAX_ALIASES or self.nodes > MAX_NODES:
            raise ConfigError(f"{self.where(node)}: anchors and aliases (&name / *name) expand to more than "
                              f"{MAX_ALIASES if self.aliases > MAX_ALIASES else MAX_NODES} "
                              f"{'alias uses' if self.aliases > MAX_ALIASES else 'values'}; refusing the file",
                              hint="write the values out, or use fewer nested aliases")

    def _mapping(self, node: yaml.MappingNode, loc: tuple, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            where = self.where(key_node)
            if key is None or isinstance(key, (list, dict)):
                raise ConfigError(f"{where}: mapping keys must be plain names")
            if key == "<<":
                raise ConfigError(f"{where}: YAML merge keys (<<) are not supported; write the keys out")
            if key in out:
                raise ConfigError(f"{where}: duplicate key {key!r}", hint="remove one of the two")
            self.positions[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, (*loc, key), depth + 1)
        return out

    def scalar(self, node: yaml.Node) -> Any:
        try:
            return self.constructor.construct_object(node)  # type: ignore[arg-type]
        except (yaml.YAMLError, ValueError, OverflowError, TypeError):
            # The value is not quoted: it may be a password typed where a reference belongs.
            raise ConfigError(f"{self.where(node)}: cannot read this value as {node.tag}",
                              hint="remove the !!tag or quote the value") from None
