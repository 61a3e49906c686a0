"""Physically pruned ViT blocks with heterogeneous shapes.

A :class:`PrunedBlock` replaces a timm ``Block`` inside timm's own ``VisionTransformer``, so
patch embedding, tokens, position embedding, pooling and heads stay timm's code. Each block may
have its own head count, per-head q/k and v widths, FFN width, and may lose its attention or
FFN branch entirely. Nothing is padded back to dense sizes.

Heads with equal (q/k, v) widths are laid out contiguously in ``qkv``; the weights stay
unpadded (parameters and MACs are the subnet's). On a GPU every layer makes one attention call,
whatever its heads' widths: the q, k and v activations of every head are zero-padded to one
width, the widest head's rounded up to a multiple of 8, in one scatter, so CUDA's flash and
memory-efficient kernels (which want equal q/k and v widths, aligned to 8) take the whole layer
in a single launch instead of one per head shape. On the CPU, where a launch costs little, each
head shape is one call, its q/k and v padded to one width so the fused CPU kernel runs (the
layout bench/results/export_speed.md measured); ``single_call`` overrides the choice. Zero q/k
columns add nothing to q·kᵀ and zero v columns only add zero outputs, which are dropped, so
both are exact.
The softmax scale of the original head dim is passed explicitly (SDPA's default would use the
pruned width and change the function).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadGroup:
    """``count`` heads that keep ``qk`` q/k dims and ``v`` v dims each."""

    count: int
    qk: int
    v: int


def group_heads(shapes: Sequence[tuple[int, int]]) -> tuple[list[HeadGroup], list[int]]:
    """Group per-head (qk, v) widths; returns the groups and the head order they imply."""
    order: list[int] = []
    groups: list[HeadGroup] = []
    for key in dict.fromkeys(shapes):  # distinct shapes, in order of first appearance
        members = [i for i, s in enumerate(shapes) if s == key]
        order.extend(members)
        groups.append(HeadGroup(len(members), key[0], key[1]))
    return groups, order


def _register_in_index(module: nn.Module, index: Sequence[int] | None) -> None:
    """Kept input columns of a projection (None: all), a non-persistent buffer rebuilt from
    the spec so that ``state_dict`` holds weights only."""
    value = None if index is None else torch.tensor(list(index), dtype=torch.long)
    module.register_buffer("in_index", value, persistent=False)


ALIGN = 8  # padded head width: a multiple of this (what CUDA's fused kernels want)


def _attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float
) -> Tensor:
    """SDPA of one head shape, q/k and v zero-padded to one width, the output cut back."""
    qk_width, v_width = q.shape[-1], v.shape[-1]
    if qk_width < v_width:
        q = F.pad(q, (0, v_width - qk_width))
        k = F.pad(k, (0, v_width - qk_width))
    elif v_width < qk_width:
        v = F.pad(v, (0, qk_width - v_width))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    return out[..., :v_width] if v_width < qk_width else out


def padded_width(groups: Sequence[HeadGroup], align: int = ALIGN) -> int:
    """The one head width of a layer's attention call: the widest q/k or v, rounded up."""
    widest = max(max(g.qk, g.v) for g in groups)
    return -(-widest // align) * align


def padding_index(groups: Sequence[HeadGroup], width: int) -> tuple[list[int], list[int]]:
    """Where each ``qkv`` output column goes in the padded (3, heads, width) layout, and where
    each v column's attention output is read back from the (heads, width) result."""
    heads = sum(g.count for g in groups)
    q_cols: list[int] = []
    v_cols: list[int] = []
    head = 0
    for g in groups:
        for _ in range(g.count):
            q_cols.extend(head * width + j for j in range(g.qk))
            v_cols.extend(head * width + j for j in range(g.v))
            head += 1
    plane = heads * width
    return [*q_cols, *(plane + c for c in q_cols), *(2 * plane + c for c in v_cols)], v_cols


class PrunedAttention(nn.Module):
    """Multi-head attention whose heads may differ in q/k and v width."""

    def __init__(
        self,
        dim: int,
        groups: Sequence[HeadGroup],
        scale: float,
        in_index: Sequence[int] | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        _register_in_index(self, in_index)
        self.groups = tuple(groups)
        self.scale = scale
        self.fused_attn = True
        self.num_heads = sum(g.count for g in self.groups)
        self.qk_total = sum(g.count * g.qk for g in self.groups)
        self.v_total = sum(g.count * g.v for g in self.groups)
        # one width for q/k and v of every head (see the module docstring); index buffers are
        # rebuilt from the groups, so they stay out of the state_dict
        self.width = padded_width(self.groups)
        g0 = self.groups[0]
        self.uniform = len(self.groups) == 1 and g0.qk == g0.v  # no padding needed on CPU
        self.single_call: bool | None = None  # None: one call per layer on accelerators only
        scatter, gather = padding_index(self.groups, self.width)
        self.register_buffer("pad_scatter", torch.tensor(scatter), persistent=False)
        self.register_buffer("pad_gather", torch.tensor(gather), persistent=False)
        self.qkv = nn.Linear(
            dim if in_index is None else len(in_index),
            2 * self.qk_total + self.v_total,
            bias=qkv_bias,
        )
        self.proj = nn.Linear(self.v_total, dim, bias=proj_bias)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        batch, tokens, _ = x.shape
        if self.in_index is not None:
            x = x.index_select(-1, self.in_index)  # type: ignore[arg-type]
        qkv = self.qkv(x)
        single = self.single_call if self.single_call is not None else qkv.device.type != "cpu"
        if self.fused_attn and single:
            return self.proj(self._fused(qkv, attn_mask, is_causal))
        if not self.fused_attn and (attn_mask is not None or is_causal):
            raise NotImplementedError("masks need the fused attention path")
        q_all, k_all, v_all = qkv.split([self.qk_total, self.qk_total, self.v_total], -1)
        outputs = []  # one call per head shape; the explicit path is visible to FLOP counters
        qk_at = v_at = 0
        for g in self.groups:
            qk_end, v_end = qk_at + g.count * g.qk, v_at + g.count * g.v
            q = q_all[..., qk_at:qk_end].reshape(batch, tokens, g.count, g.qk).transpose(1, 2)
            k = k_all[..., qk_at:qk_end].reshape(batch, tokens, g.count, g.qk).transpose(1, 2)
            v = v_all[..., v_at:v_end].reshape(batch, tokens, g.count, g.v).transpose(1, 2)
            if self.fused_attn:
                out = _attention(q, k, v, attn_mask, is_causal, self.scale)
            else:
                out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1) @ v
            outputs.append(out.transpose(1, 2).reshape(batch, tokens, g.count * g.v))
            qk_at, v_at = qk_end, v_end
        return self.proj(outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1))

    def _fused(self, qkv: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """All heads in one SDPA call: q, k, v zero-padded to ``width`` (exact), output cut
        back to the kept v dims."""
        batch, tokens, _ = qkv.shape
        heads = self.num_heads
        padded = not self.uniform or self.groups[0].qk % ALIGN != 0
        if padded:
            width = self.width
            qkv = qkv.new_zeros(batch, tokens, 3 * heads * width).index_copy_(
                -1,
                self.pad_scatter,  # type: ignore[arg-type]
                qkv,
            )
        else:
            width = self.groups[0].qk
        q, k, v = qkv.view(batch, tokens, 3, heads, width).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(batch, tokens, heads * width)
        return out.index_select(-1, self.pad_gather) if padded else out  # type: ignore[arg-type]


class PrunedMlp(nn.Module):
    def __init__(
        self,
        dim: int,
        hidden: int,
        act: nn.Module,
        in_index: Sequence[int] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _register_in_index(self, in_index)
        self.fc1 = nn.Linear(dim if in_index is None else len(in_index), hidden, bias=bias)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.in_index is not None:
            x = x.index_select(-1, self.in_index)  # type: ignore[arg-type]
        return self.fc2(self.act(self.fc1(x)))


class PrunedBlock(nn.Module):
    """A transformer block whose attention or FFN branch may be absent (``None``)."""

    norm1: Any
    attn: Any
    ls1: Any
    norm2: Any
    mlp: Any
    ls2: Any

    def __init__(
        self,
        norm1: nn.Module | None,
        attn: nn.Module | None,
        ls1: nn.Module | None,
        norm2: nn.Module | None,
        mlp: nn.Module | None,
        ls2: nn.Module | None,
        drop_path1: nn.Module | None = None,
        drop_path2: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = norm1, attn, ls1
        self.norm2, self.mlp, self.ls2 = norm2, mlp, ls2
        self.drop_path1 = drop_path1 or nn.Identity()
        self.drop_path2 = drop_path2 or nn.Identity()

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if self.attn is not None:
            y = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
            x = x + self.drop_path1(self.ls1(y))
        if self.mlp is not None:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
