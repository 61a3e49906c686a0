"""The core invariant: masked model == exported model, for any subnet and ViT variant; and
exported models round-trip through arch JSON + safetensors in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import automl_hiap as ah
from automl_hiap.model_files import ARCH_FILE, WEIGHTS_FILE
from automl_hiap.space import Constraints
from automl_hiap.subnet import random_subnet

from .conftest import tiny_spec

VARIANTS = {
    "vit": tiny_spec(),
    "deit_distilled": tiny_spec("deit_tiny_distilled_patch16_224"),
    "no_class_token": tiny_spec(class_token=False, global_pool="avg"),
    "layer_scale_no_qkv_bias": tiny_spec(init_values=0.1, qkv_bias=False),
    "three_heads_deeper": tiny_spec(depth=3, embed_dim=48, num_heads=3),
}
MODELS = {}


def model_for(variant: str) -> tuple[ah.ModelSpec, torch.nn.Module, ah.SearchSpace]:
    if variant not in MODELS:
        torch.manual_seed(1)
        spec = VARIANTS[variant]
        model = spec.create().eval()
        with torch.no_grad():  # non-trivial biases and layer scales, so coupling errors show
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        MODELS[variant] = (spec, model, ah.SearchSpace.from_model(model))
    return MODELS[variant]


def masked_logits(model, space, subnet, x):
    with ah.Masks(model, space, subnet.to_keep(space)), torch.no_grad():
        return model(x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    seed=st.integers(0, 2**31 - 1),
    low=st.floats(0.05, 1.0),
    round_to=st.sampled_from([1, 2, 4]),
)
def test_masked_model_equals_exported_model(
    variant: str, seed: int, low: float, round_to: int
) -> None:
    spec, model, space = model_for(variant)
    space = ah.SearchSpace.from_model(model, constraints=Constraints(round_to=round_to))
    subnet = random_subnet(space, torch.Generator().manual_seed(seed), keep_low=low)
    assert subnet.problems(space) == []
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    exported = ah.slice_subnet(model, subnet, spec).eval()
    with torch.no_grad():
        pruned = exported(x)
    assert (masked_logits(model, space, subnet, x) - pruned).abs().max() <= 1e-4
    assert sum(p.numel() for p in exported.parameters()) == ah.subnet_cost(space, subnet).params


def test_extreme_subnets_one_head_one_dim_and_removed_branches() -> None:
    spec, model, space = model_for("three_heads_deeper")
    layers = (
        ah.LayerKeep(heads=(ah.HeadKeep(2, (5,), (0,)),), neurons=(7,)),
        ah.LayerKeep(heads=(), neurons=tuple(range(96))),  # attention branch removed
        ah.LayerKeep(
            heads=(ah.HeadKeep(0, (1, 2), (3,)), ah.HeadKeep(1, (0,), (4, 5, 6))), neurons=()
        ),
    )
    subnet = ah.Subnet(layers).validate(space)
    x = torch.randn(2, 3, 16, 16)
    exported = ah.slice_subnet(model, subnet, spec).eval()
    with torch.no_grad():
        assert (masked_logits(model, space, subnet, x) - exported(x)).abs().max() <= 1e-4
    assert exported.blocks[1].attn is None and exported.blocks[2].mlp is None
    assert exported.blocks[0].attn.qkv.weight.shape == (1 + 1 + 1, 48)


def test_export_keeps_the_original_softmax_scale() -> None:
    spec, model, space = model_for("vit")
    subnet = random_subnet(space, torch.Generator().manual_seed(0), keep_low=0.3, keep_high=0.6)
    exported = ah.slice_subnet(model, subnet, spec)
    head_dim = space.layers[0].head_dim
    scales = {b.attn.scale for b in exported.blocks if b.attn is not None}
    assert scales == {head_dim**-0.5}


def test_export_does_not_touch_the_source_model() -> None:
    spec, model, space = model_for("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ah.slice_subnet(model, random_subnet(space, torch.Generator().manual_seed(4)), spec)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_and_load_in_a_fresh_process(tmp_path: Path) -> None:
    spec, model, space = model_for("deit_distilled")
    subnet = random_subnet(space, torch.Generator().manual_seed(7), keep_low=0.3)
    exported = ah.slice_subnet(model, subnet, spec).eval()
    out = ah.save(exported, tmp_path / "model")
    x = torch.randn(2, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(exported(x), tmp_path / "expected.pt")
    assert sorted(p.name for p in out.iterdir()) == sorted([ARCH_FILE, WEIGHTS_FILE])
    arch = json.loads((out / ARCH_FILE).read_text())
    assert arch["timm_model"] == spec.name and arch["subnet"] == subnet.to_dict()
    with safe_open(str(out / WEIGHTS_FILE), "pt") as f:  # plain tensors, no pickled objects
        assert set(f.keys()) == set(exported.state_dict())
    code = f"""
        import torch, automl_hiap
        model = automl_hiap.load({str(out)!r})
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            assert (model(x) - expected).abs().max() <= 1e-6
        assert type(model.blocks[0]).__name__ == "PrunedBlock"
        print("ok")
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_load_rejects_a_folder_without_an_export(tmp_path: Path) -> None:
    with pytest.raises(ah.UserError, match="not an exported model"):
        ah.load(tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_round_trips_through_the_validating_loader(
    variant: str, tmp_path: Path
) -> None:
    """What ``architecture()`` writes for each ViT variant passes the arch.json schema and the
    timm keyword allowlist, and the rebuilt model (built on the meta device, then given the
    file's tensors) computes what the saved one did; an fp16 file loads as the fp32 model."""
    spec, model, space = model_for(variant)
    subnet = random_subnet(space, torch.Generator().manual_seed(3), keep_low=0.3)
    exported = ah.slice_subnet(model, subnet, spec).eval()
    x = torch.randn(2, 3, 16, 16)
    loaded = ah.load(ah.save(exported, tmp_path / "model"))
    assert loaded.model_spec == spec and loaded.subnet == subnet
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    with torch.no_grad():
        assert torch.equal(loaded(x), exported(x))
    half = ah.load(ah.save(exported.half(), tmp_path / "half"))
    assert {p.dtype for p in half.parameters()} == {torch.float32}
