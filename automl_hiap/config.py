"""Search-space YAML -> typed, validated, frozen config objects.

Every problem is reported as one line that names the file, the key path and what was expected,
e.g. ``deit_small.yaml: space.constraints.min_heads: expected an integer >= 0, got -1``; all of a
file's problems are reported at once. The text is read by :mod:`automl_hiap.strict_yaml` (size,
nesting and alias limits, no duplicate keys, UTF-8 only), and no number may be NaN or infinite:
a config value is never meant to be either, and one that is only shows up as a NaN loss later.
Relative paths are taken from the current directory; ``${VAR}`` and ``${VAR:-default}`` in
path values are expanded from the environment so one file works on several machines.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from automl_hiap import strict_yaml
from automl_hiap.budget import Budget, parse_budget
from automl_hiap.error_lines import error_lines
from automl_hiap.errors import ConfigError
from automl_hiap.overrides import apply_overrides

# the file lookup and ${VAR} expansion live in the pydantic-free ``paths`` (re-exported)
from automl_hiap.paths import BUNDLED_PACKAGE as BUNDLED_PACKAGE
from automl_hiap.paths import bundled_spaces as bundled_spaces
from automl_hiap.paths import expand_path as expand_path
from automl_hiap.paths import resolve_space_path as resolve_space_path
from automl_hiap.units import ALL_UNITS, Constraints, Unit  # torch-free (space re-exports)


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
    def _known_timm_model(cls, name: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("check_model", True):  # see load_config(check_model=)
            check_model_name(name)
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


class SpaceConfig(_Section):
    """Which granularities are searched, and under which constraints."""

    units: tuple[Unit, ...] = ALL_UNITS
    constraints: Constraints = Field(default_factory=Constraints)

    @field_validator("units")
    @classmethod
    def _no_duplicates(cls, units: tuple[Unit, ...]) -> tuple[Unit, ...]:
        if not units:
            raise ValueError("expected at least one unit to search, e.g. [head, neuron], got []")
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
    # where and how it computes (automl_hiap.placement); the defaults reproduce CPU runs
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    tf32: bool = True  # CUDA float32 matmuls on TF32 tensor cores
    compile: bool = False  # torch.compile the train / eval forward and measured models
    compile_mode: str | None = None  # torch.compile's mode: max-autotune, reduce-overhead ...
    pin_memory: bool | None = None  # None: on for CUDA
    persistent_workers: bool = True  # num_workers > 0: keep the worker processes alive
    prefetch_factor: Annotated[int, Field(ge=1)] | None = None  # per worker (torch's: 2)


class StrategyConfig(_Section):
    """Which strategy runs; its params are validated by the strategy's own config class."""

    name: str = "hiap"
    params: dict[str, Any] = Field(default_factory=dict)


class TrackingConfig(_Section):
    """Where MLflow records the search (``automl_hiap.tracking``).

    ``uri`` None: ``MLFLOW_TRACKING_URI`` if set, else MLflow's default local store
    ``sqlite:///mlflow.db``; the environment variable overrides this key, ``--tracking-uri``
    overrides both. An unreachable server stops the command before any compute, unless
    ``offline_fallback`` lets the run log to a local store in the output folder instead.
    ``register`` names the registered model that the exported model joins (None: not
    registered); the field is ``registered_model`` because pydantic models have a
    ``register`` attribute.
    """

    model_config = ConfigDict(validate_by_name=True)

    enabled: bool = True
    uri: Annotated[str, Field(min_length=1)] | None = None
    experiment: Annotated[str, Field(min_length=1)] = "automl_hiap"
    registered_model: Annotated[str | None, Field(min_length=1, alias="register")] = None
    offline_fallback: bool = False


class TuneRange(_Section):
    """How the outer loop samples one field of the strategy's params.

    ``{low, high}`` (floats; ``log: true`` samples on a log scale, ``step`` discretizes),
    ``{low, high, int: true}`` (integers; ``step`` or ``log`` optional), or ``{choices: [...]}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: Annotated[float, Field(gt=0.0)] | None = None
    integer: bool = Field(False, alias="int")
    choices: Annotated[list[Any], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TuneRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.integer or self.log:
                raise ValueError("expected either {choices: [...]} or {low, high}, not both")
            if self.step is not None:
                raise ValueError("expected no step with choices")
            return self
        if self.low is None or self.high is None:
            raise ValueError("expected {low, high} (optionally log, step, int) or {choices: [...]}")
        if self.low >= self.high:
            raise ValueError(f"expected low < high, got low={self.low:g}, high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"expected low > 0 on a log scale, got low={self.low:g}")
        if self.integer:
            bounds = (self.low, self.high, self.step or 1.0)
            if not all(float(v).is_integer() for v in bounds):
                raise ValueError("expected integer low, high and step with int: true")
            if self.log and self.step not in (None, 1):
                raise ValueError("expected no step (or step 1) with log: true")
        elif self.log and self.step is not None:
            raise ValueError("expected either log: true or a step on a float range, not both")
        return self


class TuneConfig(_Section):
    """The Optuna outer loop (``automl_hiap.tune``); present => ``search`` runs it.

    ``trials`` counts the whole study (all workers). ``tolerance``: a single-objective trial is
    feasible when its exported cost (MACs, or a latency budget's predicted seconds) is within
    this fraction of the target. ``pruner`` None:
    median for a single objective, none for ``pareto`` (Optuna cannot prune multi-objective
    studies). ``seed`` None: ``train.seed``. ``storage`` None: a SQLite file in the output
    folder (a journal file with ``workers`` > 1); ``${VAR}`` expands (passwords stay out of the
    file). ``study`` None: derived from model, strategy and budget. ``measure``: time every
    trial's model (seconds per trial; off for quick studies). ``params``: the tuned fields of
    ``strategy.params`` (``budget`` tunes the budget's
    fraction of dense itself; only with ``pareto``).
    """

    trials: Annotated[int, Field(ge=1)] = 20
    tolerance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.03
    pareto: bool = False
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    startup_trials: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None
    pruner: Literal["median", "hyperband", "none"] | None = None
    storage: Annotated[str, Field(min_length=1)] | None = None
    study: Annotated[str, Field(min_length=1)] | None = None
    workers: Annotated[int, Field(ge=1)] = 1
    measure: bool = True
    params: dict[str, TuneRange]

    @field_validator("params")
    @classmethod
    def _some_params(cls, params: dict[str, TuneRange]) -> dict[str, TuneRange]:
        if not params:
            raise ValueError(
                "expected at least one tuned field, e.g. {lr: {low: 1e-4, high: 1e-2}}"
            )
        return params

    @field_validator("storage")
    @classmethod
    def _expand_storage(cls, storage: str | None) -> str | None:
        return None if storage is None else expand_path(storage)


class SearchConfig(_Section):
    """One search-space file."""

    model: ModelConfig
    data: DataConfig
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    budget: Budget | None = None
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    _source: str = PrivateAttr("")  # how errors name the file it was read from

    @property
    def source(self) -> str:
        """The file this config was read from, as errors name it (empty if built in code)."""
        return self._source

    def where(self, key: str) -> str:
        """How an error about ``key`` names it: ``file: key.path`` (``key.path`` without a
        file), so that checks made after loading still point at the line to change."""
        return f"{self._source}: {key}" if self._source else key

    @field_validator("budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> Budget | None:
        return None if value is None or isinstance(value, Budget) else parse_budget(value)


def check_model_name(name: str) -> None:
    """Raise ValueError unless timm knows the model ``name``.

    This imports timm, hence torch (seconds on a small machine), which is why
    ``load_config(check_model=False)`` can leave it for :func:`verify_model_name` to do later.
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"expected a timm model name, got unknown model {name!r}{hint}")


def verify_model_name(config: SearchConfig, name_or_path: str | os.PathLike[str]) -> None:
    """The check ``load_config(check_model=False)`` skipped, as the same one-line error."""
    try:
        check_model_name(config.model.name)
    except ValueError as exc:
        raise ConfigError(f"{source_name(name_or_path)}: model.name: {exc}") from None


def source_name(name_or_path: str | os.PathLike[str]) -> str:
    """How errors name a space file: a bundled file by its name, any other by its path."""
    path = resolve_space_path(name_or_path)
    return path.name if str(path).startswith(str(resources.files(BUNDLED_PACKAGE))) else str(path)


def load_config(
    name_or_path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    *,
    check_model: bool = True,
) -> SearchConfig:
    """Read, override and validate a search-space file; raise ConfigError on any problem.

    ``check_model=False`` skips the timm model-name check (the one part that imports torch),
    so the CLI can show its plan at once; call :func:`verify_model_name` before building the model.
    """
    path = resolve_space_path(name_or_path)
    source = source_name(path)
    raw = read_space_file(path, source)
    raw = apply_overrides(raw, overrides or [], source)
    problems = {key: f"expected a finite number, got {value}" for key, value in _non_finite(raw)}
    try:
        config = SearchConfig.model_validate(raw, context={"check_model": check_model})
    except ValidationError as exc:
        for key, message in error_lines(exc, SearchConfig):
            if not any(key[: len(bad)] == bad for bad in problems):  # said once, by key
                problems.setdefault(key, message)
    if problems:
        raise ConfigError(
            "\n".join(f"{source}: {'.'.join(k) or '(top level)'}: {m}" for k, m in problems.items())
        )
    config._source = source
    return config


def read_space_file(path: Path, source: str) -> dict[str, Any]:
    """The raw mapping of a space file (strictly read; see :mod:`automl_hiap.strict_yaml`)."""
    try:
        raw = strict_yaml.load_file(path)
    except strict_yaml.YAMLRefused as exc:
        key = ".".join(exc.path)
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{exc}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        said = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = ", ".join(part for part in said if part) or " ".join(str(exc).split())
        raise ConfigError(f"{source}:{line} malformed YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    return raw


def _non_finite(value: Any, key: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """Every NaN or infinite float in a raw config, by key path."""
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _non_finite(item, (*key, str(name)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*key, str(index)))
