"""Checks that need CUDA (marker ``gpu``: skipped without it; ``bench/gpu_check.py`` runs them on
a lent GPU). The CPU suite covers placement with a stand-in device (tests/test_placement.py);
these check what only a GPU can: the real device, its kernels and its precision modes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import automl_hiap as ah
from automl_hiap.config import TrainConfig, load_config
from automl_hiap.loading import device_batches
from automl_hiap.measure import throughput
from automl_hiap.placement import Placement, set_tf32
from automl_hiap.search import run_search
from automl_hiap.subnet import random_subnet
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """Plain fp32 matmuls (TF32 rounds to ~1e-3, above the 1e-4 exactness bound)."""
    set_tf32(False)
    yield
    set_tf32(True)


def test_a_search_runs_on_the_gpu_with_a_teacher(tmp_path: Path) -> None:
    config = load_config(
        "test_vit.yaml",
        ["strategy.name=hiap", "strategy.params={epochs: 1}", "train.distill={alpha: 0.5}"],
    )
    report = run_search(config, tmp_path / "out", progress=False, measure_batch=16)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pruned"]["images_per_s"] > 0 and report.metrics.speedup is not None
    model = ah.load(tmp_path / "out" / "model", device="cuda")
    assert next(model.parameters()).is_cuda


def test_masked_equals_exported_on_the_gpu(exact_fp32: None) -> None:
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    for seed in range(5):
        torch.manual_seed(seed)
        model = spec.create().eval().to(CUDA)
        space = ah.SearchSpace.from_model(model)
        subnet = random_subnet(space, torch.Generator().manual_seed(seed))
        pruned = ah.slice_subnet(model, subnet, spec).eval()
        x = torch.randn(4, 3, 16, 16, device=CUDA)
        with torch.no_grad(), ah.Masks(model, space, subnet.to_keep(space)):
            masked = model(x)
        with torch.no_grad():
            exported = pruned(x)
        assert float((masked - exported).abs().max()) <= 1e-4, seed


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
def test_heterogeneous_heads_run_on_the_fused_kernels(backend: SDPBackend) -> None:
    """Only the named kernel is allowed: SDPA raises if a layer's shapes fall off it."""
    spec = tiny_spec(depth=3, embed_dim=96, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model)
    subnet = random_subnet(space, torch.Generator().manual_seed(1), keep_low=0.3)
    pruned = ah.slice_subnet(model, subnet, spec).eval().to(CUDA)
    x = torch.randn(8, 3, 16, 16, device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = pruned(x).float()
        with sdpa_kernel([backend]):
            fused = pruned(x).float()
    assert torch.allclose(fused, reference, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_the_gpu(amp: str) -> None:
    config = TrainConfig(batch_size=16, lr=1e-3, amp=amp)  # type: ignore[arg-type]
    trainer = Trainer(config, synthetic_data(64), synthetic_data(32))
    assert trainer.device.type == "cuda" and trainer.placement.amp == amp
    model = tiny_spec().create()
    result = trainer.fit(model, epochs=2, phase="p")
    assert next(model.parameters()).is_cuda and 0.0 <= result.last_metrics["val_top1"] <= 1.0


def test_batches_are_copied_ahead_on_a_side_stream() -> None:
    placement = Placement.resolve(TrainConfig(), "cuda")
    assert placement.pin_memory
    batches = [(torch.randn(4, 3).pin_memory(), torch.arange(4).pin_memory()) for _ in range(3)]
    moved = list(device_batches(batches, placement))
    assert len(moved) == 3
    for (x, y), (dx, dy) in zip(batches, moved, strict=True):
        assert dx.is_cuda and torch.equal(dx.cpu(), x) and torch.equal(dy.cpu(), y)


def test_throughput_is_timed_with_cuda_events() -> None:
    placement = Placement.resolve(TrainConfig(), "cuda")
    speed = throughput(
        {"a": tiny_spec().create(), "b": tiny_spec().create()},
        16,
        32,
        repeats=3,
        min_seconds=0.05,
        placement=placement,
    )
    assert all(v > 0 for v in speed.values())
