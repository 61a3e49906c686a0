"""YAML that a user, or an attacker, wrote: bounded and strict, refused before it is built.

PyYAML's safe loader runs no code, but it still accepts what a config never needs and what a
reader pays dearly for: a few lines of aliases that expand into billions of values once walked
as a tree (validation walks it so), nesting deep enough to overflow Python's recursion limit, a
file of any size, a key given twice (the last one silently wins) and bytes that are not UTF-8.
Everything here is checked on the composed node graph, where an alias is still one shared node,
so a bomb is refused after reading a few lines, before a single value is constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 256 * 1024  # a search-space file is a few kilobytes
MAX_DEPTH = 32  # nesting levels, counted from the top-level mapping
MAX_VALUES = 10_000  # scalars, lists and mappings, every alias expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLRefused(ValueError):
    """A YAML text beyond the limits, or not UTF-8, or with a key given twice.

    ``path`` is the key path where it was found (``model.kwargs.a``; empty for the file as a
    whole); the message says what was found and what is expected.
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def load_file(path: Path) -> Any:
    """The value of a YAML file, read no further than :data:`MAX_BYTES`."""
    with path.open("rb") as file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YAMLRefused(f"larger than {MAX_BYTES // 1024} KiB; expected a search-space file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YAMLRefused(
            f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; expected UTF-8 text"
        ) from None
    return load(text)


def load(text: str) -> Any:
    """The value of a YAML text (raises ``yaml.YAMLError`` on a syntax error)."""
    try:
        loader = _Loader(text)  # checks that every character is printable
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YAMLRefused(f"line {line}: character #x{code:04x}; expected printable text") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, (), 0, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _line(node: Node) -> str:
    return f"line {node.start_mark.line + 1}"


class _Loader(yaml.SafeLoader):
    """The safe loader, with nesting and node counts bounded while it composes (its composer
    recurses once per level, so depth is bounded before the recursion limit is reached)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        part = index.value if isinstance(index, ScalarNode) else "" if index is None else index
        self._path.append(str(part))
        self._nodes += 1
        try:
            path = tuple(p for p in self._path if p)
            if len(self._path) > MAX_DEPTH + 1:  # the root is level 0
                mark = self.peek_event().start_mark
                raise YAMLRefused(
                    f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels; "
                    "expected a flat config",
                    path[:8] + (("...",) if len(path) > 8 else ()),
                )
            if self._nodes > MAX_VALUES:
                mark = self.peek_event().start_mark
                raise YAMLRefused(
                    f"line {mark.line + 1}: more than {MAX_VALUES} values; expected a config",
                    path,
                )
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


def _check(
    node: Node,
    path: tuple[str, ...],
    depth: int,
    done: dict[int, tuple[int, int]],
    open_nodes: set[int],
) -> tuple[int, int]:
    """(values, height) of ``node`` with every alias expanded; refuses too many values, too
    deep an expansion, a recursive alias and a duplicate key. Shared nodes are walked once."""
    key = id(node)
    if key in open_nodes:
        raise YAMLRefused(f"{_line(node)}: a recursive alias; expected a tree", path)
    if key not in done:
        open_nodes.add(key)
        values, height = 1, 0
        children: list[tuple[tuple[str, ...], Node]] = []
        if isinstance(node, SequenceNode):
            children = [((*path, str(i)), child) for i, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            seen: dict[tuple[str, str], Node] = {}
            for name, child in node.value:
                label = name.value if isinstance(name, ScalarNode) else "?"
                if isinstance(name, ScalarNode) and name.tag != _MERGE_TAG:
                    first = seen.setdefault((name.tag, name.value), name)
                    if first is not name:
                        raise YAMLRefused(
                            f"{_line(name)}: duplicate key (first at {_line(first)}); "
                            "expected each key once",
                            (*path, label),
                        )
                children.append((path if name.tag == _MERGE_TAG else (*path, label), child))
        for where, child in children:
            count, below = _check(child, where, depth + 1, done, open_nodes)
            values, height = values + count, max(height, below + 1)
            if values > MAX_VALUES:
                raise YAMLRefused(
                    f"{_line(child)}: aliases expand to more than {MAX_VALUES} values; "
                    "expected a config without alias bombs",
                    where,
                )
        open_nodes.discard(key)
        done[key] = (values, height)
    values, height = done[key]
    if depth + height > MAX_DEPTH:
        raise YAMLRefused(
            f"{_line(node)}: aliases nest deeper than {MAX_DEPTH} levels; expected a flat config",
            path,
        )
    return values, height
