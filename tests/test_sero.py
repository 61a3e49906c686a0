"""SERo: cubic schedule, one global threshold, budget solve, the persisting |W|-scaled update,
and re-optimization as a fresh phase on the compressed model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

import automl_hiap as ah
from automl_hiap.config import TrainConfig
from automl_hiap.space import Constraints
from automl_hiap.strategies.sero import (
    SERoParams,
    SERoStrategy,
    _Exploration,
    sero_masks,
    units_for_budget,
)
from automl_hiap.strategy import SearchContext
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec


def setup(round_to: int = 1) -> tuple[Any, torch.nn.Module, ah.SearchSpace]:
    torch.manual_seed(0)
    spec = tiny_spec(depth=2, embed_dim=48, num_heads=3)
    model = spec.create()
    space = ah.SearchSpace.from_model(
        model, constraints=Constraints(round_to=round_to, min_head_dims=1)
    )
    return spec, model, space


def scores_for(
    space: ah.SearchSpace, fill: dict[str, list[float]]
) -> list[dict[str, torch.Tensor]]:
    """Per layer constant scores per family, plus a tiny index ramp to break ties."""
    layers = []
    for i, shape in enumerate(space.layers):
        sizes = {
            "qk": (shape.num_heads, shape.head_dim),
            "v": (shape.num_heads, shape.head_dim),
            "neuron": (shape.mlp_hidden,),
        }
        layers.append(
            {
                f: fill[f][i] + 1e-6 * torch.arange(torch.Size(s).numel()).double().reshape(s)
                for f, s in sizes.items()
            }
        )
    return layers


def test_cubic_schedule_starts_at_zero_and_reaches_p_at_the_last_epoch() -> None:
    _, model, space = setup()
    params = SERoParams(explore_epochs=4, warmup_epochs=1, mask_every=3)
    hooks = _Exploration(model, space, 1e9, params, steps=10)
    hooks.masks.remove()
    assert hooks.schedule(10) == 0.0  # the first mask, after the warm-up epoch
    assert hooks.schedule(20) == pytest.approx(1 - 0.5**3)
    assert hooks.schedule(30) == 1.0 and hooks.schedule(39) == 1.0  # the whole last epoch
    values = [hooks.schedule(s) for s in range(10, 40)]
    assert values == sorted(values)
    # one pruning epoch only: the last mask update (step 19) reaches P
    single = _Exploration(model, space, 1e9, SERoParams(explore_epochs=2, mask_every=3), 10)
    single.masks.remove()
    assert single.schedule(19) == 1.0 and single.schedule(16) < 1.0


def test_one_global_threshold_across_unit_types_and_layers() -> None:
    _, _, space = setup()
    # layer 0: low q/k, high v and neurons; layer 1: everything high
    scores = scores_for(space, {"qk": [0.1, 5.0], "v": [3.0, 5.0], "neuron": [2.0, 5.0]})
    qk_units = space.layers[0].num_heads * space.layers[0].head_dim
    keeps = sero_masks(space, scores, pruned=qk_units - 3)
    assert keeps[0].qk is not None and keeps[0].v is not None and keeps[0].neuron is not None
    assert keeps[0].v.all() and keeps[0].neuron.all()  # above the threshold
    assert keeps[1].qk.all() and keeps[1].v.all() and keeps[1].neuron.all()  # type: ignore[union-attr]
    # one width for every head: the floor of the mean count above the threshold (3 / 3 = 1)
    assert keeps[0].qk.sum(1).tolist() == [1.0, 1.0, 1.0]
    # the next units to go are the neurons (2.0 < 3.0 < 5.0), not layer 1's
    more = sero_masks(space, scores, pruned=qk_units + 10)
    assert more[0].neuron.sum() == space.layers[0].mlp_hidden - 10  # type: ignore[union-attr]
    assert more[1].neuron.all()  # type: ignore[union-attr]


def test_counts_respect_round_to_and_the_budget_solve_is_minimal() -> None:
    _, _, space = setup(round_to=4)
    torch.manual_seed(1)
    scores = [
        {f: torch.rand(s).double() for f, s in (("qk", (3, 16)), ("v", (3, 16)), ("neuron", (96,)))}
        for _ in space.layers
    ]
    target = 0.5 * ah.dense_cost(space).macs
    pruned = units_for_budget(space, scores, target)
    keeps = sero_masks(space, scores, pruned)
    subnet = ah.Subnet.from_keep(space, keeps)
    assert subnet.problems(space) == []
    assert ah.subnet_cost(space, subnet).macs <= target
    assert float(ah.expected_macs(space, sero_masks(space, scores, pruned - 1))) > target


def test_the_scaled_update_persists_across_epochs_and_evaluations() -> None:
    """Eq. 5 every step of every epoch, although the trainer evaluates after each epoch (the
    released code's evaluate() switched it off after the first)."""
    _, model, space = setup()
    data = synthetic_data(32)
    trainer = Trainer(TrainConfig(batch_size=16, lr=1e-3, grad_clip=None), data, data, device="cpu")
    seen: list[bool] = []

    class Spy(_Exploration):
        def on_after_backward(self, step: int) -> None:
            weight = self.model.blocks[1].mlp.fc2.weight
            raw = weight.grad.clone()
            super().on_after_backward(step)
            seen.append(torch.allclose(weight.grad, raw * weight.detach().abs()))

    params = SERoParams(explore_epochs=3, warmup_epochs=1, mask_every=1, reopt_epochs=0)
    hooks = Spy(model, space, 0.7 * ah.dense_cost(space).macs, params, trainer.steps_per_epoch())
    trainer.fit(model, 3, phase="sero_explore", hooks=hooks)
    hooks.masks.remove()
    assert len(seen) == 6 and all(seen)

    plain: list[bool] = []
    _, model, _ = setup()
    off = params.model_copy(update={"scaled_update": False})

    class Plain(_Exploration):
        def on_after_backward(self, step: int) -> None:
            weight = self.model.blocks[0].attn.qkv.weight
            raw = weight.grad.clone()
            super().on_after_backward(step)
            plain.append(torch.equal(weight.grad, raw))

    hooks = Plain(model, space, 0.7 * ah.dense_cost(space).macs, off, trainer.steps_per_epoch())
    trainer.fit(model, 3, phase="sero_plain", hooks=hooks)
    hooks.masks.remove()
    assert plain and all(plain)


class RecordingTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    def fit(self, model, epochs, phase, hooks=None, lr=None):  # type: ignore[no-untyped-def]
        self.calls.append(dict(model=model, epochs=epochs, phase=phase, hooks=hooks, lr=lr))
        return super().fit(model, epochs, phase, hooks, lr)


def test_reoptimization_is_a_fresh_phase_on_the_compressed_model() -> None:
    spec, model, space = setup(round_to=2)
    trainer = RecordingTrainer(TrainConfig(batch_size=16, lr=1e-3), synthetic_data(), device="cpu")
    target = 0.6 * ah.dense_cost(space).macs
    ctx = SearchContext(model, spec, space, target, trainer=trainer)
    params = SERoParams(
        explore_epochs=2, warmup_epochs=1, mask_every=2, reopt_epochs=1, reopt_lr=3e-4
    )
    result = SERoStrategy(params).run(ctx)  # the core runs the re-optimization phase
    explore, reopt = trainer.calls
    assert explore["phase"] == "sero_explore" and explore["model"] is model
    # re-optimization: its own phase (a new AdamW and schedule), no masks or |W| scaling,
    # on the physically compressed model, at its own lr
    assert reopt["phase"] == "sero_reopt" and reopt["hooks"] is None and reopt["lr"] == 3e-4
    assert reopt["model"] is result.model and reopt["epochs"] == 1
    assert result.model.subnet == result.subnet
    n_params = sum(p.numel() for p in result.model.parameters())
    assert n_params == ah.subnet_cost(space, result.subnet).params
    # both budget views are reported
    assert 0 < result.metrics["unit_sparsity"] < 1
    assert result.metrics["macs_ratio"] <= 0.6


def test_warmup_must_leave_epochs_to_explore() -> None:
    with pytest.raises(ValidationError, match="warmup_epochs"):
        SERoStrategy.from_dict({"explore_epochs": 2, "warmup_epochs": 2})


def test_gradient_importance_is_the_mean_absolute_gradient_of_each_units_rows() -> None:
    """SERo's Eq. 1-3 by hand: q/k dims ½(mean|∂L/∂W_q row| + mean|∂L/∂W_k row|), v dims and
    neurons the mean |gradient| of their qkv / fc1 row."""
    from automl_hiap.strategies.sero import gradient_importance

    torch.manual_seed(0)
    model = tiny_spec().create()
    logits = model(torch.randn(4, 3, 16, 16))
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    scores = gradient_importance(model)
    for block, got in zip(model.blocks, scores, strict=True):
        heads, d = block.attn.num_heads, block.attn.head_dim
        rows = block.attn.qkv.weight.grad.abs().mean(1).double()
        q, k, v = (rows[p * heads * d : (p + 1) * heads * d].reshape(heads, d) for p in range(3))
        torch.testing.assert_close(got["qk"], 0.5 * (q + k))
        torch.testing.assert_close(got["v"], v)
        torch.testing.assert_close(got["neuron"], block.mlp.fc1.weight.grad.abs().mean(1).double())
