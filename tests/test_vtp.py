"""VTP: the ℓ1 term drives the scores, the global threshold meets the budget (and is the
tightest one), folding keeps the sparse-trained function, fine-tuning runs without ℓ1."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import automl_hiap as ah
from automl_hiap.config import TrainConfig
from automl_hiap.space import BlockKeep, Constraints
from automl_hiap.strategies.vtp import (
    VTPParams,
    VTPStrategy,
    _SparseTraining,
    fold_scores,
    threshold_masks,
    threshold_to_budget,
)
from automl_hiap.strategy import SearchContext
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec


def setup(round_to: int = 1) -> tuple[Any, torch.nn.Module, ah.SearchSpace]:
    torch.manual_seed(0)
    spec = tiny_spec(depth=2, embed_dim=32, num_heads=2)
    model = spec.create()
    space = ah.SearchSpace.from_model(model, constraints=Constraints(round_to=round_to))
    return spec, model, space


def random_scores(space: ah.SearchSpace, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "attn_in": torch.rand(s.embed_dim, generator=generator),
            "v": torch.rand(s.num_heads, s.head_dim, generator=generator),
            "mlp_in": torch.rand(s.embed_dim, generator=generator),
            "neuron": torch.rand(s.mlp_hidden, generator=generator),
        }
        for s in space.layers
    ]


def test_l1_term_drives_the_scores_down() -> None:
    def mean_score(l1: float) -> float:
        _, model, space = setup()
        trainer = Trainer(TrainConfig(batch_size=16, lr=1e-2), synthetic_data(32), device="cpu")
        hooks = _SparseTraining(model, space, VTPParams(l1=l1))
        loss = hooks.extra_loss(torch.zeros(1), torch.zeros(1))
        total = sum(float(p.detach().abs().sum()) for p in hooks.parameters())
        assert loss is None if l1 == 0 else float(loss.detach()) == pytest.approx(l1 * total)
        trainer.fit(model, 2, phase="vtp", hooks=hooks)
        hooks.masks.remove()
        return hooks.metrics()["score_mean"]

    assert mean_score(1.0) < mean_score(0.0) - 0.02


def test_global_threshold_meets_the_budget_and_is_the_tightest() -> None:
    _, _, space = setup()
    scores = random_scores(space)
    target = 0.6 * ah.dense_cost(space).macs
    subnet = threshold_to_budget(space, scores, target)
    assert subnet.problems(space) == []
    assert ah.subnet_cost(space, subnet).macs <= target
    # one global threshold: every pruned entry scores below every kept one
    kept, pruned = [], []
    for keep, s in zip(subnet.to_keep(space), scores, strict=True):
        for family in ("attn_in", "v", "mlp_in", "neuron"):
            mask, values = getattr(keep, family).flatten(), s[family].flatten()
            kept += values[mask > 0].tolist()
            pruned += values[mask == 0].tolist()
    assert pruned and max(pruned) < min(kept)
    # keeping one more entry would break the budget
    count = len(pruned)
    assert float(ah.expected_macs(space, threshold_masks(space, scores, count - 1))) > target


def test_counts_are_rounded_to_allowed_values() -> None:
    _, _, space = setup(round_to=4)
    subnet = threshold_to_budget(space, random_scores(space, 1), 0.5 * ah.dense_cost(space).macs)
    assert subnet.problems(space) == []
    for layer in subnet.layers:
        assert all(len(h.v) % 4 == 0 for h in layer.heads) and len(layer.neurons) % 4 == 0


def test_folding_keeps_the_sparse_trained_function() -> None:
    spec, model, space = setup()
    model.eval()
    scores = random_scores(space, 2)
    subnet = threshold_to_budget(space, scores, 0.5 * ah.dense_cost(space).macs)
    hard = subnet.to_keep(space)
    # the scored model with the pruned scores set to 0 ...
    soft = [
        BlockKeep(**{f: s[f] * getattr(k, f) for f in s}) for s, k in zip(scores, hard, strict=True)
    ]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), ah.Masks(model, space, soft):
        expected = model(x)
    # ... is what the exported model computes once the surviving scores are folded in
    folded = copy.deepcopy(model)
    fold_scores(folded, scores)
    with torch.no_grad():
        got = ah.slice_subnet(folded, subnet, spec).eval()(x)
    assert (got - expected).abs().max() <= 1e-5


class RecordingTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    def fit(self, model, epochs, phase, hooks=None, lr=None):  # type: ignore[no-untyped-def]
        self.calls.append(dict(model=model, phase=phase, hooks=hooks, lr=lr))
        return super().fit(model, epochs, phase, hooks, lr)


def test_fine_tuning_runs_on_the_exported_model_without_the_l1_term() -> None:
    spec, model, space = setup(round_to=2)
    trainer = RecordingTrainer(
        TrainConfig(batch_size=16, lr=1e-3), synthetic_data(32), device="cpu"
    )
    ctx = SearchContext(model, spec, space, 0.5 * ah.dense_cost(space).macs, trainer=trainer)
    result = VTPStrategy(VTPParams(sparse_epochs=1, finetune_epochs=1, l1=0.1)).run(ctx)
    sparse, finetune = trainer.calls
    assert sparse["phase"] == "vtp_sparse" and sparse["hooks"].extra_loss(torch.zeros(1), None) > 0
    assert finetune["phase"] == "vtp_finetune" and finetune["hooks"] is None
    assert finetune["model"] is result.model and result.model.subnet == result.subnet
