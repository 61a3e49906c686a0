"""Create the dense timm ViT a search starts from, with its weights.

:class:`TimmKwargs` is the allowlist of timm keyword arguments an exported model's ``arch.json``
may carry: the structural ones (sizes, widths, depth, biases, tokens, pooling) and the dropout
rates. Anything else is refused, above all what makes timm read a file or download
(``pretrained``, ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``checkpoint_path``,
``cache_dir``), arguments that name code (``*_layer``, ``block_fn``) and init-only ones
(``weight_init``: the file's weights replace any init).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import timm
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import nn

from automl_hiap.errors import UserError
from automl_hiap.tensor_files import mismatch, one_line, read_checkpoint, read_safetensors, shapes

MAX_DEPTH = 1024  # blocks; far above any timm ViT, so a file cannot make the loader build millions
Positive = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


def _size(value: Any) -> int | tuple[int, int]:
    """A size timm takes: a positive integer or [height, width]."""
    is_int = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if is_int:
        return int(value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(_size(v) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError("expected a positive integer or [height, width]")


Size = Annotated[Any, AfterValidator(_size)]


class TimmKwargs(BaseModel):
    """The timm ``create_model`` keywords an exported model may set (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    img_size: Size = None
    patch_size: Size = None
    in_chans: Positive = 3
    num_classes: Annotated[int, Field(ge=0)] = 1000
    global_pool: Literal["", "token", "avg", "avgmax", "max", "map"] = "token"
    embed_dim: Positive = 768
    depth: Annotated[int, Field(ge=1, le=MAX_DEPTH)] = 12
    num_heads: Positive = 12
    mlp_ratio: Annotated[Finite, Field(gt=0.0)] = 4.0
    qkv_bias: bool = True
    proj_bias: bool = True
    init_values: Finite | None = None
    class_token: bool = True
    no_embed_class: bool = False
    reg_tokens: Annotated[int, Field(ge=0)] = 0
    pos_embed: Literal["", "none", "learn"] = "learn"
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None
    dynamic_img_size: bool = False
    dynamic_img_pad: bool = False
    drop_rate: Rate = 0.0
    pos_drop_rate: Rate = 0.0
    patch_drop_rate: Rate = 0.0
    proj_drop_rate: Rate = 0.0
    attn_drop_rate: Rate = 0.0
    drop_path_rate: Rate = 0.0

    def given(self) -> dict[str, Any]:
        """The keywords the file set (timm's defaults for the rest)."""
        return self.model_dump(exclude_unset=True)


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the dense architecture: a timm model name and its keyword overrides."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self, **extra: Any) -> nn.Module:
        """The architecture with fresh weights (never downloads)."""
        try:
            return timm.create_model(self.name, pretrained=False, **{**self.kwargs, **extra})
        except (TypeError, ValueError, RuntimeError, AssertionError, ZeroDivisionError) as exc:
            raise UserError(
                f"model {self.name} with {self.kwargs}: cannot create it: {one_line(exc)}"
            ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from safetensors or a torch file (``weights_only``: no pickled code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    data = read_checkpoint(path)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        kind = type(data).__name__
        raise UserError(f"{path}: expected a state_dict (names to tensors), got a {kind}")
    return data


def load_weights(model: nn.Module, path: str | Path, source: str = "model.checkpoint") -> None:
    """Load a checkpoint strictly; a mismatch is one error line naming the file, found before
    a safetensors file's tensors are read."""
    path = Path(path)
    expected = shapes(model.state_dict())
    if path.suffix == ".safetensors":
        state = read_safetensors(path, expected, f"the model ({source})")
    else:
        state = read_state_dict(path)
        problem = mismatch(expected, shapes(state))
        if problem is not None:
            raise UserError(f"{path}: does not fit the model ({source}): {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: does not fit the model ({source}): {one_line(exc)}") from None


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
            load_weights(model, checkpoint)
    return model
