"""What a budget counts: MACs (the analytical formula) or seconds (a fitted latency model).

The budget solvers (``selection``) and HiAP's cost loss see a cost only through
:class:`CostModel`, so one selection trades importance per MAC or per millisecond without a
branch on which: a MACs budget uses :data:`MACS`, a latency budget the device's
:class:`~automl_hiap.latency.LatencyModel`. A cost model prices one block two ways: from kept
counts (exact, for the greedy's many small steps) and from keep values (tensors: 0/1 for a
subnet, keep-probabilities for gate-based search, where the result is differentiable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from automl_hiap.budget import format_macs
from automl_hiap.cost import block_macs, count_macs
from automl_hiap.space import BlockKeep, SearchSpace
from automl_hiap.subnet import Subnet


class CostModel(Protocol):
    """A cost per block plus a fixed part, in one unit (``"MACs"`` or ``"s"``)."""

    unit: str

    def fixed(self, space: SearchSpace) -> float:
        """What no pruning removes (patch embedding, norms, classifier, ...)."""
        ...

    def counts(
        self,
        space: SearchSpace,
        index: int,
        qk: Sequence[int],
        v: Sequence[int],
        neurons: int,
        attn_in: int,
        mlp_in: int,
    ) -> float:
        """Block ``index`` with these kept counts: q/k and v dims of each kept head, FFN
        neurons, input columns of qkv and fc1."""
        ...

    def block(self, space: SearchSpace, index: int, keep: BlockKeep) -> Tensor:
        """Block ``index`` under keep values (differentiable in them)."""
        ...

    def describe(self, value: float) -> str:
        """A figure in this unit for messages (``'91.39M MACs'``, ``'8.2 ms'``)."""
        ...


def total_cost(cost: CostModel, space: SearchSpace, keeps: Sequence[BlockKeep]) -> Tensor:
    """The whole model under keep values: fixed part plus every block."""
    blocks = (cost.block(space, i, k) for i, k in enumerate(keeps))
    return cost.fixed(space) + sum(blocks, torch.zeros(()))


def subnet_total(cost: CostModel, space: SearchSpace, subnet: Subnet) -> float:
    """A subnet's exported model in ``cost``'s unit (its keep values are 0/1)."""
    return float(total_cost(cost, space, subnet.to_keep(space, dtype=torch.float64)))


class Macs:
    """The analytical MACs of ``automl_hiap.cost``."""

    unit = "MACs"

    def fixed(self, space: SearchSpace) -> float:
        return float(space.fixed_macs)

    def counts(
        self,
        space: SearchSpace,
        index: int,
        qk: Sequence[int],
        v: Sequence[int],
        neurons: int,
        attn_in: int,
        mlp_in: int,
    ) -> float:
        d = space.layers[index].embed_dim
        return float(count_macs(space.tokens, d, sum(qk), sum(v), neurons, attn_in, mlp_in))

    def block(self, space: SearchSpace, index: int, keep: BlockKeep) -> Tensor:
        return block_macs(space.layers[index], space.tokens, keep)

    def describe(self, value: float) -> str:
        return f"{format_macs(value)} MACs"


MACS = Macs()
