"""Every registered strategy must pass these (the conformance suite, like Optuna's samplers):
its subnet validates against the space, respects the budget, is seed-deterministic, and the
masked model equals the exported one."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap import registry
from automl_hiap.config import Constraints
from automl_hiap.strategy import SearchContext

from .conftest import tiny_spec

BUDGET_TOLERANCE = 0.03
# strategies that train need the runtime trainer; they join this suite when it exists
ONE_SHOT = [name for name, cls in registry.available().items() if name == "magnitude"]


def run(name: str, seed: int = 0) -> tuple[SearchContext, ah.Subnet, torch.nn.Module]:
    torch.manual_seed(seed)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model, constraints=Constraints(round_to=2, min_head_dims=2))
    ctx = SearchContext(model, spec, space, 0.5 * ah.dense_cost(space).macs, seed=seed)
    result = registry.get(name)().search(ctx)
    return ctx, result.subnet, result.model


@pytest.mark.parametrize("name", ONE_SHOT)
def test_subnet_validates_and_respects_the_budget(name: str) -> None:
    ctx, subnet, _ = run(name)
    assert subnet.problems(ctx.space) == []
    assert ctx.target_macs is not None
    assert ah.subnet_cost(ctx.space, subnet).macs <= ctx.target_macs * (1 + BUDGET_TOLERANCE)


@pytest.mark.parametrize("name", ONE_SHOT)
def test_seed_deterministic(name: str) -> None:
    assert run(name, seed=3)[1] == run(name, seed=3)[1]


@pytest.mark.parametrize("name", ONE_SHOT)
def test_masked_equals_exported(name: str) -> None:
    ctx, subnet, model = run(name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), ah.Masks(model, ctx.space, subnet.to_keep(ctx.space)):
        masked = model(x)
    with torch.no_grad():
        exported = ah.export(model, subnet, ctx.spec).eval()(x)
    assert (masked - exported).abs().max() <= 1e-4
