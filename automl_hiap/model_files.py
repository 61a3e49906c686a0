"""The files of a pruned model: architecture JSON + safetensors, written and read back.

An export folder holds ``arch.json`` and ``model.safetensors``; a one-file export keeps the
same JSON in the safetensors metadata (key ``arch``). Both are rebuilt by one function,
:func:`rebuild`: nothing is unpickled and no code from the files runs. :func:`load` is the one
entry point for every local source (folder, search output, MLflow model folder, one file); only
an MLflow URI reaches into the tracking code, so loading a local model never imports MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from automl_hiap.errors import UserError
from automl_hiap.models import ModelSpec
from automl_hiap.slicing import build_blocks
from automl_hiap.subnet import Subnet

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
ARCH_FORMAT = "automl_hiap.pruned_vit/1"


def architecture(model: Any) -> dict[str, Any]:
    """The JSON that, with the weights, rebuilds a sliced model."""
    import timm

    spec: ModelSpec = model.model_spec
    subnet: Subnet = model.subnet
    return {
        "format": ARCH_FORMAT,
        "timm_model": spec.name,
        "timm_kwargs": spec.kwargs,
        "timm_version": timm.__version__,
        "subnet": subnet.to_dict(),
    }


def weights(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict as safetensors stores it (contiguous CPU tensors)."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write ``arch.json`` + ``model.safetensors`` for a sliced model."""
    if not isinstance(getattr(model, "subnet", None), Subnet):
        raise ValueError("save() takes a model returned by slice_subnet() or load()")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARCH_FILE).write_text(json.dumps(architecture(model), indent=1))
    save_file(weights(model), str(out / WEIGHTS_FILE), metadata={"format": ARCH_FORMAT})
    return out


def rebuild(arch: dict[str, Any], state: dict[str, Tensor]) -> nn.Module:
    """The model described by ``arch`` with the weights ``state``, in eval mode."""
    spec = ModelSpec(arch["timm_model"], arch.get("timm_kwargs") or {})
    subnet = Subnet.from_dict(arch["subnet"])
    model: Any = spec.create()
    model.blocks = nn.Sequential(*build_blocks(model, subnet))
    model.load_state_dict(state, strict=True)
    model.subnet = subnet
    model.model_spec = spec
    return model.eval()


def load_folder(directory: str | Path) -> nn.Module:
    """Rebuild a model from its export folder."""
    folder = Path(directory)
    try:
        arch = json.loads((folder / ARCH_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder}: not an exported model ({ARCH_FILE}: {exc})") from None
    if arch.get("format") != ARCH_FORMAT:
        raise UserError(f"{folder / ARCH_FILE}: expected format {ARCH_FORMAT!r}")
    return rebuild(arch, load_file(str(folder / WEIGHTS_FILE)))


def load_safetensors(path: str | Path) -> nn.Module:
    """Rebuild a model from a single ``.safetensors`` file written by ``--format safetensors``."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UserError(f"{path}: not a safetensors file ({exc})") from None
    if metadata.get("format") != ARCH_FORMAT or "arch" not in metadata:
        raise UserError(
            f"{path}: no automl_hiap architecture in its metadata (expected format "
            f"{ARCH_FORMAT!r}; write one with `automl_hiap export DIR --format safetensors`)"
        )
    return rebuild(json.loads(metadata["arch"]), load_file(str(path)))


def find_export(path: Path) -> Path:
    """The folder holding ``arch.json``: ``path`` itself or the one folder below it that does
    (a search's ``model/``, an MLflow model's ``data/model/``)."""
    if (path / ARCH_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.rglob(ARCH_FILE))
    if not found:
        raise UserError(f"{path}: no {ARCH_FILE} in it: not an exported model")
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:3])
        raise UserError(f"{path}: several exported models ({listed}); name one of them")
    return found[0]


def load(path: str | Path) -> nn.Module:
    """A model from a local ``.safetensors`` file or export folder (or a folder holding one)."""
    path = Path(path)
    return load_safetensors(path) if path.is_file() else load_folder(find_export(path))
