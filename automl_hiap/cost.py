"""Analytical MACs and parameter counts of a ViT subnet.

Convention (``design.md``): count every Linear, the patch-embedding conv and the two attention
matmuls (QKᵀ and AV); ignore norms, softmax, GELU, bias and residual adds. Per block, with N
tokens, width D, kept q/k dims a_h and v dims b_h per head, m neurons, and D_a / D_m kept input
columns of qkv / fc1::

    MACs = N·D_a·Σ(2a_h + b_h) + N²·Σ(a_h + b_h) + N·D·Σb_h + N·D_m·m + N·m·D

The formulas take :class:`~automl_hiap.space.BlockKeep` tensors. With 0/1 values they give the
exact cost of a subnet; with keep-probabilities they give its expectation under independent
gates (every term is a product of independent factors), differentiable for gate-based search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from automl_hiap.space import UNIT_FIELD, BlockKeep, LayerShape, SearchSpace, Unit
from automl_hiap.subnet import Subnet

Count = TypeVar("Count", int, Tensor)


def _total(count: Count) -> Count:
    return count.sum() if isinstance(count, Tensor) else count


def count_macs(
    tokens: int,
    embed_dim: int,
    qk: Count,
    v: Count,
    neurons: Count,
    attn_in: Count,
    mlp_in: Count,
) -> Count:
    """The block formula above from kept counts: ``qk`` / ``v`` are the kept q/k and v dims,
    per head (a tensor, summed here) or in total; ints give exact integers, tensors expected
    values. Every MACs figure of the package (cost model, greedy selection, HiAP's repair
    prices) comes from here."""
    n, d = tokens, embed_dim
    return (
        n * attn_in * _total(2 * qk + v)
        + n * n * _total(qk + v)
        + n * d * _total(v)
        + n * mlp_in * neurons
        + n * neurons * d
    )


def block_macs(shape: LayerShape, tokens: int, keep: BlockKeep) -> Tensor:
    """MACs (or expected MACs) of one block."""
    k = keep.effective(shape)
    a, b = k.qk.sum(-1), k.v.sum(-1)  # kept q/k and v dims per head
    return count_macs(
        tokens, shape.embed_dim, a, b, k.neuron.sum(), k.attn_in.sum(), k.mlp_in.sum()
    )


def unit_macs(shape: LayerShape, tokens: int, unit: Unit) -> int:
    """MACs that removing one unit of this kind saves from the otherwise dense block (a
    branch: all of it), e.g. a v dim's qkv row, its AV column and its proj column."""
    d, hd, dims = shape.embed_dim, shape.head_dim, shape.num_heads * shape.head_dim
    dense = dict(qk=dims, v=dims, neurons=shape.mlp_hidden, attn_in=d, mlp_in=d)
    fewer = {
        Unit.ATTN_BLOCK: dict(qk=0, v=0),
        Unit.HEAD: dict(qk=dims - hd, v=dims - hd),
        Unit.FFN_BLOCK: dict(neurons=0),
        Unit.QK_DIM: dict(qk=dims - 1),
        Unit.V_DIM: dict(v=dims - 1),
        Unit.NEURON: dict(neurons=shape.mlp_hidden - 1),
        Unit.ATTN_IN: dict(attn_in=d - 1),
        Unit.MLP_IN: dict(mlp_in=d - 1),
    }[unit]
    return count_macs(tokens, d, **dense) - count_macs(tokens, d, **(dense | fewer))


def block_params(shape: LayerShape, keep: BlockKeep) -> Tensor:
    """Parameters (or expected parameters) of one block."""
    k = keep.effective(shape)
    a, b = k.qk.sum(-1), k.v.sum(-1)
    qkv_rows = (2 * a + b).sum()
    neurons = k.neuron.sum()
    # a branch exists while any of its units does: P = gate · (1 − Π(1 − p_unit))
    attn_alive = k.attn * (1 - torch.prod(1 - k.head))
    mlp_alive = k.ffn * (1 - torch.prod(1 - k.neuron))
    return (
        k.attn_in.sum() * qkv_rows
        + qkv_rows * float(shape.qkv_bias)
        + shape.embed_dim * b.sum()
        + attn_alive * shape.attn_fixed_params
        + k.mlp_in.sum() * neurons
        + neurons * float(shape.fc1_bias)
        + neurons * shape.embed_dim
        + mlp_alive * shape.mlp_fixed_params
    )


def expected_macs(space: SearchSpace, keeps: Sequence[BlockKeep]) -> Tensor:
    """Total MACs of the model under the given keep values (differentiable)."""
    return space.fixed_macs + sum(
        (block_macs(s, space.tokens, k) for s, k in zip(space.layers, keeps, strict=True)),
        torch.zeros(()),
    )


def expected_params(space: SearchSpace, keeps: Sequence[BlockKeep]) -> Tensor:
    return space.fixed_params + sum(
        (block_params(s, k) for s, k in zip(space.layers, keeps, strict=True)), torch.zeros(())
    )


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int


def subnet_cost(space: SearchSpace, subnet: Subnet) -> Cost:
    """Exact MACs and parameter count of a subnet's exported model."""
    keeps = subnet.to_keep(space, dtype=torch.float64)  # exact integers up to 2**53
    return Cost(
        macs=round(float(expected_macs(space, keeps))),
        params=round(float(expected_params(space, keeps))),
    )


def dense_cost(space: SearchSpace) -> Cost:
    return subnet_cost(space, Subnet.dense(space))


def prunable_share(space: SearchSpace, unit: Unit) -> float:
    """Fraction of the dense MACs that removing every unit of this kind would remove."""
    dense = space.dense_keep()
    dense_macs = float(expected_macs(space, dense))
    for keep in dense:
        getattr(keep, UNIT_FIELD[unit]).zero_()
    return (dense_macs - float(expected_macs(space, dense))) / dense_macs
