"""Deployment formats of an exported model: ONNX, TorchScript, one self-contained safetensors file.

Each export is written to a temporary file beside its destination, loaded back with its own
runtime (onnxruntime, ``torch.jit.load``, :func:`load_safetensors`) and run on a random batch;
only if its logits match the eager model's within ``tolerance`` (max abs difference, default
1e-4) is it moved into place. A mismatch is an error and writes nothing.

Choices:

* The check batch has a different size from the batch the exporter traces with, so an export
  that baked the batch size in fails the check instead of failing in deployment.
* ONNX uses torch's dynamo exporter (the default of torch 2.13; it needs ``onnxscript``) with a
  dynamic batch dimension, input ``images`` and output ``logits``, weights inside the file (fine
  below protobuf's 2 GB limit, i.e. every ViT up to ViT-L). ``onnx``, ``onnxscript`` and
  ``onnxruntime`` come with the ``export`` extra.
* TorchScript is traced (``torch.jit.trace``): timm's modules are not scriptable. torch
  deprecates TorchScript; it stays here for libtorch (C++) deployments, its warnings silenced.
* The safetensors file carries the architecture JSON in its metadata (key ``arch``), so one
  file rebuilds the model; like the export folder, loading it runs no code from the file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from automl_hiap.atomic import atomic_path, check_folder
from automl_hiap.errors import UserError
from automl_hiap.model_files import ARCH_FORMAT, architecture, load_safetensors, weights
from automl_hiap.placement import on_host

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
TOLERANCE = 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 3

Runner = Callable[[Tensor], Tensor]


def input_shape(model: Any) -> tuple[int, int, int]:
    """(channels, height, width) a timm ViT takes."""
    height, width = model.patch_embed.img_size
    return int(model.patch_embed.proj.in_channels), int(height), int(width)


def export_to(
    model: nn.Module, fmt: str, out: str | Path, tolerance: float = TOLERANCE, seed: int = 0
) -> float:
    """Write ``model`` as ``fmt`` to ``out`` once it matches the eager model; return the
    largest absolute logit difference seen in the check."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    model = on_host(model).eval()  # exported and checked on the CPU, whatever its device
    generator = torch.Generator().manual_seed(seed)
    shape = input_shape(model)
    example = torch.randn(TRACE_BATCH, *shape, generator=generator)
    check = torch.randn(CHECK_BATCH, *shape, generator=generator)
    out = Path(out)
    check_folder(out.parent, "--out")
    with atomic_path(out) as temporary, torch.no_grad():
        WRITERS[fmt](model, example, temporary)
        expected = model(check)
        got = READERS[fmt](temporary)(check)
        diff = (got.float() - expected.float()).abs().max().item()
        if got.shape != expected.shape or not diff <= tolerance:  # `not <=` also catches NaN
            raise UserError(
                f"export --format {fmt}: the exported model's logits differ from the eager "
                f"model's by {diff:.3g} (shape {tuple(got.shape)}; tolerance {tolerance:g}); "
                f"{out} was not written"
            )
    return diff


# ------------------------------------------------------------------ writers and readers
def _write_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
    _require("onnx", "onnxscript", "onnxruntime")
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notes
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )


def _read_onnx(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _write_torchscript(model: nn.Module, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notes; the check decides
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def _read_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return module


def _write_safetensors(model: nn.Module, example: Tensor, path: Path) -> None:
    metadata = {"format": ARCH_FORMAT, "arch": json.dumps(architecture(model))}
    save_file(weights(model), str(path), metadata=metadata)


WRITERS: dict[str, Callable[[nn.Module, Tensor, Path], None]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "safetensors": _write_safetensors,
}
READERS: dict[str, Callable[[Path], Runner]] = {
    "onnx": _read_onnx,
    "torchscript": _read_torchscript,
    "safetensors": lambda path: load_safetensors(path),
}


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"--format onnx needs {', '.join(missing)}: pip install 'automl_hiap[export]'"
        )
