"""Placement (#16): every model, teacher, batch, gate and score of a search lives on the
trainer's device, and the pieces that decide it (AMP, loaders, compile, timing) behave.

The device tests run on CPU-only machines through :mod:`automl_hiap.fake_device`: a stand-in
accelerator whose tensors refuse to mix with host tensors, as CUDA's do. On the code before
#16 the search test fails there with "Expected all tensors to be on the same device" (the
dense model was never moved; the teacher was set after the trainer had moved its own).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_pre_hook

import automl_hiap as ah
from automl_hiap import plugins
from automl_hiap.config import TrainConfig, load_config
from automl_hiap.fake_device import DEVICE, FakeAccelerator, OnDevice
from automl_hiap.measure import throughput
from automl_hiap.placement import Placement
from automl_hiap.search import run_search
from automl_hiap.subnet import random_subnet
from automl_hiap.trainer import Trainer

from .conftest import synthetic_data, tiny_spec

STRATEGIES = [
    name for name, cls in plugins.available().items() if not plugins.missing_requirements(cls)
]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Ops on the stand-in device run through Python on two threads (the caller's and
    autograd's device thread); two intra-op pools on a shared 2-core machine thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class DeviceAudit:
    """A forward pre-hook on every module: a module with weights holds them on the device
    and is fed device tensors (models, teachers, calibration and evaluation batches)."""

    def __init__(self) -> None:
        self.forwards = 0
        self.handle: Any = None

    def __enter__(self) -> DeviceAudit:
        self.handle = register_module_forward_pre_hook(self.check)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def check(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if not own or any(t.is_meta and not isinstance(t, OnDevice) for t in own):
            return  # no weights, or a shape-only trace (SearchSpace.from_model counts MACs)
        self.forwards += 1
        for tensor in [*own, *(a for a in args if isinstance(a, Tensor))]:
            assert isinstance(tensor, OnDevice), (
                f"{type(module).__name__}: a {tuple(tensor.shape)} tensor on {tensor.device}"
            )


def smoke_overrides(name: str, weights: Path) -> list[str]:
    cls = plugins.get(name)
    params = dict(cls.smoke_params)
    if cls.fine_tune is not None:
        params[cls.fine_tune.epochs] = 1  # the fine-tune phase runs on the device too
    return [
        f"strategy.name={name}",
        f"strategy.params={json.dumps(params)}",
        "train.distill={alpha: 0.5, temperature: 2.0}",  # a teacher on the device
        f"model.checkpoint={weights}",  # given weights: the path users take (no dense phase)
        "data.train_subset=128",
    ]


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_search_keeps_every_model_teacher_and_batch_on_the_trainers_device(
    name: str, tmp_path: Path, one_thread: None
) -> None:
    weights = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_spec().create().state_dict().items()}, weights)
    config = load_config("test_vit.yaml", smoke_overrides(name, weights))
    with FakeAccelerator() as accelerator, DeviceAudit() as audit:
        report = run_search(
            config, tmp_path / "out", progress=False, measure_batch=4, placement=Placement(DEVICE)
        )
    assert audit.forwards > 0 and accelerator.ops > 0
    assert report.metrics.pruned.images_per_s and report.metrics.dense.images_per_s
    exported = ah.load(tmp_path / "out" / "model")  # written from the device, read on the host
    assert all(type(p) is nn.Parameter for p in exported.parameters())


def test_the_stand_in_device_refuses_what_cuda_refuses(one_thread: None) -> None:
    with FakeAccelerator():
        model = tiny_spec().create().to(DEVICE)
        images = torch.randn(2, 3, 16, 16)
        with pytest.raises(RuntimeError, match="same device"):
            model(images)  # a batch left on the host
        logits = model(images.to(DEVICE))
        with pytest.raises(RuntimeError, match="same device"):
            torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2]))  # host labels
        assert isinstance(logits, OnDevice) and logits.detach().cpu().numpy().shape == (2, 10)
        assert logits[torch.tensor([1])].shape == (1, 10)  # host indices are fine, as on CUDA


def test_the_trainer_moves_a_teacher_set_after_it_was_made(one_thread: None) -> None:
    with FakeAccelerator():
        trainer = Trainer(TrainConfig(batch_size=16), synthetic_data(32), device=Placement(DEVICE))
        trainer.teacher = tiny_spec().create()
        assert all(isinstance(p, OnDevice) for p in trainer.teacher.parameters())
        model = tiny_spec().create()  # on the host: evaluate moves it
        assert 0.0 <= trainer.evaluate(model, synthetic_data(16))["top1"] <= 1.0
        assert isinstance(next(model.parameters()), OnDevice)


def test_measurement_runs_on_the_placement_not_where_the_model_was(one_thread: None) -> None:
    with FakeAccelerator() as accelerator:
        speed = throughput(
            {"a": tiny_spec().create()},
            16,
            2,
            repeats=1,
            min_seconds=0.0,
            placement=Placement(DEVICE),
        )
    assert speed["a"] > 0 and accelerator.ops > 0


# ---------------------------------------------------------------- exported attention
class CountAttention(torch.overrides.TorchFunctionMode):
    """Counts scaled_dot_product_attention calls and records their q, k, v widths."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: list[tuple[int, int, int]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            self.widths.append((q.shape[-1], k.shape[-1], v.shape[-1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("where", ["accelerator", "cpu"])
def test_heterogeneous_heads_make_one_aligned_attention_call_per_layer_and_stay_exact(
    where: str, one_thread: None
) -> None:
    """On an accelerator (the stand-in device) each layer is one SDPA call, whatever its head
    shapes, with q/k/v padded to one multiple of 8; on the CPU the same path on request
    (``single_call``); both equal the masked dense model."""
    torch.manual_seed(0)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model)
    subnet = random_subnet(space, torch.Generator().manual_seed(5), keep_low=0.3)
    shapes = [{(len(h.qk), len(h.v)) for h in layer.heads} for layer in subnet.layers]
    assert any(len(s) > 1 for s in shapes), "the draw should give a layer mixed head widths"
    pruned = ah.slice_subnet(model, subnet, spec).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), ah.Masks(model, space, subnet.to_keep(space)):
        masked = model(x)
    if where == "cpu":
        for module in pruned.modules():
            if hasattr(module, "single_call"):
                module.single_call = True
        with torch.no_grad(), CountAttention() as calls:
            exported = pruned(x)
    else:
        with FakeAccelerator(), torch.no_grad(), CountAttention() as calls:
            exported = pruned.to(DEVICE)(x.to(DEVICE)).cpu()
    layers = sum(layer.has_attn for layer in subnet.layers)
    assert len(calls.widths) == layers  # one call per layer, whatever its head shapes
    for (qk, k, v), layer_shapes in zip(calls.widths, [s for s in shapes if s], strict=True):
        assert qk == k == v and qk % 8 == 0 and qk >= max(max(s) for s in layer_shapes)
    assert float((masked - exported).abs().max()) <= 1e-4


def test_on_the_cpu_each_head_shape_is_one_call_as_before() -> None:
    torch.manual_seed(0)
    spec = tiny_spec(depth=3, embed_dim=48, num_heads=3)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model)
    subnet = random_subnet(space, torch.Generator().manual_seed(5), keep_low=0.3)
    pruned = ah.slice_subnet(model, subnet, spec).eval()
    with torch.no_grad(), CountAttention() as calls:
        pruned(torch.randn(2, 3, 16, 16))
    groups = sum(len({(len(h.qk), len(h.v)) for h in layer.heads}) for layer in subnet.layers)
    assert len(calls.widths) == groups


# ---------------------------------------------------------------- AMP, compile, loaders
def tiny_fit(config: TrainConfig, placement: Placement | None = None, tmp: Path | None = None):
    torch.manual_seed(0)
    model = tiny_spec().create()
    trainer = Trainer(config, synthetic_data(64), synthetic_data(16), tmp, device=placement)
    result = trainer.fit(model, epochs=2, phase="p")
    return model, result, trainer


def test_defaults_on_cpu_are_fp32_without_pinning_or_compile() -> None:
    placement = Placement.resolve(TrainConfig(), "cpu")
    assert (placement.amp, placement.compile, placement.pin_memory) == ("off", False, False)
    assert placement.grad_scaler() is None
    assert Placement.resolve(TrainConfig(amp="fp16"), "cpu").grad_scaler() is not None


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_phases_train_and_resume(amp: str, tmp_path: Path) -> None:
    config = TrainConfig(batch_size=16, lr=1e-3, amp=amp)  # type: ignore[arg-type]
    placement = Placement.resolve(config, "cpu")
    _, result, trainer = tiny_fit(config, placement, tmp_path)
    assert result.epochs_run == 2 and 0.0 <= result.last_metrics["val_top1"] <= 1.0
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    assert ("scaler" in state) == (amp == "fp16")  # the fp16 loss scale resumes too
    again = trainer.fit(tiny_spec().create(), epochs=2, phase="p")
    assert again.resumed and again.epochs_run == 0


def test_a_compiled_forward_trains_like_the_eager_one() -> None:
    config = TrainConfig(batch_size=16, lr=1e-3, grad_clip=None)
    eager, *_ = tiny_fit(config, Placement(torch.device("cpu")))
    compiled_placement = Placement(torch.device("cpu"), compile=True, compile_backend="aot_eager")
    compiled, *_ = tiny_fit(config, compiled_placement)
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_with_workers_the_batches_depend_on_seed_and_epoch_not_on_the_worker_count() -> None:
    """Augmented data with 1 and 2 persistent workers trains to the same weights."""
    from automl_hiap.data.datasets import TensorImageDataset

    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    data = TensorImageDataset(
        images,
        torch.randint(0, 10, (64,)),
        range(64),
        image_size=16,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        augment=True,
    )
    weights = []
    for workers in (1, 2):
        torch.manual_seed(0)
        model = tiny_spec().create()
        config = TrainConfig(batch_size=16, lr=1e-3, num_workers=workers)
        Trainer(config, data, device="cpu").fit(model, epochs=2, phase="p")
        weights.append(model.state_dict())
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_device_and_amp_keys_are_validated() -> None:
    from automl_hiap.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.device"):
        load_config("test_vit.yaml", ["train.device=gpu0"])
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config("test_vit.yaml", ["train.amp=fp8"])
    config = load_config("test_vit.yaml", ["train.device=cuda:1", "train.amp=fp16"])
    assert (config.train.device, config.train.amp) == ("cuda:1", "fp16")
