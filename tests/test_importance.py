"""Importance criteria: hand-computed values, coupled groups, planted useless units."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap import importance, layout
from automl_hiap.space import Constraints, Unit
from automl_hiap.strategies.magnitude import MagnitudeParams, MagnitudeStrategy
from automl_hiap.strategy import SearchContext

from .conftest import synthetic_data, tiny_spec


@pytest.fixture
def setup() -> tuple[torch.nn.Module, ah.SearchSpace, list]:
    torch.manual_seed(0)
    model = tiny_spec().create().eval()
    space = ah.SearchSpace.from_model(model, units=list(Unit))
    data = synthetic_data(16)
    batches = [(data.tensors[0][i : i + 8], data.tensors[1][i : i + 8]) for i in (0, 8)]
    return model, space, batches


def _grads(model: torch.nn.Module, batches: list) -> list[dict[str, torch.Tensor]]:
    """Each batch's gradient of qkv/proj/fc1/fc2 in block 0, computed directly."""
    result = []
    for x, y in batches:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        block = model.blocks[0]
        result.append(
            {
                "qkv": block.attn.qkv.weight.grad.double().clone(),
                "qkv_b": block.attn.qkv.bias.grad.double().clone(),
                "proj": block.attn.proj.weight.grad.double().clone(),
                "fc1": block.mlp.fc1.weight.grad.double().clone(),
                "fc1_b": block.mlp.fc1.bias.grad.double().clone(),
                "fc2": block.mlp.fc2.weight.grad.double().clone(),
            }
        )
    model.zero_grad(set_to_none=True)
    return result


def _head0_and_neuron3(per_weight) -> tuple[float, float]:
    """Hand-written sums for head 0 (D=32, 2 heads of d=16) and neuron 3 of a tiny block."""
    qkv, qkv_b, proj, fc1, fc1_b, fc2 = per_weight
    rows = [p * 32 + j for p in range(3) for j in range(16)]  # q, k, v rows of head 0
    head = qkv[rows].sum() + qkv_b[rows].sum() + proj[:, :16].sum()
    neuron = fc1[3].sum() + fc1_b[3] + fc2[:, 3].sum()
    return float(head), float(neuron)


@pytest.mark.parametrize("criterion", ["energy", "taylor", "fisher", "gradsq"])
def test_each_criterion_matches_a_hand_computed_value(setup, criterion: str) -> None:
    model, space, batches = setup
    grads = _grads(model, batches)
    block = model.blocks[0]
    w = {
        "qkv": block.attn.qkv.weight.detach().double(),
        "qkv_b": block.attn.qkv.bias.detach().double(),
        "proj": block.attn.proj.weight.detach().double(),
        "fc1": block.mlp.fc1.weight.detach().double(),
        "fc1_b": block.mlp.fc1.bias.detach().double(),
        "fc2": block.mlp.fc2.weight.detach().double(),
    }
    keys = ("qkv", "qkv_b", "proj", "fc1", "fc1_b", "fc2")
    if criterion == "energy":
        per = [w[k] ** 2 for k in keys]
    elif criterion == "taylor":
        per = [(w[k] * sum(g[k] for g in grads) / len(grads)).abs() for k in keys]
    elif criterion == "fisher":
        per = [sum((w[k] * g[k]) ** 2 for g in grads) for k in keys]
    else:
        per = [sum(g[k] ** 2 for g in grads) for k in keys]
    head, neuron = _head0_and_neuron3(per)
    scores = importance.importance(model, space, criterion, batches, "none", "per_mac")  # type: ignore[arg-type]
    assert float(scores[0].head[0]) == pytest.approx(head, rel=1e-6)
    assert float(scores[0].neuron[3]) == pytest.approx(neuron, rel=1e-6)


def test_head_is_exactly_its_coupled_group(setup) -> None:
    """A head's score is ``layout.per_unit`` over everything a head owns."""
    model, space, batches = setup
    weights = importance.weight_scores(
        model, "fisher", importance.collect_gradients(model, batches)
    )
    scores = importance.unit_scores(space, weights, "none", "per_mac")
    for i, (shape, tensors) in enumerate(zip(space.layers, weights, strict=True)):
        parts = layout.per_unit(shape, tensors, [Unit.HEAD])[Unit.HEAD]
        assert torch.allclose(scores[i].head, sum(parts))


def test_a_weight_only_in_proj_columns_changes_the_head_score(setup) -> None:
    model, space, _ = setup
    before = importance.importance(model, space, "energy", normalize="none")
    with torch.no_grad():
        model.blocks[1].attn.proj.weight[5, 16 + 3] += 10.0  # head 1, v dim 3, proj column
    after = importance.importance(model, space, "energy", normalize="none")
    assert float(after[1].head[1]) > float(before[1].head[1]) + 50
    assert float(after[1].v[1, 3]) > float(before[1].v[1, 3]) + 50
    assert torch.equal(after[1].head[0], before[1].head[0])
    assert torch.equal(after[1].neuron, before[1].neuron)


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "energy"])
def test_planted_useless_units_score_lowest(setup, criterion: str) -> None:
    """A head whose proj columns are zero and a neuron whose fc2 column is zero change
    nothing: the removal criteria give them 0, the lowest score. (gradsq is left out on
    purpose: it measures sensitivity, and a zero column still has a gradient.)"""
    model, space, batches = setup
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, 16:] = 0  # head 1 writes nothing
        model.blocks[0].mlp.fc2.weight[:, 7] = 0  # neuron 7 writes nothing
        if criterion == "energy":  # energy sees only weights: shrink the rest of the group
            model.blocks[0].attn.qkv.weight[
                [p * 32 + 16 + j for p in range(3) for j in range(16)]
            ] *= 1e-3
            model.blocks[0].attn.qkv.bias.zero_()
            model.blocks[0].mlp.fc1.weight[7] *= 1e-3
            model.blocks[0].mlp.fc1.bias[7] = 0
    scores = importance.importance(model, space, criterion, batches, "none")  # type: ignore[arg-type]
    assert int(scores[0].head.argmin()) == 1
    assert int(scores[0].neuron.argmin()) == 7


def test_raw_tradeoff_scales_by_unit_macs(setup) -> None:
    model, space, _ = setup
    per_mac = importance.importance(model, space, "energy", normalize="none")
    raw = importance.importance(model, space, "energy", normalize="none", tradeoff="raw")
    macs = ah.cost.unit_macs(space.layers[0], space.tokens, Unit.NEURON)
    assert torch.allclose(raw[0].neuron, per_mac[0].neuron * macs)


def test_data_criteria_need_batches(setup) -> None:
    model, space, _ = setup
    with pytest.raises(ValueError, match="calibration"):
        importance.importance(model, space, "taylor")


def test_magnitude_strategy_criterion_param() -> None:
    torch.manual_seed(0)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(
        model, units=list(Unit), constraints=Constraints(round_to=2, min_head_dims=2)
    )
    target = 0.6 * ah.dense_cost(space).macs

    class Trainer:
        train_data = synthetic_data(64)

    ctx = SearchContext(model=model, spec=spec, space=space, target=target, trainer=Trainer())
    strategy = MagnitudeStrategy(MagnitudeParams(criterion="taylor", calibration_images=32))
    assert strategy.uses_trainer()
    subnet = strategy.search(ctx).subnet
    assert ah.subnet_cost(space, subnet).macs <= target
    assert strategy.search(ctx).subnet == subnet  # one seed, one subnet
    assert not MagnitudeStrategy().uses_trainer()
