"""The search space reads any supported timm ViT and enforces structural constraints."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.cost import count_macs
from automl_hiap.errors import UserError
from automl_hiap.models import ModelSpec
from automl_hiap.space import Constraints, Unit

from .conftest import TINY_KWARGS, tiny_spec


def test_reads_shapes_tokens_and_fixed_costs(tiny) -> None:
    _, _model, space = tiny
    assert space.depth == 2 and space.tokens == 17
    shape = space.layers[0]
    assert (shape.embed_dim, shape.num_heads, shape.head_dim, shape.mlp_hidden) == (32, 2, 16, 64)
    assert space.fixed_macs == 16 * 32 * 3 * 4 * 4 + 32 * 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(qk_norm=True), "qk/scale norms"),
        (dict(mlp_layer="swiglu"), r"blocks\[0\].mlp is timm.layers.mlp.SwiGLU, expected"),
        (dict(scale_mlp_norm=True), "a norm inside the MLP"),
        (dict(scale_attn_norm=True), "qk/scale norms"),
    ],
)
def test_unsupported_variants_are_named(overrides, message) -> None:
    from timm.layers import SwiGLU

    if overrides.get("mlp_layer") == "swiglu":
        overrides = dict(mlp_layer=SwiGLU)
    model = tiny_spec(**overrides).create()
    with pytest.raises(UserError, match=message):
        ah.SearchSpace.from_model(model)


def test_not_a_vit_is_rejected() -> None:
    with pytest.raises(UserError, match="expected a timm VisionTransformer"):
        ah.SearchSpace.from_model(torch.nn.Linear(2, 2))


def test_validate_enforces_unit_families_and_constraints(tiny) -> None:
    _, model, _ = tiny
    space = ah.SearchSpace.from_model(
        model,
        units=[Unit.HEAD, Unit.NEURON, Unit.V_DIM],
        constraints=Constraints(min_heads=1, min_head_dims=4, min_neuron_fraction=0.25, round_to=4),
    )
    full = tuple(range(16))
    ok = ah.Subnet(
        (
            ah.LayerKeep((ah.HeadKeep(1, full, tuple(range(8))),), tuple(range(16))),
            ah.LayerKeep(
                (ah.HeadKeep(0, full, full), ah.HeadKeep(1, full, full)), tuple(range(64))
            ),
        )
    )
    assert ok.problems(space) == []
    bad = {
        "qk dims removed but qk_dim is not searched": ah.Subnet(
            (ah.LayerKeep((ah.HeadKeep(0, tuple(range(8)), full),), tuple(range(64))), ok.layers[1])
        ),
        "attention branch removed but attn_block is not searched": ah.Subnet(
            (ah.LayerKeep((), tuple(range(64))), ok.layers[1])
        ),
        "keeps 6 v dims": ah.Subnet(
            (ah.LayerKeep((ah.HeadKeep(0, full, tuple(range(6))),), tuple(range(64))), ok.layers[1])
        ),
        "12 neurons kept": ah.Subnet(
            (ah.LayerKeep((ah.HeadKeep(0, full, full),), tuple(range(12))), ok.layers[1])
        ),
        "expected 2 layers": ah.Subnet(ok.layers[:1]),
    }
    for message, subnet in bad.items():
        problems = subnet.problems(space)
        assert any(message in p for p in problems), (message, problems)
        with pytest.raises(UserError):
            subnet.validate(space)


def test_subnet_json_round_trip_and_keep_round_trip(tiny, tmp_path) -> None:
    from automl_hiap.subnet import random_subnet

    _, _, space = tiny
    subnet = random_subnet(space, torch.Generator().manual_seed(5))
    subnet.save(tmp_path / "subnet.json")
    assert ah.Subnet.load(tmp_path / "subnet.json") == subnet
    assert ah.Subnet.from_keep(space, subnet.to_keep(space)) == subnet


def test_nearest_allowed_count_respects_rounding_and_minimum(tiny) -> None:
    _, model, _ = tiny
    space = ah.SearchSpace.from_model(model, constraints=Constraints(round_to=8, min_head_dims=8))
    assert space.nearest_allowed(13.0, 64, 8) == 16
    assert space.nearest_allowed(2.0, 64, 8) == 8
    assert space.nearest_allowed(63.0, 64, 8) == 64
    assert space.min_dims(0) == 8


SAM = ModelSpec(  # windowed attention over NHWC tokens, relative positions, a conv neck
    "samvit_base_patch16",
    dict(TINY_KWARGS, global_attn_indexes=[1], window_size=2),
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SAM, r"'samvit_base_patch16': blocks\[0\] is timm.models.vision_transformer_sam.Block"),
        (tiny_spec(block_fn="ResPostBlock"), r"blocks\[0\] is \S+ResPostBlock, expected"),
        (tiny_spec(block_fn="ParallelScalingBlock"), r"blocks\[0\]"),
        (tiny_spec(attn_layer="diff"), r"blocks\[0\].attn is \S+DiffAttention, expected"),
        (tiny_spec(mlp_layer="GluMlp"), r"blocks\[0\].mlp is \S+GluMlp, expected"),
    ],
    ids=["samvit", "post_norm", "parallel", "diff_attention", "glu_mlp"],
)
def test_blocks_other_than_timms_pre_norm_vit_block_are_refused(spec, message) -> None:
    """Slicing rebuilds timm's pre-norm Block: any other block kind (even one whose MACs
    happen to match, like the post-norm ResPostBlock) would export another function."""
    from timm import layers
    from timm.models import vision_transformer as vit

    kwargs = dict(spec.kwargs)
    if "block_fn" in kwargs:  # timm wants classes here
        kwargs["block_fn"] = getattr(vit, kwargs["block_fn"])
    if "mlp_layer" in kwargs:
        kwargs["mlp_layer"] = getattr(layers, kwargs["mlp_layer"])
    model = ModelSpec(spec.name, kwargs).create()
    with pytest.raises(UserError, match=message) as caught:
        ah.SearchSpace.from_model(model)
    assert "\n" not in str(caught.value)


def test_a_block_the_formula_does_not_describe_is_refused_with_both_counts() -> None:
    """Blocks of the supported kind over tokens the model does not declare (3 extra here): the
    traced MACs and the formula's disagree, and the model is refused naming both."""
    from timm.models.vision_transformer import VisionTransformer

    class ExtraTokens(VisionTransformer):
        def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
            x = super()._pos_embed(x)
            return torch.cat([x, x[:, :3]], dim=1)

    model = ExtraTokens(**TINY_KWARGS)
    traced = count_macs(17 + 3, 32, 32, 32, 64, 32, 32)
    formula = count_macs(17, 32, 32, 32, 64, 32, 32)
    with pytest.raises(UserError) as caught:
        ah.SearchSpace.from_model(model)
    assert str(caught.value) == (
        f"unsupported model ExtraTokens: blocks[0] traces to {traced:,} MACs but the block "
        f"formula over 17 tokens gives {formula:,} (its cost would be wrong)"
    )


def test_an_unsupported_model_fails_inspect_in_one_line_before_any_compute(
    tmp_path, capsys
) -> None:
    kwargs = ", ".join(f"{k}: {v}" for k, v in SAM.kwargs.items())
    space = tmp_path / "sam.yaml"
    space.write_text(
        f"model: {{name: {SAM.name}, kwargs: {{{kwargs}}}}}\n"
        "data: {format: synthetic, image_size: 16}\nbudget: 0.5\nstrategy: {name: magnitude}\n"
    )
    assert main(["inspect", "--space", str(space)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported model 'samvit_base_patch16'" in err[0], err
