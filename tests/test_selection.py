"""Scores -> a valid subnet under a MACs budget."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap.selection import select_to_budget
from automl_hiap.space import BlockKeep, Constraints, Unit

from .conftest import tiny_spec


def random_scores(space: ah.SearchSpace, seed: int) -> list[BlockKeep]:
    gen = torch.Generator().manual_seed(seed)
    return [
        BlockKeep(
            **{f: torch.rand(getattr(k, f).shape, generator=gen) for f in k.__dataclass_fields__}
        )
        for k in space.dense_keep()
    ]


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_spec(depth=3, embed_dim=48, num_heads=3).create()


@pytest.mark.parametrize("ratio", [0.9, 0.7, 0.5, 0.3])
@pytest.mark.parametrize("round_to", [1, 4])
def test_lands_just_under_the_budget_and_is_valid(model, ratio: float, round_to: int) -> None:
    space = ah.SearchSpace.from_model(
        model,
        units=[Unit.HEAD, Unit.FFN_BLOCK, Unit.QK_DIM, Unit.V_DIM, Unit.NEURON],
        constraints=Constraints(min_head_dims=4, min_neuron_fraction=0.1, round_to=round_to),
    )
    dense = ah.dense_cost(space).macs
    target = ratio * dense
    subnet = select_to_budget(space, random_scores(space, 0), target)
    assert subnet.problems(space) == []
    macs = ah.subnet_cost(space, subnet).macs
    assert macs <= target
    assert macs >= target - 0.05 * dense  # no needless over-pruning


def test_keeps_the_top_scored_units(model) -> None:
    space = ah.SearchSpace.from_model(model, units=[Unit.NEURON])
    hidden = space.layers[0].mlp_hidden
    scores = [BlockKeep(neuron=torch.arange(hidden, dtype=torch.float32)) for _ in space.layers]
    subnet = select_to_budget(space, scores, 0.8 * ah.dense_cost(space).macs)
    for layer in subnet.layers:
        kept = layer.neurons
        assert kept == tuple(range(hidden - len(kept), hidden))  # the highest scores survive


def test_units_saving_more_macs_go_first_at_equal_scores(model) -> None:
    # a v dim saves N·D (qkv row) + N² (AV) + N·D (proj column), an FFN neuron 2·N·D: at equal
    # scores the greedy (score lost per MAC saved) must take v dims first
    space = ah.SearchSpace.from_model(model, units=[Unit.V_DIM, Unit.NEURON])
    hidden = space.layers[0].mlp_hidden
    ones = [BlockKeep(v=torch.ones(3, 16), neuron=torch.ones(hidden)) for _ in space.layers]
    subnet = select_to_budget(space, ones, 0.95 * ah.dense_cost(space).macs)
    assert sum(len(layer.neurons) for layer in subnet.layers) == 3 * hidden
    assert sum(len(h.v) for layer in subnet.layers for h in layer.heads) < 3 * 3 * 16


def test_unscored_and_unsearched_families_are_kept_whole(model) -> None:
    space = ah.SearchSpace.from_model(model, units=[Unit.HEAD, Unit.NEURON])
    hidden = space.layers[0].mlp_hidden
    scores = [BlockKeep(neuron=torch.rand(hidden)) for _ in space.layers]  # heads unscored
    subnet = select_to_budget(space, scores, 0.7 * ah.dense_cost(space).macs)
    assert all(len(layer.heads) == 3 for layer in subnet.layers)


def test_whole_branches_go_when_block_units_are_searched(model) -> None:
    space = ah.SearchSpace.from_model(
        model,
        units=[Unit.ATTN_BLOCK, Unit.FFN_BLOCK, Unit.HEAD, Unit.NEURON],
        constraints=Constraints(min_neuron_fraction=0.5),
    )
    scores = random_scores(space, 1)
    scores[1].neuron = scores[1].neuron * 1e-6  # layer 1's FFN is worthless
    subnet = select_to_budget(space, scores, 0.5 * ah.dense_cost(space).macs)
    assert not subnet.layers[1].has_mlp


def test_an_unreachable_budget_is_an_error(model) -> None:
    space = ah.SearchSpace.from_model(model, units=[Unit.V_DIM])
    with pytest.raises(ValueError, match="smallest allowed subnet"):
        select_to_budget(space, random_scores(space, 0), 0.2 * ah.dense_cost(space).macs)
