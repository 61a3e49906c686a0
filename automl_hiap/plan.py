"""One resolve step: a config and the command line's overrides become one frozen run plan.

Every path that runs, tunes, tracks or inspects a search starts here, so the effective config,
the model, its space, the dense cost, the MACs target and the strategy are worked out once and
the same way: ``search``, ``tune``, tracking, ``inspect`` and the benchmarks read them off the
plan instead of rebuilding them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from automl_hiap import plugins
from automl_hiap.budget import Budget
from automl_hiap.config import SearchConfig, format_validation_error
from automl_hiap.cost import Cost, dense_cost
from automl_hiap.errors import ConfigError, UserError
from automl_hiap.models import ModelSpec, create_model
from automl_hiap.space import SearchSpace
from automl_hiap.strategy import Strategy


@dataclass(frozen=True)
class RunPlan:
    """What one search runs with. ``config`` is the effective config: the strategy named on
    the command line and the budget given there are folded in."""

    config: SearchConfig
    spec: ModelSpec
    model: nn.Module  # the dense model with its weights; shapes only for ``resolve(meta=True)``
    space: SearchSpace
    dense: Cost
    target_macs: float | None
    strategy: Strategy

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


def build_strategy(config: SearchConfig) -> Strategy:
    """The configured strategy with its params validated (errors name ``strategy.params``)."""
    cls = plugins.get(config.strategy.name)
    try:
        return cls.from_dict(config.strategy.params)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, cls.Params, prefix="strategy.params")
        ) from None


def target_macs(budget: Budget | None, dense_macs: float) -> float | None:
    """The MACs a budget allows for a model of ``dense_macs``."""
    if budget is None:
        return None
    try:
        return budget.target_macs(dense_macs)
    except ValueError as exc:
        raise UserError(f"budget: {exc}") from None


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
    built = build_strategy(config)
    m = config.model
    spec = ModelSpec(m.name, dict(m.kwargs))
    if meta:
        with torch.device("meta"):
            model = spec.create()
    else:
        torch.manual_seed(config.train.seed)  # fresh weights (no checkpoint) are seeded
        model = create_model(m.name, dict(m.kwargs), m.checkpoint, m.pretrained)
    space = SearchSpace.from_model(model, config.space.units, config.space.constraints)
    dense = dense_cost(space)
    target = target_macs(config.budget, dense.macs)
    if check_budget and target is None and built.needs_budget:
        raise UserError(f"budget: strategy {built.name!r} needs a budget (e.g. --budget 0.5)")
    return RunPlan(
        config=config,
        spec=spec,
        model=model,
        space=space,
        dense=dense,
        target_macs=target,
        strategy=built,
    )
