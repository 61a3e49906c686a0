"""Search-space YAML -> typed, validated, frozen config objects.

Every problem is reported as one line that names the file, the key path and what was expected,
e.g. ``deit_small.yaml: space.constraints.min_heads: expected an integer >= 0, got -1``.
Relative paths are taken from the current directory; ``${VAR}`` and ``${VAR:-default}`` in
path values are expanded from the environment so one file works on several machines.
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from automl_hiap.budget import Budget, parse_budget
from automl_hiap.errors import ConfigError
from automl_hiap.space import ALL_UNITS, Unit

BUNDLED_PACKAGE = "automl_hiap.search_spaces"
_ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_path(value: str) -> str:
    """Expand ``${VAR}`` / ``${VAR:-default}`` and ``~`` in a path string."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set (write ${{{name}:-default}})")

    return os.path.expanduser(_ENV_PATTERN.sub(substitute, value))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ModelConfig(_Section):
    """Which timm ViT to start from and where its weights come from."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: bool = False

    @field_validator("name")
    @classmethod
    def _known_timm_model(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ValueError(f"expected a timm model name, got unknown model {name!r}{hint}")
        return name

    @field_validator("checkpoint")
    @classmethod
    def _existing_checkpoint(cls, path: str | None) -> str | None:
        if path is None:
            return None
        resolved = expand_path(path)
        if not Path(resolved).is_file():
            raise ValueError(f"expected an existing checkpoint file, got {resolved!r} (not found)")
        return resolved


class DataConfig(_Section):
    """Dataset, resolution and normalization.

    ``val_fraction`` of the training data is held out (stratified, seeded) for search
    decisions; the dataset's own test/val split is never seen by the search. ``train_subset``
    keeps at most that many training images (stratified, after the val split). ``augment``
    switches training augmentation (crop + flip, or timm's ImageNet recipe) on or off.
    ``num_classes`` sets the class count of ``synthetic`` data; for real data it is optional
    and, when given, checked against the classes found.
    """

    format: Literal["imagefolder", "cifar10", "tiny_imagenet", "digits", "synthetic"]
    root: str | None = None
    image_size: Annotated[int, Field(ge=8)] = 224
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[
        Annotated[float, Field(gt=0.0)],
        Annotated[float, Field(gt=0.0)],
        Annotated[float, Field(gt=0.0)],
    ] = (0.229, 0.224, 0.225)
    train_subset: Annotated[int, Field(ge=1)] | None = None
    augment: bool = True
    num_classes: Annotated[int, Field(ge=2)] | None = None

    @field_validator("root")
    @classmethod
    def _expand_root(cls, root: str | None) -> str | None:
        return None if root is None else expand_path(root)


class Constraints(_Section):
    """Structural limits that keep every subnet valid and hardware-friendly."""

    min_heads: Annotated[int, Field(ge=1)] = 1
    min_head_dims: Annotated[int, Field(ge=1)] = 1
    min_neuron_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    round_to: Annotated[int, Field(ge=1)] = 1


class SpaceConfig(_Section):
    """Which granularities are searched, and under which constraints."""

    units: tuple[Unit, ...] = ALL_UNITS
    constraints: Constraints = Field(default_factory=Constraints)

    @field_validator("units")
    @classmethod
    def _no_duplicates(cls, units: tuple[Unit, ...]) -> tuple[Unit, ...]:
        if len(set(units)) != len(units):
            raise ValueError("expected each unit once")
        return units


class DistillConfig(_Section):
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7
    temperature: Annotated[float, Field(gt=0.0)] = 4.0


class TrainConfig(_Section):
    """Shared training settings; strategies decide how many epochs they spend."""

    batch_size: Annotated[int, Field(ge=1)] = 128
    eval_batch_size: Annotated[int, Field(ge=1)] = 256
    lr: Annotated[float, Field(gt=0.0)] = 5e-5
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 1.0
    distill: DistillConfig | None = None
    seed: int = 0
    num_workers: Annotated[int, Field(ge=0)] = 0
    dense_epochs: Annotated[int, Field(ge=0)] = (
        0  # train the dense model first if it has no weights
    )


class StrategyConfig(_Section):
    """Which strategy runs; its params are validated by the strategy's own config class."""

    name: str = "hiap"
    params: dict[str, Any] = Field(default_factory=dict)


class SearchConfig(_Section):
    """One search-space file."""

    model: ModelConfig
    data: DataConfig
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    budget: Budget | None = None
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> Budget | None:
        return None if value is None or isinstance(value, Budget) else parse_budget(value)


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


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed YAML value)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


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


def _describe(error: Any, model: type[BaseModel]) -> str:
    """One readable phrase for one pydantic error."""
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        fields = _fields_at(model, error["loc"][:-1])
        return "unknown key" + (f" (expected one of: {', '.join(fields)})" if fields else "")
    if kind == "missing":
        return "missing required key"
    message = message.removeprefix("Value error, ")
    if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], dict):
        return f"{message}, got {error['input']!r}"
    return message


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for key in loc:
        field = getattr(current, "model_fields", {}).get(key)
        if field is None:
            return []
        current = field.annotation
        args = getattr(current, "__args__", ())
        current = next((a for a in (current, *args) if hasattr(a, "model_fields")), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def load_config(
    name_or_path: str | os.PathLike[str], overrides: list[str] | None = None
) -> SearchConfig:
    """Read, override and validate a search-space file; raise ConfigError on any problem."""
    path = resolve_space_path(name_or_path)
    source = path.name if str(path).startswith(str(resources.files(BUNDLED_PACKAGE))) else str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(
            f"{source}:{line}: malformed YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    raw = apply_overrides(raw, overrides or [], source)
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, SearchConfig, source=source)) from None


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], source: str = "", prefix: str = ""
) -> str:
    """One line per problem: ``source: key.path: what was expected``."""
    lines = []
    for error in exc.errors():
        parts = ([prefix] if prefix else []) + [str(part) for part in error["loc"]]
        key = ".".join(parts)
        head = f"{source}: " if source else ""
        lines.append(f"{head}{key or '(top level)'}: {_describe(error, model)}")
    return "\n".join(lines)
