"""One block's vocabulary: its dense shapes (:class:`LayerShape`) and a keep value per unit
(:class:`BlockKeep`), below both the search space and the cost formulas that read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerShape:
    """Dense shapes of one block, and the parameters that go with each branch."""

    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    qkv_bias: bool
    fc1_bias: bool
    attn_fixed_params: int  # norm1 + layer scale + proj bias: gone with the branch
    mlp_fixed_params: int  # norm2 + layer scale + fc2 bias


@dataclass
class BlockKeep:
    """Keep values of every unit of one block; ``None`` means "all kept" (value 1).

    Shapes: attn, ffn ``()``; head ``(H,)``; qk, v ``(H, head_dim)``; neuron ``(hidden,)``;
    attn_in, mlp_in ``(embed_dim,)``. Values are raw (a unit's own gate); :meth:`effective`
    multiplies each micro unit by the macro units above it.
    """

    attn: Tensor | None = None
    head: Tensor | None = None
    ffn: Tensor | None = None
    qk: Tensor | None = None
    v: Tensor | None = None
    neuron: Tensor | None = None
    attn_in: Tensor | None = None
    mlp_in: Tensor | None = None

    def filled(self, shape: LayerShape, like: Tensor | None = None) -> FilledKeep:
        """Every field as a tensor (ones where None), on the device/dtype of ``like``."""
        given = [t for t in (getattr(self, f.name) for f in fields(self)) if t is not None]
        ref = like if like is not None else (given[0] if given else torch.ones(()))
        sizes = {
            "attn": (),
            "head": (shape.num_heads,),
            "ffn": (),
            "qk": (shape.num_heads, shape.head_dim),
            "v": (shape.num_heads, shape.head_dim),
            "neuron": (shape.mlp_hidden,),
            "attn_in": (shape.embed_dim,),
            "mlp_in": (shape.embed_dim,),
        }
        values = {}
        for name, size in sizes.items():
            value = getattr(self, name)
            values[name] = ref.new_ones(size) if value is None else value.reshape(size)
        return FilledKeep(**values)

    def effective(self, shape: LayerShape) -> FilledKeep:
        """Micro under macro: head·attn, qk/v·head·attn, neuron·ffn."""
        k = self.filled(shape)
        head = k.head * k.attn
        return FilledKeep(
            attn=k.attn,
            head=head,
            ffn=k.ffn,
            qk=k.qk * head[:, None],
            v=k.v * head[:, None],
            neuron=k.neuron * k.ffn,
            attn_in=k.attn_in,
            mlp_in=k.mlp_in,
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> BlockKeep:
        """Apply ``fn`` to every given tensor (e.g. ``detach``, ``.to(device)``)."""
        return type(self)(
            **{
                f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                for f in fields(self)
            }
        )


@dataclass
class FilledKeep(BlockKeep):
    """A :class:`BlockKeep` with every field given."""

    attn: Tensor
    head: Tensor
    ffn: Tensor
    qk: Tensor
    v: Tensor
    neuron: Tensor
    attn_in: Tensor
    mlp_in: Tensor
