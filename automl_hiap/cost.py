"""Analytical MACs and parameter counts of a ViT subnet.

Convention (``design.md``): count every Linear, the patch-embedding conv and the two attention
matmuls (QKᵀ and AV); ignore norms, softmax, GELU, bias and residual adds. Per block, with N
tokens, width D, kept q/k dims a_h and v dims b_h per head, m neurons, and D_a / D_m kept input
columns of qkv / fc1::

    MACs = N·D_a·Σ(2a_h + b_h) + N²·Σ(a_h + b_h) + N·D·Σb_h + N·D_m·m + N·m·D

The formulas take :class:`~automl_hiap.space.BlockKeep` tensors. With 0/1 values they give the
exact cost of a subnet; with keep-probabilities they give its expectation under independent
gates (every term is a product of independent factors), differentiable for gate-based search.

:func:`traced_macs` is the independent count they are held to: torch's ``FlopCounterMode``
(matmuls and convolutions, the same convention) over one forward on the meta device, shapes
only. ``SearchSpace.from_model`` refuses a model unless every block's traced MACs equal the
block formula's, and takes the never-pruned rest (stem, pooling head, classifiers) from the
trace, so every accepted model is costed exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# the block formulas live below the space (``from_model`` holds models to them); re-exported
from automl_hiap.block_cost import Traced as Traced
from automl_hiap.block_cost import block_macs as block_macs
from automl_hiap.block_cost import block_params as block_params
from automl_hiap.block_cost import count_macs as count_macs
from automl_hiap.block_cost import traced_macs as traced_macs
from automl_hiap.block_cost import unit_macs as unit_macs
from automl_hiap.space import UNIT_FIELD, BlockKeep, SearchSpace, Unit
from automl_hiap.subnet import Subnet


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
