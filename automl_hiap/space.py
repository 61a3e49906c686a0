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

Supported models: exact or refused. :meth:`SearchSpace.from_model` accepts a model only if
every block is timm's pre-norm ViT ``Block`` with a fused-qkv ``Attention`` and a plain ``Mlp``
(what ``layout`` and ``slicing`` rebuild) and the block formula of ``cost`` gives, block by
block, exactly the MACs torch's ``FlopCounterMode`` counts in one forward traced on the meta
device. Everything outside the blocks (patch embedding or a hybrid CNN stem, an attention-pool
head, classifiers) is never pruned, so its MACs are a constant of the model, taken from that
same trace. Windowed or NHWC blocks (SAM), parallel or post-norm blocks, extra tokens the
formula does not see: refused in one line, before any compute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from automl_hiap import block_cost
from automl_hiap.errors import UserError
from automl_hiap.keeps import BlockKeep, FilledKeep, LayerShape

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
class SearchSpace:
    """The prunable units of one ViT, which of them are searched, and the constraints."""

    layers: tuple[LayerShape, ...]
    tokens: int
    fixed_macs: int  # everything outside the blocks (stem, pooling head, classifiers): traced
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
        """Read the structure of a timm ``VisionTransformer`` (DeiT, distilled DeiT, MAP-pooled,
        hybrid-stem): refused in one line unless it is costed exactly (module docstring). The
        model's forward is traced, hooks included: read the space before attaching masks."""
        label = model_label(model)
        blocks = _blocks_of(model, label)
        layers = tuple(layer_shape(i, block, label) for i, block in enumerate(blocks))
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is None or not isinstance(getattr(patch_embed, "proj", None), nn.Conv2d):
            raise UserError(
                f"unsupported model {label}: expected a timm ViT with patch_embed.proj (Conv2d)"
            )
        grid = patch_embed.grid_size
        tokens = int(grid[0] * grid[1]) + int(getattr(model, "num_prefix_tokens", 0))
        traced = block_cost.traced_macs(model, label)
        for i, (shape, block, counted) in enumerate(
            zip(layers, blocks, traced.blocks, strict=True)
        ):
            d, dims = shape.embed_dim, shape.num_heads * shape.head_dim
            formula = block_cost.count_macs(tokens, d, dims, dims, shape.mlp_hidden, d, d)
            if formula != counted:
                raise UserError(
                    f"unsupported model {label}: blocks[{i}] traces to {counted:,} MACs but the "
                    f"block formula over {tokens} tokens gives {formula:,} (its cost would be "
                    "wrong)"
                )
            params = sum(p.numel() for p in block.parameters())
            dense = BlockKeep().filled(shape, like=torch.ones((), dtype=torch.float64))
            if (counted_params := round(float(block_cost.block_params(shape, dense)))) != params:
                raise UserError(
                    f"unsupported model {label}: blocks[{i}] has {params:,} parameters but the "
                    f"block formula counts {counted_params:,}"
                )
        block_params = sum(p.numel() for p in blocks.parameters())
        total_params = sum(p.numel() for p in model.parameters())
        kwargs = {} if constraints is None else constraints.model_dump()
        return cls(
            layers=layers,
            tokens=tokens,
            fixed_macs=traced.total - sum(traced.blocks),
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


def model_label(model: nn.Module) -> str:
    """How errors name a model: its timm architecture (``samvit_base_patch16``), else its class."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return repr(name) if isinstance(name, str) else type(model).__name__


def _blocks_of(model: nn.Module, label: str) -> nn.Sequential:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise UserError(f"unsupported model {label}: expected a timm VisionTransformer (.blocks)")
    return blocks


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def layer_shape(index: int, block: Any, label: str = "") -> LayerShape:
    """Check one block is timm's pre-norm ViT ``Block`` (fused-qkv ``Attention``, plain
    ``Mlp``: the layout ``layout`` and ``slicing`` rebuild; subclasses may change the forward,
    so the classes must be these) and read its shapes."""
    from timm.models import vision_transformer as vit

    where = f"unsupported model{' ' + label if label else ''}: blocks[{index}]"
    attn: Any = getattr(block, "attn", None)
    mlp: Any = getattr(block, "mlp", None)
    kinds = (("", block, vit.Block), (".attn", attn, vit.Attention), (".mlp", mlp, vit.Mlp))
    for part, module, expected in kinds:
        if type(module) is not expected:
            raise UserError(
                f"{where}{part} is {_qualname(type(module))}, expected {_qualname(expected)}"
            )
    qkv, proj, fc1, fc2 = attn.qkv, attn.proj, mlp.fc1, mlp.fc2
    if not all(isinstance(m, nn.Linear) for m in (qkv, proj, fc1, fc2)):
        raise UserError(f"{where}: expected Linear qkv, proj, fc1 and fc2 (not 1x1 convs)")
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            raise UserError(f"{where}.attn.{name}: qk/scale norms are not supported")
    if getattr(attn, "gate", None) is not None:
        raise UserError(f"{where}.attn: gated attention is not supported")
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise UserError(f"{where}.mlp.norm: a norm inside the MLP is not supported")
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
