"""Every registered strategy must pass these (the conformance suite, like Optuna's samplers):
its subnet validates against the space, respects the budget, is seed-deterministic, and the
masked model equals the exported one.

Strategies that train get a tiny trainer on synthetic data; ``FAST`` gives each known strategy
params that make a run a few optimizer steps. A plugin not listed here runs with its defaults;
a strategy whose optional package is missing is skipped with its install command.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

import automl_hiap as ah
from automl_hiap import plugins
from automl_hiap.config import TrainConfig
from automl_hiap.space import Constraints
from automl_hiap.strategy import SearchContext, SearchResult
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec

BUDGET_TOLERANCE = 0.03
FAST: dict[str, dict[str, Any]] = {
    "magnitude": {},
    "hiap": {"epochs": 1},
    "sero": {"explore_epochs": 2, "warmup_epochs": 1, "mask_every": 2, "reopt_epochs": 0},
    "gohsp": {"rank_batches": 2, "admm_epochs": 1, "finetune_epochs": 0},
    "vtp": {"sparse_epochs": 1, "finetune_epochs": 0},
    "nni": {"pruner": "taylor", "taylor_batches": 2},
}
# the same runs with a fine-tuning phase after export (strategies that have one)
FINETUNE: dict[str, dict[str, Any]] = {
    "magnitude": {"finetune_epochs": 1},
    "sero": {"reopt_epochs": 1},
    "gohsp": {"finetune_epochs": 1},
    "vtp": {"finetune_epochs": 1},
    "nni": {"finetune_epochs": 1},
}
STRATEGIES = sorted(plugins.available())


def tiny_trainer(seed: int) -> Trainer:
    return Trainer(TrainConfig(batch_size=16, lr=1e-3, seed=seed), synthetic_data(), device="cpu")


@functools.cache
def run(name: str, seed: int = 0, finetune: bool = False) -> tuple[SearchContext, SearchResult]:
    missing = plugins.missing_requirements(plugins.available()[name])
    if missing:
        pytest.skip(f"{name} needs an optional package: {'; '.join(missing)}")
    torch.manual_seed(seed)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model, constraints=Constraints(round_to=2, min_head_dims=2))
    target = 0.5 * ah.dense_cost(space).macs
    ctx = SearchContext(model, spec, space, target, seed=seed, trainer=tiny_trainer(seed))
    params = {**FAST.get(name, {}), **(FINETUNE.get(name, {}) if finetune else {})}
    strategy = plugins.get(name).from_dict(params)
    return ctx, strategy.search(ctx)


@pytest.mark.parametrize("name", STRATEGIES)
def test_subnet_validates_and_respects_the_budget(name: str) -> None:
    ctx, result = run(name)
    assert result.subnet.problems(ctx.space) == []
    assert ctx.target_macs is not None
    macs = ah.subnet_cost(ctx.space, result.subnet).macs
    assert macs <= ctx.target_macs * (1 + BUDGET_TOLERANCE)


@pytest.mark.parametrize("name", STRATEGIES)
def test_seed_deterministic(name: str) -> None:
    """Two runs with one seed decide the same subnet (for a strategy that fine-tunes, the
    second run is the fine-tuning one: its decision comes before the fine-tuning)."""
    first = run(name)[1]
    second = run(name, finetune=True)[1] if name in FINETUNE else run.__wrapped__(name)[1]
    assert first.subnet == second.subnet


@pytest.mark.parametrize("name", STRATEGIES)
def test_masked_equals_exported(name: str) -> None:
    ctx, result = run(name)
    model, subnet = result.model.eval(), result.subnet
    hooked = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m._forward_pre_hooks]
    assert hooked == [], "the strategy left masks attached to the model it returns"
    assert not result.fine_tuned
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), ah.Masks(model, ctx.space, subnet.to_keep(ctx.space)):
        masked = model(x)
    with torch.no_grad():
        exported = ah.slice_subnet(model, subnet, ctx.spec).eval()(x)
    assert (masked - exported).abs().max() <= 1e-4


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n in FINETUNE])
def test_fine_tuned_model_is_the_exported_subnet(name: str) -> None:
    ctx, result = run(name, finetune=True)
    assert result.fine_tuned
    assert result.subnet.problems(ctx.space) == []
    assert result.model.subnet == result.subnet
    params = sum(p.numel() for p in result.model.parameters())
    assert params == ah.subnet_cost(ctx.space, result.subnet).params
