"""What ``automl_hiap strategies`` and ``automl_hiap spaces`` print, without importing torch.

Loading a strategy module imports torch (seconds on a small machine) only to read two
strings. So the listing reads each entry point's class from its source file instead: the
class body's literal ``name``, ``description`` and ``requires``. Anything it cannot read that
way (a computed description, a class inheriting from another strategy, a module without a
source file, two entry points with one name) sends the whole listing through the real
discovery (``plugins.available()``), so the output, its warnings and its errors are never
different, only faster. The bundled spaces are listed from their YAML alone: no model is
built and no timm name is checked (``inspect`` and ``search`` do that), and neither pydantic
nor the config models are loaded.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points  # a stdlib module: ~30 ms
from pathlib import Path
from typing import Any

import yaml

ENTRY_POINT_GROUP = "automl_hiap.strategies"  # = plugins.ENTRY_POINT_GROUP (a test checks)
_BASES = {"Strategy"}


@dataclass(frozen=True)
class StrategyEntry:
    """One line of ``automl_hiap strategies``."""

    name: str
    description: str
    missing: tuple[str, ...]  # install commands of optional packages this machine lacks

    def line(self) -> str:
        note = f"  (needs: {'; '.join(self.missing)})" if self.missing else ""
        return f"{self.name:12s} {self.description}{note}"


def strategy_entries() -> list[StrategyEntry]:
    """Every installed strategy, sorted by name: read from source, else by importing them."""
    found = static_strategy_entries()
    return found if found is not None else imported_strategy_entries()


def imported_strategy_entries() -> list[StrategyEntry]:
    """The same list through the real plugin discovery (imports every strategy, and torch)."""
    from automl_hiap import plugins

    return [
        StrategyEntry(name, cls.description, tuple(plugins.missing_requirements(cls)))
        for name, cls in plugins.available().items()
    ]


def static_strategy_entries() -> list[StrategyEntry] | None:
    """The list read from the entry points' source files; None when any one is unreadable."""
    entries: dict[str, StrategyEntry] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in entries:
            return None  # a duplicate: the real discovery raises the error
        read = _read_entry(entry)
        if read is None:
            return None
        entries[entry.name] = read
    return [entries[name] for name in sorted(entries)]


def _read_entry(entry: EntryPoint) -> StrategyEntry | None:
    module, _, attr = entry.value.partition(":")
    if not attr or "." in attr.strip():
        return None
    try:
        spec = importlib.util.find_spec(module.strip())
    except (ImportError, ValueError):
        return None
    origin = None if spec is None else spec.origin
    if origin is None or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"), origin)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    constants = _module_strings(tree)
    cls = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == attr.strip()), None
    )
    if cls is None or not all(_base_name(b) in _BASES for b in cls.bases) or not cls.bases:
        return None
    body: dict[str, Any] = {}
    for node in cls.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in ("name", "description", "requires"):
            try:
                body[target.id] = _literal(value, constants)
            except ValueError:
                return None
    name, description = body.get("name"), body.get("description")
    requires = body.get("requires", {})
    if name != entry.name or not isinstance(description, str) or not isinstance(requires, dict):
        return None  # e.g. a misnamed plugin: the real discovery warns about it
    missing = tuple(
        str(hint) for module_name, hint in requires.items() if not _importable(str(module_name))
    )
    return StrategyEntry(name, description, missing)


def _base_name(node: ast.expr) -> str | None:
    """``Strategy``, ``Strategy[P]``, ``strategy.Strategy[P]`` -> "Strategy"."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` constants (e.g. an install command)."""
    constants: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            constants[node.targets[0].id] = node.value.value
    return constants


def _literal(node: ast.expr | None, constants: dict[str, str]) -> Any:
    """A literal, where names may be the module's string constants; ValueError otherwise."""
    if isinstance(node, ast.Name):
        if node.id in constants:
            return constants[node.id]
        raise ValueError(node.id)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError("**")
        pairs = zip(node.keys, node.values, strict=True)
        return {_literal(k, constants): _literal(v, constants) for k, v in pairs}
    if node is None:
        raise ValueError("no value")
    return ast.literal_eval(node)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------- spaces
@dataclass(frozen=True)
class SpaceEntry:
    """One bundled space as its file states it (not validated: no model is built)."""

    file: str
    model: str
    data: str
    budget: str
    strategy: str
    about: str  # the first sentence of the file's leading comment
    needs: tuple[str, ...] = ()  # files it points at that this machine lacks

    def lines(self) -> list[str]:
        head = (
            f"{self.file:24s} {self.model:24s} data={self.data:13s} budget={self.budget:5s} "
            f"strategy={self.strategy}"
        )
        notes = [f"    {self.about}"] if self.about else []
        notes += [f"    not here: {need}" for need in self.needs]
        return [head, *notes]


def space_entries() -> list[SpaceEntry]:
    """Every bundled space: model, data format, budget, strategy, what it is for, and which of
    the files it points at (data root, checkpoint) this machine does not have."""
    from automl_hiap.paths import bundled_spaces, resolve_space_path

    entries = []
    for name in bundled_spaces():
        text = resolve_space_path(name).read_text(encoding="utf-8")
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            entries.append(SpaceEntry(name, "?", "?", "?", "?", f"(malformed YAML: {exc})"))
            continue
        model, data = raw.get("model") or {}, raw.get("data") or {}
        pointed = (("data.root", data.get("root")), ("model.checkpoint", model.get("checkpoint")))
        needs = [_missing(key, str(value)) for key, value in pointed if value is not None]
        entries.append(
            SpaceEntry(
                file=name,
                model=str(model.get("name", "?")),
                data=str(data.get("format", "?")),
                budget=str(raw.get("budget", "-")),
                strategy=str((raw.get("strategy") or {}).get("name", "(default)")),
                about=leading_comment(text),
                needs=tuple(n for n in needs if n),
            )
        )
    return entries


def _missing(key: str, value: str) -> str:
    """How to point ``key`` elsewhere, when the path it names is absent here ("" if present)."""
    from automl_hiap.paths import expand_path

    try:
        where = expand_path(value)
    except ValueError:  # a variable without a default
        where = value
    if Path(where).exists():
        return ""
    variables = [m.group(1) for m in re.finditer(r"\$\{(\w+)", value)]
    how = f"set {' or '.join(variables)}, or --set {key}=PATH" if variables else f"--set {key}=PATH"
    return f"{key} {where} ({how})"


def leading_comment(text: str) -> str:
    """The first sentence of a file's leading ``#`` comment block."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    joined = " ".join(part for part in lines if part)
    sentence, dot, _ = joined.partition(". ")
    return sentence + ("." if dot else "")
