"""The prunable structure of a timm Vision Transformer.

Units, per transformer block:

========== ===== ======================================================================
unit       level what it removes
========== ===== ======================================================================
attn_block macro the whole attention branch (its norm, qkv, proj, layer scale)
head       macro one attention head: its q, k, v rows of ``qkv`` and its ``proj`` columns
ffn_block  macro the whole FFN branch (norm2, fc1, fc2, layer scale)
qk_dim     micro one q/k dimension of a head (q and k keep the same dims: a dot product)
v_dim      micro one v dimension of a head: a ``qkv`` v row and its ``proj`` column
neuron     micro one FFN neuron: a ``fc1`` row (+bias) and its ``fc2`` column
attn_in    micro one input column of ``qkv`` (the residual stream keeps its width)
mlp_in     micro one input column of ``fc1``
========== ===== ======================================================================

A :class:`BlockKeep` holds, for one block, a keep value per unit: 0/1 for a hard subnet,
probabilities or gate samples for differentiable search. The same object drives the masks
on a live model (``masking``), the cost model (``cost``) and subnet conversion (``subnet``),
so all three agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from automl_hiap.errors import UserError

# the unit vocabulary and Constraints live in the torch-free ``units`` (config imports them
# without paying for torch); re-exported so ``from automl_hiap.space import Unit`` still works
from automl_hiap.units import (
    ALL_UNITS,
    MACRO_UNITS,
    MICRO_UNITS,
    UNIT_FIELD,
    Constraints,
    Rounding,
    Unit,
)

__all__ = [
    "ALL_UNITS",
    "MACRO_UNITS",
    "MICRO_UNITS",
    "UNIT_FIELD",
    "BlockKeep",
    "Constraints",
    "FilledKeep",
    "LayerShape",
    "Rounding",
    "SearchSpace",
    "Unit",
    "layer_shape",
]


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


@dataclass(frozen=True)
class SearchSpace:
    """The prunable units of one ViT, which of them are searched, and the constraints."""

    layers: tuple[LayerShape, ...]
    tokens: int
    fixed_macs: int  # patch embedding + classifier head(s): never pruned
    fixed_params: int  # everything outside the blocks
    units: frozenset[Unit] = field(default_factory=lambda: frozenset(ALL_UNITS))
    min_heads: int = 1
    min_head_dims: int = 1
    min_neuron_fraction: float = 0.0
    round_to: int = 1

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        units: Iterable[Unit | str] = ALL_UNITS,
        constraints: Constraints | None = None,
    ) -> SearchSpace:
        """Read the structure of a timm ``VisionTransformer`` (DeiT and distilled DeiT too)."""
        blocks = _blocks_of(model)
        layers = tuple(layer_shape(i, block) for i, block in enumerate(blocks))
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is None or not isinstance(getattr(patch_embed, "proj", None), nn.Conv2d):
            raise UserError("unsupported model: expected a timm ViT with patch_embed.proj (Conv2d)")
        grid = patch_embed.grid_size
        tokens = int(grid[0] * grid[1]) + int(getattr(model, "num_prefix_tokens", 0))
        conv = patch_embed.proj
        patch_macs = (
            int(grid[0] * grid[1])
            * conv.out_channels
            * (conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])
        )
        head_macs = sum(
            m.in_features * m.out_features
            for name in ("head", "head_dist")
            if isinstance(m := getattr(model, name, None), nn.Linear)
        )
        block_params = sum(p.numel() for p in blocks.parameters())
        total_params = sum(p.numel() for p in model.parameters())
        kwargs = {} if constraints is None else constraints.model_dump()
        return cls(
            layers=layers,
            tokens=tokens,
            fixed_macs=patch_macs + head_macs,
            fixed_params=total_params - block_params,
            units=frozenset(Unit(u) for u in units),
            **kwargs,
        )

    @property
    def depth(self) -> int:
        return len(self.layers)

    def searches(self, unit: Unit) -> bool:
        return unit in self.units

    def dense_keep(self) -> list[FilledKeep]:
        """All-ones keep values (the dense model)."""
        return [BlockKeep().filled(shape) for shape in self.layers]

    def min_neurons(self, layer: int) -> int:
        """Fewest neurons a kept FFN block may have (after rounding)."""
        hidden = self.layers[layer].mlp_hidden
        wanted = max(1, int(-(-self.min_neuron_fraction * hidden // 1)))
        return self.allowed_kept(wanted, hidden, rounding="up")

    def min_dims(self, layer: int) -> int:
        """Fewest q/k or v dims a kept head may have (after rounding)."""
        return self.allowed_kept(self.min_head_dims, self.layers[layer].head_dim, rounding="up")

    def allowed_kept(
        self, count: float, full: int, minimum: int = 0, rounding: Rounding = "down"
    ) -> int:
        """The allowed kept count of a group of ``full`` units next to ``count``: the largest
        allowed <= count ("down"; ``minimum`` when none is), the smallest >= count ("up"), or
        the nearer of the two ("nearest"; ties go up).

        Allowed are ``full``, ``minimum`` and the multiples of ``round_to`` between them: the
        one definition every selection, threshold rule and validation uses.
        """
        minimum, step = min(minimum, full), self.round_to
        down = full if count >= full else max(minimum, int(count // step) * step)
        if rounding == "down":
            return down
        up = minimum if count <= minimum else min(full, int(-(-count // step)) * step)
        if rounding == "up":
            return up
        return down if count - down < up - count else up

    def allowed_count(self, count: int, full: int, minimum: int) -> bool:
        """Whether ``count`` is an allowed kept count (see :meth:`allowed_kept`)."""
        return self.allowed_kept(count, full, minimum) == count

    def nearest_allowed(self, count: float, full: int, minimum: int) -> int:
        """The allowed kept count nearest to a wanted one (see :meth:`allowed_kept`)."""
        return self.allowed_kept(count, full, minimum, rounding="nearest")


def _blocks_of(model: nn.Module) -> nn.Sequential:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise UserError("unsupported model: expected a timm VisionTransformer with .blocks")
    return blocks


def layer_shape(index: int, block: Any) -> LayerShape:
    """Check one timm Block is of the supported kind and read its shapes."""
    where = f"unsupported model: blocks[{index}]"
    attn: Any = getattr(block, "attn", None)
    mlp: Any = getattr(block, "mlp", None)
    for name in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2"):
        if not hasattr(block, name):
            raise UserError(f"{where} has no .{name} (expected a timm ViT Block)")
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        raise UserError(f"{where}.attn: expected a timm Attention with fused qkv and proj")
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            raise UserError(f"{where}.attn.{name}: qk/scale norms are not supported")
    if getattr(attn, "gate", None) is not None:
        raise UserError(f"{where}.attn: gated attention is not supported")
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
        raise UserError(f"{where}.mlp: expected a timm Mlp with fc1 and fc2")
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise UserError(f"{where}.mlp.norm: a norm inside the MLP is not supported")
    if fc1.out_features != fc2.in_features or fc1.in_features != fc2.out_features:
        raise UserError(f"{where}.mlp: gated MLPs (SwiGLU/GLU) are not supported")
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    if qkv.out_features != 3 * heads * head_dim or proj.in_features != heads * head_dim:
        raise UserError(f"{where}.attn: qkv/proj widths do not match {heads} heads x {head_dim}")

    def numel(*modules: nn.Module | Tensor | None) -> int:
        total = 0
        for m in modules:
            if isinstance(m, nn.Module):
                total += sum(p.numel() for p in m.parameters())
            elif isinstance(m, Tensor):
                total += m.numel()
        return total

    return LayerShape(
        embed_dim=qkv.in_features,
        num_heads=heads,
        head_dim=head_dim,
        mlp_hidden=fc1.out_features,
        qkv_bias=qkv.bias is not None,
        fc1_bias=fc1.bias is not None,
        attn_fixed_params=numel(block.norm1, block.ls1, proj.bias),
        mlp_fixed_params=numel(block.norm2, block.ls2, fc2.bias),
    )
