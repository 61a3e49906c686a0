"""Scores -> a valid subnet under a MACs budget."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap.selection import (
    _next_count,
    bisect_to_budget,
    select_to_budget,
    survivors,
    top_kept,
)
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


def macs(space: ah.SearchSpace, keeps: list[BlockKeep]) -> float:
    return float(ah.expected_macs(space, keeps))


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


# ---------------------------------------------------------------- threshold selection
def neuron_family(space: ah.SearchSpace, seed: int) -> tuple[list[tuple[int, int]], int]:
    """A global removal order over every (layer, neuron): nested masks by construction."""
    order = [(i, k) for i, s in enumerate(space.layers) for k in range(s.mlp_hidden)]
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[p] for p in perm], len(order)


def keeps_without(space: ah.SearchSpace, removed: list[tuple[int, int]]) -> list[BlockKeep]:
    keeps = [BlockKeep(neuron=torch.ones(s.mlp_hidden, dtype=torch.float64)) for s in space.layers]
    for i, k in removed:
        keeps[i].neuron[k] = 0.0  # type: ignore[index]
    return keeps


@pytest.mark.parametrize("ratio", [0.95, 0.8, 0.6])
def test_bisection_keeps_the_largest_nested_set_under_the_target(model, ratio: float) -> None:
    space = ah.SearchSpace.from_model(model, units=[Unit.NEURON])
    order, total = neuron_family(space, 0)
    target = ratio * ah.dense_cost(space).macs
    calls: list[int] = []

    def keeps_at(pruned: int) -> list[BlockKeep]:
        calls.append(pruned)
        return keeps_without(space, order[:pruned])

    fit = bisect_to_budget(space, keeps_at, target, total)
    assert len(calls) <= 1 + total.bit_length()  # a bisection, not a scan
    # the exact answer, by a linear scan
    least = next(
        p for p in range(total + 1) if macs(space, keeps_without(space, order[:p])) <= target
    )
    assert fit.feasible and fit.value == least
    assert fit.macs == macs(space, fit.keeps) <= target
    assert macs(space, keeps_without(space, order[: least - 1])) > target  # one more unit: over
    assert all(
        torch.equal(a.neuron, b.neuron) for a, b in zip(fit.keeps, keeps_at(least), strict=True)
    )


def test_real_bisection_halves_the_ratio_and_reports_an_unreachable_target(model) -> None:
    space = ah.SearchSpace.from_model(model, units=[Unit.NEURON])
    order, total = neuron_family(space, 1)

    def keeps_at(ratio: float) -> list[BlockKeep]:
        return keeps_without(space, order[: int(ratio * total)])

    target = 0.7 * ah.dense_cost(space).macs
    fit = bisect_to_budget(space, keeps_at, target, 0.99, 14)
    assert fit.feasible and fit.macs <= target
    assert macs(space, keeps_at(fit.value - 0.99 / 2**14)) > target  # the least, to 2**-14
    smallest = macs(space, keeps_at(0.99))
    unreachable = bisect_to_budget(space, keeps_at, smallest - 1, 0.99, 14)
    assert not unreachable.feasible and unreachable.value == 0.99
    assert unreachable.macs == smallest
    integer = bisect_to_budget(space, lambda p: keeps_without(space, order[:p]), 0.0, total)
    assert not integer.feasible and integer.value == total


def test_survivors_remove_the_lowest_of_all_tensors_together() -> None:
    a = torch.tensor([[0.5, 0.1], [0.9, 0.3]])
    b = torch.tensor([0.2, 0.3, 0.05])
    alive_a, alive_b = survivors([a, b], 4)
    assert alive_a.shape == a.shape and alive_b.shape == b.shape
    # removed: 0.05, 0.1, 0.2 and the first 0.3 (a's: ties go to the earlier entry)
    assert alive_a.tolist() == [[True, False], [True, False]]
    assert alive_b.tolist() == [False, True, False]
    assert all(t.all() for t in survivors([a, b], 0))


def test_top_kept_keeps_the_highest_scores_ties_to_the_lower_index() -> None:
    keep = top_kept(torch.tensor([0.2, 0.7, 0.2, 0.9, 0.1]), 3)
    assert keep.dtype == torch.float64 and keep.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------- allowed kept counts
def allowed_set(full: int, minimum: int, step: int) -> list[int]:
    return sorted({full, minimum} | {k for k in range(0, full, step) if k >= minimum})


@pytest.mark.parametrize("round_to", [1, 3, 4, 8])
def test_allowed_kept_is_the_nearest_member_of_the_allowed_set(round_to: int) -> None:
    space = ah.SearchSpace(layers=(), tokens=1, fixed_macs=0, fixed_params=0, round_to=round_to)
    for full in (1, 7, 16, 20):
        for minimum in sorted({0, 1, round_to, min(5, full), full}):
            if minimum > full:
                continue
            allowed = allowed_set(full, minimum, round_to)
            for count in [c / 2 for c in range(-2, 2 * full + 4)]:
                below = [a for a in allowed if a <= count]
                above = [a for a in allowed if a >= count]
                down = space.allowed_kept(count, full, minimum)
                up = space.allowed_kept(count, full, minimum, "up")
                near = space.allowed_kept(count, full, minimum, "nearest")
                assert down == (max(below) if below else minimum)
                assert up == (min(above) if above else full)
                assert near == min(allowed, key=lambda a: (abs(a - count), -a))
                if count == int(count):
                    assert space.allowed_count(int(count), full, minimum) == (count in allowed)


def test_allowed_kept_keeps_the_rules_it_replaced() -> None:
    """The floor of SERo/VTP, the round-up of the minimums and the greedy's next step."""
    for round_to in (1, 2, 4, 8):
        space = ah.SearchSpace(layers=(), tokens=1, fixed_macs=0, fixed_params=0, round_to=round_to)
        for full in (4, 16, 30):
            for minimum in {1, min(round_to, full), full}:
                for count in range(0, full + 2):
                    floor = full if count >= full else max(count // round_to * round_to, minimum)
                    assert space.allowed_kept(count, full, minimum) == floor
                    rounded = full if count >= full else min(-(-count // round_to) * round_to, full)
                    assert space.allowed_kept(count, full, rounding="up") == rounded
                    smaller = (count - 1) // round_to * round_to
                    step = smaller if smaller >= max(minimum, 1) else None
                    if minimum in (full, min(round_to, full)) and 0 < count <= full:
                        assert _next_count(space, count, minimum, allow_zero=False) == step
