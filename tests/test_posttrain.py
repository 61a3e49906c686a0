"""Post-training pruning (Kwon et al. 2022): the Fisher of the masks, selection of useless
units, rearrangement, reconstruction, label-free mode, and its input errors."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import automl_hiap as ah
from automl_hiap import layout
from automl_hiap.config import TrainConfig
from automl_hiap.cost import unit_macs
from automl_hiap.errors import UserError
from automl_hiap.space import UNIT_FIELD, BlockKeep, Constraints, Unit
from automl_hiap.strategies import posttrain as pt
from automl_hiap.strategy import SearchContext
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec

CPU = torch.device("cpu")


def make_context(
    ratio: float = 0.5,
    units: list[Unit] | None = None,
    constraints: Constraints | None = None,
    data: torch.utils.data.Dataset[Any] | None = None,
    depth: int = 3,
    setup: Any = None,
) -> SearchContext:
    torch.manual_seed(0)
    spec = tiny_spec(depth=depth)
    model = spec.create().eval()
    if setup is not None:
        setup(model)
    space = ah.SearchSpace.from_model(
        model, units or list(Unit), constraints or Constraints(round_to=2, min_head_dims=2)
    )
    trainer = Trainer(TrainConfig(batch_size=16, seed=0), data or synthetic_data(), device="cpu")
    target = ratio * ah.dense_cost(space).macs
    return SearchContext(model, spec, space, target, seed=0, trainer=trainer)


def strategy(**params: Any) -> pt.PostTrainStrategy:
    return pt.PostTrainStrategy(pt.PostTrainParams(**{"calibration_images": 64, **params}))


def calibrate(
    ctx: SearchContext,
    count: int = 64,
    labels: bool = True,
    batch: int = 16,
    keep_grads: bool = False,
) -> pt.Calibration:
    loader = pt.calibration_loader(ctx.trainer.train_data, count, batch, seed=0)
    return pt.collect_fisher(ctx.model, ctx.space, loader, labels, 0, keep_grads, CPU)


# ---------------------------------------------------------------- Fisher
def per_image_mask_fisher(
    ctx: SearchContext, images: torch.Tensor, labels: torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    """By hand: one image at a time, the core's masks with keep values of ones that require
    grad, the cross-entropy's gradient w.r.t. each keep value, squared, summed over images."""
    space = ctx.space
    total: list[dict[str, torch.Tensor]] = [{} for _ in space.layers]
    for x, y in zip(images, labels, strict=True):
        keeps = [
            BlockKeep(
                **{f: v.detach().clone().double().requires_grad_(True) for f, v in vars(k).items()}
            )
            for k in space.dense_keep()
        ]
        with ah.Masks(ctx.model, space, keeps):
            loss = F.cross_entropy(ctx.model(x[None]), y[None])
        for layer, keep in enumerate(keeps):
            for name, value in vars(keep).items():
                (grad,) = torch.autograd.grad(loss, value, retain_graph=True)
                total[layer][name] = total[layer].get(name, 0) + grad.square()
    return total


def test_fisher_equals_the_hand_computed_per_image_mask_gradients() -> None:
    ctx = make_context()
    calibration = calibrate(ctx, count=6, batch=4)  # batches of 4 and 2 images
    loader = pt.calibration_loader(ctx.trainer.train_data, 6, 6, seed=0)
    images, labels = next(iter(loader))
    expected = per_image_mask_fisher(ctx, images, labels)
    for layer, fisher in enumerate(calibration.fisher):
        assert set(fisher) == set(Unit)
        for unit, value in fisher.items():
            reference = expected[layer][UNIT_FIELD[unit]]
            assert value.shape == reference.shape
            assert torch.allclose(value, reference, rtol=1e-4, atol=1e-9), (layer, unit)
    assert all(float(f[Unit.NEURON].sum()) > 0 for f in calibration.fisher)
    assert calibration.stream.shape == (6, ctx.space.tokens, 32)
    assert torch.allclose(calibration.logits, ctx.model(images), atol=1e-5)


def test_unit_gradients_are_the_adjoint_of_expand() -> None:
    ctx = make_context()
    shape = ctx.space.layers[0]
    for unit, where in layout.GATES.items():
        length = layout.axis_length(shape, where.linear, where.axis)
        grads = torch.randn(3, length, dtype=torch.float64)
        values = torch.ones(layout.unit_shape(shape, unit), dtype=torch.float64, requires_grad=True)
        expanded = layout.expand(shape, unit, where, values)
        for i in range(3):
            (reference,) = torch.autograd.grad(
                (grads[i] * expanded).sum(), values, retain_graph=True
            )
            assert torch.allclose(pt.unit_gradients(shape, unit, grads)[i], reference), unit


def test_label_free_fisher_is_the_labeled_one_with_labels_drawn_from_the_dense_model() -> None:
    ctx = make_context()
    free = calibrate(ctx, count=8, batch=4, labels=False)
    sampler = torch.Generator().manual_seed(0)  # the seed collect_fisher was given
    drawn = []
    loader = pt.calibration_loader(ctx.trainer.train_data, 8, 4, seed=0)
    with torch.no_grad():
        for images, _ in loader:
            p = torch.softmax(ctx.model(images).double(), -1)
            drawn.append(torch.multinomial(p, 1, generator=sampler).squeeze(1))
    images = torch.cat([b[0] for b in loader])
    data = torch.utils.data.TensorDataset(images, torch.cat(drawn))
    relabeled = pt.collect_fisher(
        ctx.model, ctx.space, torch.utils.data.DataLoader(data, 4), True, 0, False, CPU
    )
    for a, b in zip(free.fisher, relabeled.fisher, strict=True):
        for unit in a:
            assert torch.allclose(a[unit], b[unit]), unit


# ---------------------------------------------------------------- selection
def test_a_planted_useless_head_and_neuron_are_pruned_first() -> None:
    def plant(model: nn.Module) -> None:
        blocks = layout.blocks(model)
        with torch.no_grad():
            blocks[0].attn.proj.weight[:, 16:32] = 0  # head 1 of layer 0 writes nothing
            blocks[1].mlp.fc2.weight[:, 5] = 0  # neuron 5 of layer 1 writes nothing

    units = [Unit.HEAD, Unit.NEURON]
    ctx = make_context(units=units, constraints=Constraints(round_to=1), setup=plant)
    shape, tokens = ctx.space.layers[0], ctx.space.tokens
    saved = unit_macs(shape, tokens, Unit.HEAD) + unit_macs(shape, tokens, Unit.NEURON)
    ctx.target = ah.dense_cost(ctx.space).macs - saved
    subnet = strategy(reconstruct="none").search(ctx).subnet
    assert [h.index for h in subnet.layers[0].heads] == [0]
    assert 5 not in subnet.layers[1].neurons
    kept = sum(len(layer.neurons) + len(layer.heads) for layer in subnet.layers)
    assert kept == sum(s.mlp_hidden + s.num_heads for s in ctx.space.layers) - 2


def test_swap_search_lowers_the_block_fisher_estimate() -> None:
    fisher = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.5]], dtype=torch.float64)
    pruned, swaps = pt.swap_search(fisher, [0, 1], max_swaps=10)  # the diagonal's choice: 3.8
    estimate = fisher[pruned][:, pruned].sum()
    assert len(pruned) == 2 and swaps == 1 and float(estimate) == pytest.approx(2.5)
    assert pt.swap_search(fisher, [0, 1], max_swaps=0) == ([0, 1], 0)


def test_rearrangement_keeps_every_count_and_the_macs() -> None:
    ctx = make_context(units=[Unit.HEAD, Unit.V_DIM, Unit.NEURON, Unit.FFN_BLOCK])
    calibration = calibrate(ctx, keep_grads=True)
    assert ctx.target is not None
    subnet = ah.Subnet.from_keep(ctx.space, ctx.space.dense_keep())
    from automl_hiap.selection import select_to_budget

    subnet = select_to_budget(ctx.space, pt.fisher_scores(ctx.space, calibration), ctx.target)
    moved, swaps = pt.rearrange(ctx.space, subnet, calibration, max_swaps=100)
    assert swaps > 0 and moved != subnet
    assert ah.subnet_cost(ctx.space, moved).macs == ah.subnet_cost(ctx.space, subnet).macs
    for a, b in zip(subnet.layers, moved.layers, strict=True):
        assert len(a.neurons) == len(b.neurons)
        assert [len(h.v) for h in a.heads] == [len(h.v) for h in b.heads]


# ---------------------------------------------------------------- reconstruction
def block_outputs(model: nn.Module, images: torch.Tensor, masks: Any = None) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda _m, _a, out: outputs.append(out))
        for b in layout.blocks(model)
    ]
    try:
        with torch.no_grad():
            if masks is None:
                model(images)
            else:
                with masks:
                    model(images)
    finally:
        for h in handles:
            h.remove()
    return outputs


def test_reconstruction_reduces_every_blocks_output_error() -> None:
    ctx = make_context(ratio=0.5)
    plain = strategy(reconstruct="none").search(ctx)
    images = torch.cat([b[0] for b in pt.calibration_loader(ctx.trainer.train_data, 64, 64, 0)])
    dense = block_outputs(ctx.model, images)
    keeps = plain.subnet.to_keep(ctx.space)
    before = block_outputs(ctx.model, images, ah.Masks(ctx.model, ctx.space, keeps))
    rebuilt = strategy().search(make_context(ratio=0.5))
    assert rebuilt.subnet == plain.subnet
    after = block_outputs(rebuilt.model, images, ah.Masks(rebuilt.model, ctx.space, keeps))
    for layer, (d, b, a) in enumerate(zip(dense, before, after, strict=True)):
        assert float((a - d).square().sum()) < float((b - d).square().sum()), layer
    assert rebuilt.metrics["posttrain_refit_error_ratio"] < 1.0
    assert rebuilt.metrics["posttrain_damped_systems"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"reconstruct": "scales"},
        {"refit_head": True},
        {"rearrange": True, "calibration_images": 64, "reconstruct": "weights"},
    ],
)
def test_masked_equals_exported_after_reconstruction(params: dict[str, Any]) -> None:
    units = [Unit.ATTN_BLOCK, Unit.HEAD, Unit.FFN_BLOCK, Unit.QK_DIM, Unit.V_DIM, Unit.NEURON]
    ctx = make_context(units=units)
    original = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    result = strategy(**params).search(ctx)
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, original[k])]
    assert any("proj" in k or "fc2" in k for k in changed)
    assert all("proj" in k or "fc2" in k or k.startswith("head") for k in changed)
    model = result.model.eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), ah.Masks(model, ctx.space, result.subnet.to_keep(ctx.space)):
        masked = model(x)
    with torch.no_grad():
        exported = ah.slice_subnet(model, result.subnet, ctx.spec).eval()(x)
    assert float((masked - exported).abs().max()) <= 1e-4


# ---------------------------------------------------------------- label-free
def test_label_free_mode_needs_no_labels() -> None:
    images = torch.utils.data.TensorDataset(synthetic_data().tensors[0])  # images only
    ctx = make_context(data=images)
    result = strategy(labels=False).search(ctx)
    assert ctx.target is not None
    assert ah.subnet_cost(ctx.space, result.subnet).macs <= ctx.target
    assert result.metrics["posttrain_refit_error_ratio"] < 1.0
    with pytest.raises(UserError, match=r"strategy.params.labels: .* no labels; set labels: false"):
        strategy().search(make_context(data=images))


# ---------------------------------------------------------------- bad input
def test_too_few_calibration_images_name_the_key_and_the_minimum() -> None:
    # widest re-fitted Linear: fc2 with 64 inputs + bias, 17 tokens per image -> 4 images
    with pytest.raises(UserError, match=r"calibration_images: 3 images are too few; at least 4"):
        strategy(calibration_images=3).search(make_context())
    strategy(calibration_images=4, reconstruct="weights").search(make_context())
    # rearranging a layer's 64 neurons by their Fisher block needs 64 images
    with pytest.raises(UserError, match=r"calibration_images: 32 .* at least 64 .* neuron"):
        strategy(calibration_images=32, rearrange=True).search(make_context())
    with pytest.raises(UserError, match=r"calibration_images: 65 requested, .* only 64"):
        strategy(calibration_images=65).search(make_context())


def test_a_singular_system_is_damped_and_reported_never_nan() -> None:
    def kill_a_neuron(model: nn.Module) -> None:
        fc1 = layout.blocks(model)[0].mlp.fc1
        with torch.no_grad():  # GELU(-1e4) = 0: the neuron's activations are all 0
            fc1.weight[3] = 0
            fc1.bias[3] = -1e4

    ctx = make_context(setup=kill_a_neuron)
    calibration = calibrate(ctx)
    dense = ah.Subnet.from_keep(ctx.space, ctx.space.dense_keep())  # keeps the dead neuron
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = pt.reconstruct(ctx.model, ctx.space, dense, calibration, damping=0.0)
    assert report.damped >= 1
    assert any(
        "blocks.0.mlp.fc2" in str(w.message) and "singular" in str(w.message) for w in caught
    )
    assert all(torch.isfinite(p).all() for p in ctx.model.parameters())
    solved = pt.damped_solve(
        torch.zeros(3, 3, dtype=torch.float64),
        torch.zeros(3, 2, dtype=torch.float64),
        torch.full((3, 2), 7.0, dtype=torch.float64),
        0.0,
    )
    assert solved.escalated and solved.solution is not None
    assert torch.allclose(solved.solution, torch.full((3, 2), 7.0, dtype=torch.float64))
