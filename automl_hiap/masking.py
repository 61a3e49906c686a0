"""Masks and gates on a live timm ViT, as removable forward hooks.

Each unit is applied where the computation couples it, so a hard mask computes exactly what
the physically sliced model computes:

* head h, v dim (h, j): scale the ``proj`` input column that reads v dim (h, j) by
  attn · head_h · v_hj (attention is linear in v, so this equals gating the head output /
  the v dim);
* attention branch: scale ``proj``'s output (bias included) by attn, times "any head kept"
  (a branch whose heads are all closed is gone from the slice, bias and all);
* q/k dim (h, j): scale its q output row of ``qkv`` by qk_hj (q·k sums over kept dims);
* neuron k: scale ``fc2``'s input column k; FFN branch: scale ``fc2``'s output by ffn, times
  "any neuron kept";
* attn_in / mlp_in: scale the input columns of ``qkv`` / ``fc1``.

Where each gate acts is ``layout.GATES`` (the module that knows the weight layout).

Hooks rather than parametrizations: the model's modules, ``forward`` methods and
``state_dict`` stay untouched, so timm checkpoints load into a masked model as into a plain one,
and masked units still receive (zero) weight gradients like in SERo's masked linear layers.
Values are read from :attr:`Masks.keeps` at every forward, so a strategy can replace them per
step (HiAP samples gates) or keep them fixed (a hard subnet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from automl_hiap import layout
from automl_hiap.space import BlockKeep, SearchSpace


class Masks:
    """Keep values attached to a model's blocks; call :meth:`remove` to detach them."""

    def __init__(self, model: nn.Module, space: SearchSpace, keeps: Sequence[BlockKeep]) -> None:
        self.space = space
        self.keeps: list[BlockKeep] = list(keeps)
        self._handles: list[RemovableHandle] = []
        blocks: Any = model.blocks
        if len(blocks) != space.depth:
            raise ValueError(f"model has {len(blocks)} blocks, the space {space.depth}")
        for i, block in enumerate(blocks):
            for name, axis in layout.gated_axes():  # inputs: pre-hooks; outputs: hooks
                hook = self._pre if axis == layout.COLUMNS else self._post
                hook(layout.linear(block, name), i, name, axis)

    def set(self, keeps: Sequence[BlockKeep]) -> None:
        if len(keeps) != self.space.depth:
            raise ValueError(f"expected {self.space.depth} layers of keep values")
        self.keeps = list(keeps)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Masks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _scale_for(self, layer: int, name: str, axis: int) -> Tensor | None:
        return layout.gate(self.space.layers[layer], self.keeps[layer], name, axis)

    def _pre(self, module: nn.Module, layer: int, name: str, axis: int) -> None:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            scale = self._scale_for(layer, name, axis)
            if scale is None:
                return None
            x = args[0]
            return (x * scale.to(x.dtype), *args[1:])

        self._handles.append(module.register_forward_pre_hook(hook))

    def _post(self, module: nn.Module, layer: int, name: str, axis: int) -> None:
        def hook(_: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
            scale = self._scale_for(layer, name, axis)
            return None if scale is None else out * scale.to(out.dtype)

        self._handles.append(module.register_forward_hook(hook))
