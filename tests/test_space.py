"""The search space reads any supported timm ViT and enforces structural constraints."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap.errors import UserError
from automl_hiap.space import Constraints, Unit

from .conftest import tiny_spec


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
        (dict(mlp_layer="swiglu"), "gated MLPs|fc1 and fc2"),
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
