"""``--set key.path=value``: command-line overrides of a space file's raw mapping, each value
read as YAML under the same limits as the file (a value that is not YAML stays a string)."""

from __future__ import annotations

from typing import Any

import yaml

from automl_hiap import strict_yaml
from automl_hiap.errors import ConfigError


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed YAML value); a value that is not YAML is
    taken as a string, one beyond the YAML limits is refused."""
    key, sep, raw = assignment.partition("=")
    keys = key.strip().split(".")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    if len(keys) > strict_yaml.MAX_DEPTH:
        raise ConfigError(
            f"--set {key[:60]!r}: a key path of {len(keys)} parts; "
            f"expected at most {strict_yaml.MAX_DEPTH}"
        )
    try:
        value = strict_yaml.load(raw) if raw.strip() else None
    except strict_yaml.YAMLRefused as exc:
        where = ".".join([*keys, *exc.path])
        raise ConfigError(f"--set {where}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    for assignment in overrides:
        keys, value = parse_override(assignment)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                path = ".".join(keys[: depth + 1])
                raise ConfigError(f"{source}: {path}: expected a mapping to set {assignment!r}")
            node = child
        node[keys[-1]] = value
    return raw
