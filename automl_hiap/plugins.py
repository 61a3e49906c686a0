"""Find strategies by name.

Built-in strategies come through the same ``automl_hiap.strategies`` entry-point group as
third-party plugins, so that path runs in every test. A plugin that fails to import gives a
warning and is skipped; two strategies with one name are an error (unlike timm, a silent
override would make results depend on install order). A strategy whose optional package is
missing (``Strategy.requires``) is still listed with its install command;
asking for it by name is the error.
"""

from __future__ import annotations

import importlib.util
import warnings
from importlib.metadata import entry_points

from automl_hiap.errors import UserError
from automl_hiap.strategy import Strategy

ENTRY_POINT_GROUP = "automl_hiap.strategies"

_strategies: dict[str, type[Strategy]] = {}
_discovered = False


class DuplicateStrategyError(ValueError):
    """Two strategies claim the same name."""


def add(cls: type[Strategy]) -> type[Strategy]:
    """Add a Strategy subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} has no name")
    existing = _strategies.get(name)
    if existing is not None and existing is not cls:
        raise DuplicateStrategyError(
            f"strategy name {name!r} is taken by {existing.__module__}.{existing.__qualname__}; "
            f"{cls.__module__}.{cls.__qualname__} cannot add it again"
        )
    _strategies[name] = cls
    return cls


def discover(force: bool = False) -> None:
    """Load every entry point of the group once (again with ``force``)."""
    global _discovered
    if _discovered and not force:
        return
    _discovered = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:  # a broken plugin must not take the tool down
            warnings.warn(
                f"strategy plugin {entry.name!r} ({entry.value}) failed to load: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if getattr(cls, "name", None) != entry.name:
            warnings.warn(
                f"strategy plugin {entry.name!r} ({entry.value}) names itself "
                f"{getattr(cls, 'name', None)!r}; skipped (the two names must match)",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        add(cls)


def available() -> dict[str, type[Strategy]]:
    """Name -> class of every known strategy, sorted by name."""
    discover()
    return dict(sorted(_strategies.items()))


def missing_requirements(cls: type[Strategy]) -> list[str]:
    """Install commands for the optional packages ``cls`` needs and this environment lacks."""
    requires = cls.requires.items()
    return [hint for module, hint in requires if importlib.util.find_spec(module) is None]


def get(name: str) -> type[Strategy]:
    strategies = available()
    if name not in strategies:
        known = ", ".join(strategies) or "(none installed)"
        raise UserError(f"strategy.name: unknown strategy {name!r} (available: {known})")
    missing = missing_requirements(strategies[name])
    if missing:
        raise UserError(f"strategy.name: {name!r} needs an optional package: {'; '.join(missing)}")
    return strategies[name]
