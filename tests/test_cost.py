"""Analytical MACs / params: the published dense figures, FlopCounterMode on exported subnets,
and the differentiable expectation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import automl_hiap as ah
from automl_hiap.cost import block_macs, count_macs, expected_macs, expected_params, unit_macs
from automl_hiap.models import ModelSpec
from automl_hiap.pruned_vit import PrunedAttention
from automl_hiap.space import UNIT_FIELD, BlockKeep, Unit
from automl_hiap.subnet import random_subnet

from .conftest import tiny_spec


@pytest.mark.parametrize(
    ("name", "gmacs", "mparams"),
    [
        ("deit_tiny_patch16_224", 1.254, 5.72),
        ("deit_small_patch16_224", 4.599, 22.05),
        ("deit_base_patch16_224", 17.564, 86.57),
    ],
)
def test_dense_deit_matches_the_published_convention(
    name: str, gmacs: float, mparams: float
) -> None:
    model = ModelSpec(name).create()
    cost = ah.dense_cost(ah.SearchSpace.from_model(model))
    assert cost.macs / 1e9 == pytest.approx(gmacs, rel=0.005)
    assert cost.params / 1e6 == pytest.approx(mparams, rel=0.005)
    assert cost.params == sum(p.numel() for p in model.parameters())


def test_cifar_vit_tiny_is_182_85_mmacs() -> None:
    spec = ModelSpec(
        "vit_tiny_patch16_224", dict(img_size=32, patch_size=4, depth=6, num_classes=10)
    )
    cost = ah.dense_cost(ah.SearchSpace.from_model(spec.create()))
    assert cost.macs / 1e6 == pytest.approx(182.85, abs=0.01)


def counted_macs(model: torch.nn.Module, image_size: int) -> float:
    for module in model.modules():
        if isinstance(module, PrunedAttention) or hasattr(module, "fused_attn"):
            module.fused_attn = False  # the explicit path is visible to the counter
    # grad mode on: under no_grad the counter's module tracker trips on the MAP head's latent
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, image_size, image_size))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("seed", range(6))
def test_analytical_macs_match_flop_counter_on_exported_subnets(seed: int) -> None:
    spec = ModelSpec(
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, depth=3, embed_dim=48, num_heads=3, num_classes=10),
    )
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model)  # every unit kind, input columns included
    subnet = random_subnet(space, torch.Generator().manual_seed(seed))
    exported = ah.slice_subnet(model, subnet, spec).eval()
    analytical = ah.subnet_cost(space, subnet)
    assert counted_macs(exported, 32) == pytest.approx(analytical.macs, rel=0.005)
    assert analytical.params == sum(p.numel() for p in exported.parameters())


def test_dense_flop_counter_agrees_for_deit_small() -> None:
    model = ModelSpec("deit_small_patch16_224").create().eval()
    space = ah.SearchSpace.from_model(model)
    assert counted_macs(model, 224) == pytest.approx(ah.dense_cost(space).macs, rel=0.005)


def test_expected_cost_at_saturated_probabilities_is_the_subnet_cost(tiny) -> None:
    _spec, _model, space = tiny
    subnet = random_subnet(space, torch.Generator().manual_seed(3))
    hard = subnet.to_keep(space, dtype=torch.float64)
    saturated = [
        BlockKeep(**{f: torch.sigmoid((getattr(k, f) - 0.5) * 80) for f in k.__dataclass_fields__})
        for k in hard
    ]
    exact = ah.subnet_cost(space, subnet)
    assert float(expected_macs(space, saturated)) == pytest.approx(exact.macs, rel=1e-9)
    assert float(expected_params(space, saturated)) == pytest.approx(exact.params, rel=1e-6)


def test_expected_cost_is_the_mean_cost_of_sampled_subnets(tiny) -> None:
    _, _, space = tiny
    gen = torch.Generator().manual_seed(0)
    probs = [
        BlockKeep(
            **{
                f: torch.rand(getattr(k, f).shape, generator=gen, dtype=torch.float64)
                for f in k.__dataclass_fields__
            }
        )
        for k in space.dense_keep()
    ]
    samples = 4000
    total = torch.zeros((), dtype=torch.float64)
    for _ in range(samples):
        drawn = [
            BlockKeep(
                **{
                    f: (
                        torch.rand(getattr(p, f).shape, generator=gen, dtype=torch.float64)
                        < getattr(p, f)
                    ).double()
                    for f in p.__dataclass_fields__
                }
            )
            for p in probs
        ]
        total += expected_macs(space, drawn)
    assert float(total / samples) == pytest.approx(float(expected_macs(space, probs)), rel=0.01)


def test_closing_a_macro_gate_removes_its_micro_units_cost(tiny) -> None:
    _, _, space = tiny
    shape = space.layers[0]
    keep = BlockKeep().filled(shape)
    keep.head[0] = 0.0
    without_head = float(block_macs(shape, space.tokens, keep))
    keep.v[0] = 0.0  # the closed head's v dims no longer matter
    keep.qk[0] = 0.0
    assert float(block_macs(shape, space.tokens, keep)) == without_head
    keep = BlockKeep().filled(shape)
    keep.ffn.fill_(0.0)
    no_ffn = float(block_macs(shape, space.tokens, keep))
    keep.neuron.zero_()
    assert float(block_macs(shape, space.tokens, keep)) == no_ffn


def test_cost_gradient_reaches_every_unit_kind(tiny) -> None:
    _, _, space = tiny
    logits = [
        BlockKeep(
            **{
                f: torch.zeros_like(getattr(k, f), requires_grad=True)
                for f in k.__dataclass_fields__
            }
        )
        for k in space.dense_keep()
    ]
    probs = [
        BlockKeep(**{f: torch.sigmoid(getattr(k, f)) for f in k.__dataclass_fields__})
        for k in logits
    ]
    (expected_macs(space, probs) + expected_params(space, probs)).backward()
    for keep in logits:
        for name in keep.__dataclass_fields__:
            grad = getattr(keep, name).grad
            assert grad is not None and bool((grad > 0).all()), name


def test_fixed_cost_counts_distilled_heads_and_prefix_tokens() -> None:
    spec = tiny_spec("deit_tiny_distilled_patch16_224")
    model = spec.create()
    space = ah.SearchSpace.from_model(model)
    assert space.tokens == 16 + 2
    assert ah.dense_cost(space).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("seed", range(4))
def test_the_count_formula_is_the_block_formula(tiny, seed: int) -> None:
    """Integer counts (the greedy selection's) and keep tensors give the same MACs."""
    _, _, space = tiny
    subnet = random_subnet(space, torch.Generator().manual_seed(seed))
    for shape, layer, keep in zip(
        space.layers, subnet.layers, subnet.to_keep(space, torch.float64), strict=True
    ):
        counts = count_macs(
            space.tokens,
            shape.embed_dim,
            sum(len(h.qk) for h in layer.heads),
            sum(len(h.v) for h in layer.heads),
            len(layer.neurons),
            shape.embed_dim if layer.attn_in is None else len(layer.attn_in),
            shape.embed_dim if layer.mlp_in is None else len(layer.mlp_in),
        )
        assert isinstance(counts, int)
        assert counts == float(block_macs(shape, space.tokens, keep))


def test_unit_macs_is_what_removing_one_unit_saves(tiny) -> None:
    _, _, space = tiny
    shape, n = space.layers[0], space.tokens
    d, hd = shape.embed_dim, shape.head_dim
    dense = float(block_macs(shape, n, BlockKeep().filled(shape)))
    for unit in Unit:
        keep = BlockKeep().filled(shape, like=torch.ones((), dtype=torch.float64))
        getattr(keep, UNIT_FIELD[unit]).view(-1)[0] = 0.0  # the first unit of this kind
        saved = dense - float(block_macs(shape, n, keep))
        assert unit_macs(shape, n, unit) == saved, unit
    # by hand: a v dim is its qkv row, its AV column and its proj column; a neuron 2·N·D
    assert unit_macs(shape, n, Unit.V_DIM) == n * d + n * n + n * d
    assert unit_macs(shape, n, Unit.QK_DIM) == 2 * n * d + n * n
    assert unit_macs(shape, n, Unit.NEURON) == 2 * n * d
    assert unit_macs(shape, n, Unit.HEAD) == hd * (4 * n * d + 2 * n * n)
    assert unit_macs(shape, n, Unit.ATTN_IN) == n * 3 * shape.num_heads * hd


# Models ``from_model`` accepts beyond the plain ViT, each costed exactly: a MAP (SigLIP-style
# attention-pool) head with and without a class token, register tokens, a hybrid ResNet stem
EXACT_VARIANTS = {
    "map": tiny_spec(global_pool="map", class_token=False),
    "map_with_class_token": tiny_spec(global_pool="map"),
    "register_tokens": tiny_spec(reg_tokens=3),
    "hybrid_resnet_stem": ModelSpec(
        "vit_tiny_r_s16_p8_224",
        dict(img_size=64, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2.0, num_classes=10),
    ),
}


@pytest.mark.parametrize("variant", sorted(EXACT_VARIANTS))
def test_accepted_variants_are_costed_exactly_dense_and_pruned(variant: str, tmp_path) -> None:
    spec = EXACT_VARIANTS[variant]
    torch.manual_seed(0)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model)
    size = model.patch_embed.img_size[0]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    subnet = random_subnet(space, torch.Generator().manual_seed(2), keep_low=0.3)
    exported = ah.slice_subnet(model, subnet, spec).eval()
    with ah.Masks(model, space, subnet.to_keep(space)), torch.no_grad():
        masked = model(x)
    with torch.no_grad():  # the pool head / stem travel intact: the same function
        assert (exported(x) - masked).abs().max() <= 1e-4
        ah.save(exported, tmp_path)
        assert (ah.load(tmp_path).eval()(x) - masked).abs().max() <= 1e-4
    # exact, not approximately: the counter on a real CPU forward (not the meta trace)
    assert counted_macs(model, size) == ah.dense_cost(space).macs
    assert counted_macs(exported, size) == ah.subnet_cost(space, subnet).macs
    assert sum(p.numel() for p in exported.parameters()) == ah.subnet_cost(space, subnet).params


def test_fixed_cost_is_what_the_blocks_leave_out() -> None:
    """The MAP head's q, kv, attention, proj and MLP are in the fixed cost, by hand."""
    plain = ah.SearchSpace.from_model(tiny_spec(class_token=False, global_pool="avg").create())
    pooled = ah.SearchSpace.from_model(tiny_spec(class_token=False, global_pool="map").create())
    n, d, hidden = 16, 32, 64  # 16 patch tokens; the pool's MLP has the blocks' mlp_ratio 2
    head = d * d + n * 2 * d * d + 2 * n * d + d * d + 2 * d * hidden  # one latent query
    assert pooled.fixed_macs - plain.fixed_macs == head
    assert plain.fixed_macs == 16 * 32 * 3 * 4 * 4 + 32 * 10


def test_tracing_reads_no_weights_and_leaves_the_model_as_it_was() -> None:
    model = tiny_spec(global_pool="map").create().train()
    model.patch_embed.eval()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = ah.SearchSpace.from_model(model)
    assert model.training and not model.patch_embed.training and model.blocks[0].training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.device("meta"):
        on_meta = tiny_spec(global_pool="map").create()
    assert ah.SearchSpace.from_model(on_meta) == real
