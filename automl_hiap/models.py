"""Create the dense timm ViT a search starts from, with its weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from automl_hiap.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the dense architecture: a timm model name and its keyword overrides."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self, **extra: Any) -> nn.Module:
        """The architecture with fresh weights (never downloads)."""
        try:
            return timm.create_model(self.name, pretrained=False, **{**self.kwargs, **extra})
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError(
                f"model {self.name} with {self.kwargs}: cannot create it: {exc}"
            ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from safetensors or a torch file (``weights_only``: no pickled code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot read checkpoint: {exc}") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a state_dict, got {type(data).__name__}")
    return data


def load_weights(model: nn.Module, path: str | Path, source: str = "model.checkpoint") -> None:
    """Load a checkpoint strictly; a mismatch is one error line naming the file."""
    state = read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {result.unexpected_keys[:3]}")
    if problems:
        raise UserError(f"{source}: {path} does not fit the model: {'; '.join(problems)}")


def create_model(
    name: str, kwargs: dict[str, Any], checkpoint: str | None, pretrained: bool
) -> nn.Module:
    """The dense model: timm architecture + local checkpoint (or hub weights if asked)."""
    spec = ModelSpec(name, kwargs)
    if pretrained and checkpoint is None:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:
            raise UserError(
                f"model.pretrained: cannot fetch timm weights for {name} ({type(exc).__name__}); "
                "offline? set model.checkpoint to a local file"
            ) from None
    else:
        model = spec.create()
        if checkpoint is not None:
            try:
                load_weights(model, checkpoint)
            except RuntimeError as exc:
                raise UserError(
                    f"model.checkpoint: {checkpoint} does not fit {name}: {exc}"
                ) from None
    return model
