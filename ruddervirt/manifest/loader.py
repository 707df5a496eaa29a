"""YAML text -> plain data plus a position index, with limits against hostile input.

Keeps `yaml.safe_load` semantics (YAML 1.1 scalars, merge keys) but refuses what would make
later stages slow, ambiguous or wrong: oversized documents, alias bombs and alias cycles,
deep nesting, duplicate keys, non-string keys and a root that is not a mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ruddervirt.manifest import paths
from ruddervirt.manifest.problems import Problem

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 50
MAX_NODES = 100_000

Position = tuple[int, int]
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


class LoadError(Exception):
    """The document cannot be turned into data; `problems` says why (at least one)."""

    def __init__(self, message: str, position: Position | None = None, path: str = "") -> None:
        super().__init__(message)
        line, column = position if position is not None else (None, None)
        self.problems = [Problem(path, line, column, message)]

    @classmethod
    def of(cls, errors: list[LoadError]) -> LoadError:
        combined = errors[0]
        combined.problems = [p for e in errors for p in e.problems]
        return combined


@dataclass
class PositionIndex:
    """Where each path of the document is: its key (for mapping entries) and its value."""

    keys: dict[str, Position] = field(default_factory=dict)
    values: dict[str, Position] = field(default_factory=dict)
    collections: set[str] = field(default_factory=set)

    def key(self, path: str) -> Position | None:
        """The position of the key naming `path`, else of its value, else of the nearest
        enclosing value that exists."""
        return self.keys.get(path) or self.locate(path)

    def locate(self, path: str | None) -> Position | None:
        """Best place to point at for `path`: a scalar's own value, a mapping entry's key for
        a list or mapping (more readable than its first child), else the nearest ancestor."""
        while path is not None:
            if path in self.values and path not in self.collections:
                return self.values[path]
            if path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            path = paths.parent(path)
        return None


@dataclass(frozen=True)
class Loaded:
    data: dict[str, object]
    index: PositionIndex


def _pos(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nodes and bounds nesting while composing, so that
    hostile input is refused before it costs much (this parser is pure Python: ~20 us/node)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._refuse(
                    f"too many YAML aliases (more than {MAX_ALIASES}); "
                    "write the values out instead of repeating *references"
                )
        else:
            self._nodes += 1
            if self._nodes > MAX_NODES:
                self._refuse(f"the document has more than {MAX_NODES} values")
        if self._depth >= MAX_DEPTH:
            self._refuse(f"the document is nested more than {MAX_DEPTH} levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, message: str) -> NoReturn:
        mark = self.peek_event().start_mark
        raise LoadError(message, (mark.line + 1, mark.column + 1))


def load(text: str | bytes) -> Loaded:
    """Parse `text`; raises LoadError (with position when there is one) on any failure."""
    _check_size(text)
    text = _decode(text)
    try:
        loader = _Loader(text)  # checks every character up front
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text) from None
    try:
        root = _compose(loader)
        _check_graph(root)
        _check_keys(root)
        data = _construct(loader, root)
    finally:
        loader.dispose()
    index = PositionIndex()
    _index(root, "", index)
    return Loaded(data, index)


def _check_size(text: str | bytes) -> None:
    # A character is at least one byte: a long str is too large without encoding it.
    if isinstance(text, bytes) or len(text) > MAX_BYTES:
        size = len(text)
    else:
        size = len(text.removeprefix("\ufeff").encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise LoadError(f"the manifest is too large: the limit is {MAX_BYTES} bytes (1 MiB)")


def _decode(text: str | bytes) -> str:
    if isinstance(text, str):
        return text.removeprefix("\ufeff")
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text.count(b"\n", 0, exc.start) + 1
        column = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LoadError(
            f"the manifest is not UTF-8 text (byte 0x{text[exc.start]:02x} cannot be decoded)",
            (line, column),
        ) from None


def _reader_error(exc: yaml.reader.ReaderError, text: str) -> LoadError:
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    return LoadError(f"YAML: {exc.reason} (character {exc.character!r})", (line, column))


def _compose(loader: _Loader) -> MappingNode:
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _marked(exc) from None
    except yaml.YAMLError as exc:
        raise LoadError(f"YAML: {exc}") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        raise LoadError("the manifest is empty; expected a mapping with at least `vms`", (1, 1))
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise LoadError(
            f"the manifest must be a mapping (`key: value` lines) with at least `vms`, got {kind}",
            _pos(root),
        )
    return root


def _marked(exc: yaml.MarkedYAMLError) -> LoadError:
    mark = exc.problem_mark or exc.context_mark
    position = (mark.line + 1, mark.column + 1) if mark is not None else None
    problem = exc.problem or "syntax error"
    if exc.context:
        problem = f"{problem} ({exc.context}"
        if exc.context_mark is not None and exc.context_mark is not mark:
            problem += f" on line {exc.context_mark.line + 1}"
        problem += ")"
    if problem.startswith("but found another document"):
        problem = "expected a single YAML document, found a second one (remove the `---`)"
    return LoadError(f"YAML syntax error: {problem}", position)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: Node) -> None:
    """Reject alias cycles, and alias bombs by the size and depth of the expanded tree.

    Iterative post-order walk with memoised (size, depth) per node object, so shared
    (aliased) nodes are measured once however often they are referenced.
    """
    measured: dict[int, tuple[int, int]] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in measured:
            continue
        if children_done:
            in_progress.discard(id(node))
            kids = [measured[id(k)] for k in _children(node)]
            size = 1 + sum(s for s, _ in kids)
            depth = 1 + max((d for _, d in kids), default=0)
            if size > MAX_NODES or depth > MAX_DEPTH:
                limit = (
                    f"more than {MAX_NODES} values"
                    if size > MAX_NODES
                    else f"a nesting deeper than {MAX_DEPTH} levels"
                )
                raise LoadError(f"the document expands (through aliases) to {limit}", _pos(node))
            measured[id(node)] = (size, depth)
            continue
        if id(node) in in_progress:
            raise LoadError("a YAML alias refers to a value that contains it", _pos(node))
        in_progress.add(id(node))
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in measured)


def _check_keys(root: Node) -> None:
    """Keys must be strings and appear once per mapping (merge keys `<<` excepted).
    Reports every offending key at once."""
    errors: list[LoadError] = []
    seen_nodes: set[int] = set()
    todo: list[tuple[Node, str]] = [(root, "")]
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            todo.extend((kid, paths.child(path, i)) for i, kid in enumerate(node.value))
        if not isinstance(node, MappingNode):
            continue
        first_seen: dict[str, Node] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                todo.append((value, path))
                continue
            if (error := _check_key(key, path)) is not None:
                errors.append(error)
                continue
            key_path = paths.child(path, key.value)
            if key.value in first_seen:
                errors.append(
                    LoadError(
                        f"duplicate key {key.value!r} (first on line "
                        f"{_pos(first_seen[key.value])[0]}, again on line {_pos(key)[0]})",
                        _pos(key),
                        key_path,
                    )
                )
                continue
            first_seen[key.value] = key
            todo.append((value, key_path))
    if errors:
        raise LoadError.of(errors)


def _check_key(key: Node, path: str) -> LoadError | None:
    if isinstance(key, ScalarNode) and key.tag == _STR_TAG:
        return None
    if isinstance(key, ScalarNode):
        kind = _TAG_NAMES.get(key.tag, f"a value tagged {key.tag}")
        message = (
            f"key {key.value!r} is read as {kind}, not a string; quote it ('{key.value}')"
            if key.tag in _TAG_NAMES
            else f"key {key.value!r} is {kind}; keys must be plain strings"
        )
    else:
        return LoadError("keys must be plain strings, not lists or mappings", _pos(key), path)
    return LoadError(message, _pos(key), paths.child(path, key.value))


def _construct(loader: _Loader, root: MappingNode) -> dict[str, object]:
    try:
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise _marked(exc) from None
    except (ValueError, OverflowError, TypeError) as exc:
        # e.g. a timestamp like 2024-02-30: the YAML is well-formed but the value is not.
        raise LoadError(f"YAML value cannot be read: {exc}", _pos(root)) from None
    if not isinstance(data, dict):  # e.g. a mapping tagged !!set or !!omap
        raise LoadError("the manifest must be a plain mapping", _pos(root))
    return data


def _index(node: Node, path: str, index: PositionIndex) -> None:
    """Record positions for `node` at `path` and below. Runs after construction, when merge
    keys are flattened into the mapping; later duplicates (overrides) win, as in the data."""
    index.values[path] = _pos(node)
    if isinstance(node, SequenceNode):
        index.collections.add(path)
        for i, kid in enumerate(node.value):
            _index(kid, paths.child(path, i), index)
    elif isinstance(node, MappingNode):
        index.collections.add(path)
        last = {key.value: (key, value) for key, value in node.value}
        for name, (key, value) in last.items():
            key_path = paths.child(path, name)
            index.keys[key_path] = _pos(key)
            _index(value, key_path, index)
