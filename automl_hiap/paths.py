"""Where search-space files are and how their paths expand: no pydantic, no torch.

``config`` re-exports every name; the listing of ``automl_hiap spaces`` reads them from here
so that it does not pay for building the config models (a few hundred milliseconds).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from automl_hiap.errors import ConfigError

BUNDLED_PACKAGE = "automl_hiap.search_spaces"
ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_path(value: str) -> str:
    """Expand ``${VAR}`` / ``${VAR:-default}`` and ``~`` in a path string."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set (write ${{{name}:-default}})")

    return os.path.expanduser(ENV_PATTERN.sub(substitute, value))


def bundled_spaces() -> list[str]:
    """File names of the search spaces shipped with the package."""
    return sorted(
        p.name for p in resources.files(BUNDLED_PACKAGE).iterdir() if p.name.endswith(".yaml")
    )


def resolve_space_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A path to an existing file wins; a bare name falls back to the bundled space."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        candidate = resources.files(BUNDLED_PACKAGE) / path.name
        if candidate.is_file():
            return Path(str(candidate))
    known = ", ".join(bundled_spaces())
    raise ConfigError(f"{name_or_path}: no such file, and not a bundled space (bundled: {known})")
