"""One-shot magnitude pruning: budget, ranking by weight energy, determinism."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap.errors import UserError
from automl_hiap.space import Constraints, Unit
from automl_hiap.strategies.magnitude import MagnitudeStrategy, importance_scores
from automl_hiap.strategy import SearchContext

from .conftest import tiny_spec


def context(ratio: float | None, units=None) -> SearchContext:
    torch.manual_seed(0)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(
        model, units=units or list(Unit), constraints=Constraints(round_to=2, min_head_dims=2)
    )
    target = None if ratio is None else ratio * ah.dense_cost(space).macs
    return SearchContext(model=model, spec=spec, space=space, target=target)


@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_lands_within_three_percent_below_the_budget(ratio: float) -> None:
    ctx = context(ratio)
    result = MagnitudeStrategy().search(ctx)
    macs = ah.subnet_cost(ctx.space, result.subnet).macs
    assert ctx.target is not None
    assert 0.97 * ctx.target <= macs <= ctx.target


def test_low_energy_neurons_are_pruned_first() -> None:
    ctx = context(0.9, units=[Unit.NEURON])
    fc1 = ctx.model.blocks[1].mlp.fc1
    with torch.no_grad():
        fc1.weight[:10] *= 1e-3
        fc1.bias[:10] = 0
        ctx.model.blocks[1].mlp.fc2.weight[:, :10] *= 1e-3
    kept = MagnitudeStrategy().search(ctx).subnet.layers[1].neurons
    assert not set(range(10)) & set(kept)


def test_scores_are_additive_over_a_head() -> None:
    ctx = context(0.5)
    scores = importance_scores(ctx.model)
    for keep in scores:
        assert torch.allclose(keep.head, keep.qk.sum(1) + keep.v.sum(1))


def test_deterministic() -> None:
    assert (
        MagnitudeStrategy().search(context(0.6)).subnet
        == MagnitudeStrategy().search(context(0.6)).subnet
    )


def test_needs_a_budget() -> None:
    with pytest.raises(UserError, match="needs a budget"):
        MagnitudeStrategy().search(context(None))
