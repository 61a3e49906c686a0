"""GOHSP (reconstructed): the Markov-chain head ranking, the head-contribution Gram matrix, the
structured projection, and ADMM pulling the weights onto the sparse structure."""

from __future__ import annotations

import copy

import pytest
import torch

import automl_hiap as ah
from automl_hiap import importance
from automl_hiap.config import TrainConfig
from automl_hiap.selection import select_to_budget
from automl_hiap.space import Constraints, Unit
from automl_hiap.strategies import gohsp
from automl_hiap.strategies.gohsp import (
    _ADMM,
    GOHSPParams,
    GOHSPStrategy,
    block_weights,
    head_contribution_gram,
    head_importance,
    project,
    stationary_distribution,
    structure_masks,
    transition_matrix,
    weigh_heads,
)
from automl_hiap.strategy import SearchContext
from automl_hiap.subnet import Subnet, random_subnet
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec


def test_stationary_distribution_equals_power_iteration() -> None:
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(6, 6, generator=generator, dtype=torch.float64) ** 3
    p = p / p.sum(1, keepdim=True)
    pi = stationary_distribution(p)
    state = torch.full((6,), 1 / 6, dtype=torch.float64)
    for _ in range(2000):
        state = state @ p
    assert torch.allclose(pi, state, atol=1e-12)
    assert torch.allclose(pi @ p, pi, atol=1e-12) and pi.sum() == pytest.approx(1.0)


def test_undirected_graph_without_damping_ranks_by_weighted_degree() -> None:
    w = torch.tensor([[0, 1, 2, 0], [1, 0, 3, 1], [2, 3, 0, 1], [0, 1, 1, 0]], dtype=torch.float64)
    pi = stationary_distribution(transition_matrix(w, damping=0.0))
    assert torch.allclose(pi, w.sum(1) / w.sum(), atol=1e-12)
    damped = transition_matrix(w, damping=0.15)
    assert torch.allclose(damped.sum(1), torch.ones(4, dtype=torch.float64))


def test_direction_redundant_heads_rank_last_with_dissimilarity_edges() -> None:
    # heads 0 and 1 write the same direction; head 2 writes an orthogonal one
    c = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    gram = c @ c.T
    distinct = head_importance(gram, "dissimilarity", 0.15)
    assert distinct.argmax() == 2 and distinct[0] == pytest.approx(float(distinct[1]))
    central = head_importance(gram, "similarity", 0.15)
    assert central.argmin() == 2


def test_gram_of_head_contributions_matches_the_explicit_computation() -> None:
    torch.manual_seed(0)
    model = tiny_spec(depth=2, embed_dim=48, num_heads=3).create().eval()
    images = torch.randn(4, 3, 16, 16)
    grams = head_contribution_gram(model, [images[:2], images[2:]], torch.device("cpu"))
    inputs: list[torch.Tensor] = []
    handle = model.blocks[1].attn.proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    x = inputs[0].double().reshape(4, -1, 3, 16)  # (B, N, H, d): per-head outputs
    w = model.blocks[1].attn.proj.weight.double().reshape(48, 3, 16)
    contributions = torch.einsum("bnhd,ehd->hbne", x, w).reshape(3, -1)
    assert torch.allclose(grams[1], contributions @ contributions.T, rtol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_projection_keeps_exactly_the_requested_structure(seed: int) -> None:
    torch.manual_seed(seed)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    units = [u for u in ah.Unit if u not in (ah.Unit.ATTN_IN, ah.Unit.MLP_IN)]
    space = ah.SearchSpace.from_model(model, units, Constraints(round_to=2, min_head_dims=2))
    subnet = random_subnet(space, torch.Generator().manual_seed(seed))
    weights = block_weights(model)
    masks = structure_masks(space, subnet)
    keeps = subnet.to_keep(space)
    for w, m, k, shape in zip(weights, masks, keeps, space.layers, strict=True):
        e = k.effective(shape)
        assert m["qkv_w"].shape == w["qkv_w"].shape and m["fc2_w"].shape == w["fc2_w"].shape
        assert torch.equal(m["qkv_b"], torch.cat([e.qk.flatten(), e.qk.flatten(), e.v.flatten()]))
        assert torch.equal(m["fc1_b"], e.neuron.double())
    projected = copy.deepcopy(model)
    with torch.no_grad():
        for w, m in zip(block_weights(projected), masks, strict=True):
            for key, t in w.items():
                t.mul_(m[key].to(t))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        exported = ah.slice_subnet(model, subnet, spec).eval()(x)
        assert (projected(x) - exported).abs().max() <= 1e-5  # zeroed weights == sliced model


def test_project_meets_the_budget_and_zeroes_what_it_prunes() -> None:
    torch.manual_seed(0)
    model = tiny_spec(depth=3, embed_dim=48, num_heads=3).create()
    space = ah.SearchSpace.from_model(model, constraints=Constraints(round_to=2, min_head_dims=2))
    heads = [torch.full((3,), 1 / 3, dtype=torch.float64) for _ in range(3)]
    target = 0.5 * ah.dense_cost(space).macs
    projected, subnet = project(space, block_weights(model), heads, target)
    assert subnet.problems(space) == [] and ah.subnet_cost(space, subnet).macs <= target
    for p, w, m in zip(
        projected, block_weights(model), structure_masks(space, subnet), strict=True
    ):
        for key, t in p.items():
            assert torch.equal(t, w[key].detach() * m[key].to(t))
    # heads ranked lowest by the graph are removed first
    heads[1] = torch.tensor([0.98, 0.01, 0.01], dtype=torch.float64)
    _, ranked = project(space, block_weights(model), heads, 0.8 * ah.dense_cost(space).macs)
    kept = [h.index for h in ranked.layers[1].heads]
    assert 0 in kept and len(kept) < 3


def test_admm_pulls_the_weights_onto_the_sparse_structure() -> None:
    """‖W − Z‖/‖W‖ after the same training, with and without the quadratic pull."""

    def gap_after_training(rho: float) -> float:
        torch.manual_seed(0)
        model = tiny_spec(depth=2, embed_dim=32, num_heads=2).create()
        space = ah.SearchSpace.from_model(model)
        heads = [torch.full((2,), 0.5, dtype=torch.float64) for _ in range(2)]
        trainer = Trainer(TrainConfig(batch_size=16, lr=1e-2), synthetic_data(32), device="cpu")
        target = 0.5 * ah.dense_cost(space).macs
        params = GOHSPParams(rho=rho, rho_growth=1.0)
        hooks = _ADMM(model, space, heads, target, params, trainer.steps_per_epoch())
        trainer.fit(model, 3, phase="admm", hooks=hooks)
        return hooks.metrics()["admm_gap"]

    assert gap_after_training(1.0) < 0.5 * gap_after_training(1e-8)


def test_a_data_driven_hard_prune_is_the_core_criterion_weighed_by_the_head_ranking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planted = torch.tensor([0.01, 0.01, 0.49, 0.49], dtype=torch.float64)  # a skewed ranking
    monkeypatch.setattr(gohsp, "head_importance", lambda gram, edges, damping: planted)
    torch.manual_seed(0)
    spec = tiny_spec(depth=2, embed_dim=48, num_heads=4)
    model = spec.create()
    units = [Unit.HEAD, Unit.QK_DIM, Unit.V_DIM, Unit.NEURON]  # GOHSP's: no input columns
    space = ah.SearchSpace.from_model(model, units)
    trainer = Trainer(TrainConfig(batch_size=16), synthetic_data(64), device="cpu")
    target = 0.3 * ah.dense_cost(space).macs

    def hard_prune(criterion: str) -> Subnet:
        params = GOHSPParams(rank_batches=2, admm_epochs=0, finetune_epochs=0)
        params = params.model_copy(update={"prune_criterion": criterion})
        context = SearchContext(copy.deepcopy(model), spec, space, target, seed=0, trainer=trainer)
        return GOHSPStrategy(params).search(context).subnet

    heads = [planted] * space.depth
    data = importance.calibration_batches(trainer.train_data, 512, 32, 0)
    scores = importance.importance(model, space, "taylor", data, "none")
    expected = select_to_budget(space, weigh_heads(scores, heads, space), target)
    assert hard_prune("taylor") == expected
    assert hard_prune("energy") != expected  # the criterion decided
