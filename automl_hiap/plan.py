"""One resolve step: a config and the command line's overrides become one frozen run plan.

Every path that runs, tunes, tracks or inspects a search starts here, so the effective config,
the model, its space, the dense cost, the MACs target and the strategy are worked out once and
the same way: ``search``, ``tune``, tracking, ``inspect`` and the benchmarks read them off the
plan instead of rebuilding them.

It is also the last gate before compute: everything the config alone cannot tell, because it
depends on the model's shape, is checked here on a meta-device build (no weights, no memory)
before the real model is created and long before any training: timm's constructor errors, the
constraints against the heads and dims the model has, the input size, the units the strategy
needs and a budget below the smallest subnet the space allows. Each problem is one line naming
the file and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from automl_hiap import plugins
from automl_hiap.budget import Budget, format_macs
from automl_hiap.config import SearchConfig
from automl_hiap.cost import Cost, count_macs, dense_cost
from automl_hiap.cost_model import MACS, CostModel
from automl_hiap.error_lines import format_validation_error
from automl_hiap.errors import ConfigError, UserError
from automl_hiap.models import ModelSpec, TimmKwargs, create_model
from automl_hiap.space import SearchSpace, Unit
from automl_hiap.strategy import Strategy, unit_listing


@dataclass(frozen=True)
class RunPlan:
    """What one search runs with. ``config`` is the effective config: the strategy named on
    the command line and the budget given there are folded in."""

    config: SearchConfig
    spec: ModelSpec
    model: nn.Module  # the dense model with its weights; shapes only for ``resolve(meta=True)``
    space: SearchSpace
    dense: Cost
    target: float | None  # in ``cost``'s unit: seconds for a latency budget
    strategy: Strategy
    cost: CostModel = MACS  # what the budget counts: MACs, or the device's fitted latency

    @property
    def budget(self) -> Budget | None:
        return self.config.budget

    @property
    def has_weights(self) -> bool:
        """Whether the model starts from a checkpoint or hub weights (else it trains first)."""
        return self.config.model.checkpoint is not None or self.config.model.pretrained


def effective_config(
    config: SearchConfig, strategy: str | None = None, budget: Budget | None = None
) -> SearchConfig:
    """``config`` with the command line's strategy and budget folded in (the file's params go
    to the named strategy)."""
    update: dict[str, Any] = {}
    if strategy is not None:
        update["strategy"] = config.strategy.model_copy(update={"name": strategy})
    if budget is not None:
        update["budget"] = budget
    return config.model_copy(update=update) if update else config


def build_strategy(config: SearchConfig, flag: str | None = None) -> Strategy:
    """The configured strategy with its params validated (errors name ``strategy.params``;
    ``flag``: the command-line flag that named the strategy, if one did)."""
    try:
        cls = plugins.get(config.strategy.name)
    except UserError as exc:
        raise UserError(_named(config, str(exc), flag)) from None
    try:
        return cls.from_dict(config.strategy.params)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, cls.Params, config.source, prefix="strategy.params")
        ) from None


def _named(config: SearchConfig, message: str, flag: str | None = None) -> str:
    """``message`` (``key: ...``) as the file names it, or as the command-line flag."""
    if flag is not None:
        return f"{flag}: {message.partition(': ')[2]}"
    return config.where(message)


def target_macs(budget: Budget | None, dense_macs: float, where: str = "budget") -> float | None:
    """The MACs a budget allows for a model of ``dense_macs`` (errors name ``where``)."""
    if budget is None:
        return None
    try:
        return budget.target_macs(dense_macs)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def smallest_macs(space: SearchSpace) -> int:
    """MACs of the smallest subnet the space allows: every searched group at its minimum (a
    searched branch removed), the greedy selection's floor. Blocks are independent, so this is
    a sum of per-block minima."""
    total = space.fixed_macs
    for i, shape in enumerate(space.layers):
        heads, dims, hidden = shape.num_heads, shape.head_dim, shape.mlp_hidden
        if space.searches(Unit.ATTN_BLOCK):
            heads = 0
        elif space.searches(Unit.HEAD):
            heads = min(space.min_heads, heads)
        qk = space.min_dims(i) if space.searches(Unit.QK_DIM) else dims
        v = space.min_dims(i) if space.searches(Unit.V_DIM) else dims
        neurons = 0 if space.searches(Unit.FFN_BLOCK) else hidden
        if neurons and space.searches(Unit.NEURON):
            neurons = space.min_neurons(i)
        inputs = [
            space.allowed_kept(1, shape.embed_dim, rounding="up")
            if space.searches(unit)
            else shape.embed_dim
            for unit in (Unit.ATTN_IN, Unit.MLP_IN)
        ]
        total += count_macs(space.tokens, shape.embed_dim, heads * qk, heads * v, neurons, *inputs)
    return int(total)


# timm keywords that make it read a file or download: never passed to timm from a config
READS_FILES = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
)


def _architecture(config: SearchConfig) -> nn.Module:
    """The dense architecture on the meta device: shapes only, so a wrong ``model.kwargs`` is
    found in milliseconds, whatever size it asks for."""
    m = config.model
    reads = sorted(k for k in m.kwargs if k in READS_FILES)
    if reads:  # refused before timm sees it: timm would open that file even on the meta device
        raise ConfigError(
            f"{config.where('model.kwargs.' + reads[0])}: timm reads files or downloads with "
            "it; give weights as model.checkpoint (a safetensors or state-dict file) instead"
        )
    try:
        with torch.device("meta"):
            return ModelSpec(m.name, dict(m.kwargs)).create()
    except UserError as exc:  # ModelSpec's own one line: the model, its kwargs, the reason
        raise ConfigError(f"{config.where('model.kwargs')}: {exc}") from None
    except Exception as exc:  # timm's constructor checks with asserts, TypeErrors, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"{config.where('model.kwargs')}: timm cannot build {m.name} with {dict(m.kwargs)}: "
            f"{reason}; expected arguments {m.name} accepts"
        ) from None


def _shape_problems(config: SearchConfig, model: nn.Module, space: SearchSpace) -> list[str]:
    """What the model's shape makes impossible in ``config``: constraints it cannot satisfy
    (silently clamped otherwise) and an input size it does not take. One line each."""
    c, units, where = config.space.constraints, config.space.units, config.where
    problems = []
    heads = min(shape.num_heads for shape in space.layers)
    dims = min(shape.head_dim for shape in space.layers)
    if c.min_heads > heads:
        problems.append(
            f"{where('space.constraints.min_heads')}: expected at most {heads} "
            f"(the model's heads per block), got {c.min_heads}"
        )
    if c.min_head_dims > dims:
        problems.append(
            f"{where('space.constraints.min_head_dims')}: expected at most {dims} "
            f"(the model's dims per head), got {c.min_head_dims}"
        )
    groups = {  # the sizes round_to rounds, for the searched units it applies to
        "dims per head": (dims, (Unit.QK_DIM, Unit.V_DIM)),
        "FFN neurons": (min(s.mlp_hidden for s in space.layers), (Unit.NEURON,)),
        "width": (min(s.embed_dim for s in space.layers), (Unit.ATTN_IN, Unit.MLP_IN)),
    }
    for name, (size, rounded) in groups.items():
        if c.round_to > size and any(u in units for u in rounded):
            problems.append(
                f"{where('space.constraints.round_to')}: expected at most {size} (the model's "
                f"{name}, searched as {unit_listing(rounded)}), got {c.round_to}"
            )
            break
    embed = getattr(model, "patch_embed", None)
    takes = getattr(embed, "img_size", None)  # (height, width), unless any size goes
    fixed = getattr(embed, "strict_img_size", False) and not getattr(
        model, "dynamic_img_size", True
    )
    if fixed and takes is not None and tuple(takes) != (config.data.image_size,) * 2:
        problems.append(
            f"{where('data.image_size')}: expected {takes[0]} (the model's input size; set "
            f"model.kwargs.img_size to change it), got {config.data.image_size}"
        )
    foreign = sorted(set(config.model.kwargs) - set(TimmKwargs.model_fields))
    if foreign:  # timm takes it, but the export's arch.json could never carry it
        problems.append(
            f"{where('model.kwargs.' + foreign[0])}: not a keyword an exported model can carry "
            f"(its loader takes no file paths, downloads or code); expected one of "
            f"{', '.join(TimmKwargs.model_fields)}"
        )
    return problems


def resolve(
    config: SearchConfig,
    strategy: str | None = None,
    budget: Budget | None = None,
    *,
    meta: bool = False,
    check_budget: bool = True,
) -> RunPlan:
    """The plan of a search. ``meta=True`` builds the model on the meta device (shapes only:
    no weights read, no memory), for callers that need the space but never run the model.
    ``check_budget=False`` lets a strategy that needs a budget go without one (a Pareto study
    samples it per trial)."""
    config = effective_config(config, strategy, budget)
    built = build_strategy(config, "--strategy" if strategy is not None else None)
    m = config.model
    spec = ModelSpec(m.name, dict(m.kwargs))
    model = _architecture(config)
    try:
        space = SearchSpace.from_model(model, config.space.units, config.space.constraints)
    except UserError as exc:
        raise UserError(f"{config.where('model')}: {exc}") from None
    problems = _shape_problems(config, model, space)
    if built.requires_units and not any(space.searches(u) for u in built.requires_units):
        message = built.units_error.format(
            name=built.name, units=unit_listing(built.requires_units)
        )
        problems.append(_named(config, message))
    dense = dense_cost(space)
    where = "--budget" if budget is not None else config.where("budget")
    target = None
    cost: CostModel = MACS
    try:
        if config.budget is not None and config.budget.latency is not None:  # a device's time
            from automl_hiap.latency import latency_plan

            if not built.latency_budgets:
                raise UserError(
                    f"{where}: strategy {built.name!r} selects to MACs only (it does not "
                    "declare latency_budgets); give a MACs budget, e.g. 0.5"
                )
            build = None if meta else spec.create
            cost, target = latency_plan(config.budget, space, build, config.data.image_size)
        else:
            target = target_macs(config.budget, dense.macs, where)
    except UserError as exc:
        problems.append(str(exc))
    smallest = smallest_macs(space)
    if cost is MACS and target is not None and target < smallest:
        problems.append(
            f"{where}: expected at least {format_macs(smallest)} MACs "
            f"({smallest / dense.macs:.1%} of the dense {format_macs(dense.macs)}), the "
            f"smallest subnet space.units and space.constraints allow, got {config.budget}"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    if check_budget and target is None and built.needs_budget:
        raise UserError(
            _named(config, f"budget: strategy {built.name!r} needs a budget (e.g. --budget 0.5)")
        )
    if not meta:
        torch.manual_seed(config.train.seed)  # fresh weights (no checkpoint) are seeded
        try:
            model = create_model(m.name, dict(m.kwargs), m.checkpoint, m.pretrained)
        except UserError as exc:
            raise UserError(_named(config, str(exc))) from None
    return RunPlan(
        config=config,
        spec=spec,
        model=model,
        space=space,
        dense=dense,
        target=target,
        strategy=built,
        cost=cost,
    )
