"""Physically pruned ViT blocks with heterogeneous shapes.

A :class:`PrunedBlock` replaces a timm ``Block`` inside timm's own ``VisionTransformer``, so
patch embedding, tokens, position embedding, pooling and heads stay timm's code. Each block may
have its own head count, per-head q/k and v widths, FFN width, and may lose its attention or
FFN branch entirely. Nothing is padded back to dense sizes.

Heads with equal (q/k, v) widths are laid out contiguously and run as one batched attention
call, so a uniform layer costs one call and a heterogeneous one a call per distinct shape;
within a call, q/k and v are zero-padded to one width so CPU keeps its fused SDPA kernel.
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


def _attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float
) -> Tensor:
    """SDPA with q/k and v padded with zeros to one width, then the output cut back.

    CPU's fused SDPA kernels need equal q/k and v head widths; otherwise a much slower generic
    path runs (measured in bench/results/export_speed.md). Zero columns add nothing to q·k,
    and zero v columns only add zero outputs, so this is exact.
    """
    qk_width, v_width = q.shape[-1], v.shape[-1]
    if qk_width < v_width:
        q = F.pad(q, (0, v_width - qk_width))
        k = F.pad(k, (0, v_width - qk_width))
    elif v_width < qk_width:
        v = F.pad(v, (0, qk_width - v_width))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    return out[..., :v_width] if v_width < qk_width else out


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
        self.qk_total = sum(g.count * g.qk for g in self.groups)
        self.v_total = sum(g.count * g.v for g in self.groups)
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
        q_all, k_all, v_all = self.qkv(x).split([self.qk_total, self.qk_total, self.v_total], -1)
        outputs = []
        qk_at = v_at = 0
        for g in self.groups:
            qk_end, v_end = qk_at + g.count * g.qk, v_at + g.count * g.v
            q = q_all[..., qk_at:qk_end].reshape(batch, tokens, g.count, g.qk).transpose(1, 2)
            k = k_all[..., qk_at:qk_end].reshape(batch, tokens, g.count, g.qk).transpose(1, 2)
            v = v_all[..., v_at:v_end].reshape(batch, tokens, g.count, g.v).transpose(1, 2)
            if self.fused_attn:
                out = _attention(q, k, v, attn_mask, is_causal, self.scale)
            else:  # explicit path: visible to FLOP counters
                if attn_mask is not None or is_causal:
                    raise NotImplementedError("masks need the fused attention path")
                out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1) @ v
            outputs.append(out.transpose(1, 2).reshape(batch, tokens, g.count * g.v))
            qk_at, v_at = qk_end, v_end
        return self.proj(outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1))


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
