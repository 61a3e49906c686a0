"""A latency model of one device: its measured table (``latency_table``) fitted to predict
any subnet, and the latency budget that selects to it.

Why a table and not MACs: on a small model a forward pass keeps a fixed cost that fewer MACs
cannot remove, and which widths run fast depends on the machine's kernels. The model is
additive over blocks: a branch's latency is the table interpolated at its head count and mean
widths (0 when the branch is gone), plus the group term, plus the fixed part. Under
keep-probabilities it is the latency at the expected widths (a differentiable mean-field
estimate, what HiAP's loss uses; the group term is taken from the hardened structure and
carries no gradient). A search refuses a table whose key differs from its own machine's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from torch import Tensor, nn

from automl_hiap.budget import Budget, Latency, format_seconds
from automl_hiap.cost_model import MACS, CostModel
from automl_hiap.errors import UserError
from automl_hiap.latency_table import DeviceKey, LatencyTable, block_grids, block_shape, profile
from automl_hiap.space import BlockKeep, SearchSpace, Unit
from automl_hiap.subnet import Subnet

log = logging.getLogger(__name__)
UNMODELLED = (Unit.ATTN_IN, Unit.MLP_IN)  # input columns: a gather the tables do not time


class LatencyModel:
    """Seconds per forward pass predicted from a :class:`LatencyTable` (a ``CostModel``)."""

    unit = "s"

    def __init__(self, table: LatencyTable, space: SearchSpace) -> None:
        searched = [u for u in UNMODELLED if space.searches(u)]
        if searched:
            raise UserError(
                f"space.units: a latency budget cannot price {searched[0]} (input columns); "
                "drop attn_in/mlp_in from space.units or give a MACs budget"
            )
        if table.key.tokens != space.tokens:
            raise UserError(
                f"latency table: measured for {table.key.tokens} tokens, "
                f"the model has {space.tokens}"
            )
        self.table = table
        self.tables = [table.block_of(shape) for shape in space.layers]

    def fixed(self, space: SearchSpace) -> float:
        return self.table.fixed_ms / 1e3

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
        return self.tables[index].ms(qk, v, neurons) * self.table.in_model / 1e3

    def block(self, space: SearchSpace, index: int, keep: BlockKeep) -> Tensor:
        table, shape = self.tables[index], space.layers[index]
        k = keep.effective(shape)
        heads = k.head.sum()
        alive = heads.clamp_min(1e-6)  # mean widths of the kept heads
        ms = table.mlp(k.neuron.sum()) + table.attention(
            heads, k.qk.sum() / alive, k.v.sum() / alive
        )
        hard = k.head.detach() > 0.5  # the group term: from the hardened structure
        qk, v = (k.qk.detach() > 0.5).sum(-1)[hard], (k.v.detach() > 0.5).sum(-1)[hard]
        groups = len(set(zip(qk.tolist(), v.tolist(), strict=True)))
        return (ms + max(groups - 1, 0) * table.group_ms) * self.table.in_model / 1e3

    def describe(self, value: float) -> str:
        return f"{value * 1e3:.4g} ms"

    def predict(self, space: SearchSpace, subnet: Subnet) -> float:
        """Seconds per forward pass of a subnet's exported model."""
        total = self.fixed(space)
        for i, layer in enumerate(subnet.layers):
            qk = [len(h.qk) for h in layer.heads] if layer.has_attn else []
            v = [len(h.v) for h in layer.heads] if layer.has_attn else []
            neurons = len(layer.neurons) if layer.has_mlp else 0
            d = space.layers[i].embed_dim
            total += self.counts(space, i, qk, v, neurons, d, d)
        return total


# ---------------------------------------------------------------- budgets
def cache_path(key: DeviceKey, space: SearchSpace, points: int) -> Path:
    """Where this machine's table for a space is cached (``$AUTOML_HIAP_CACHE``)."""
    from automl_hiap.data.cache import cache_dir

    measured = [block_grids(space, i, points) for i in range(space.depth)]
    shapes = [block_shape(s) for s in space.layers]
    blob = json.dumps([asdict(key), shapes, measured, space.fixed_macs], sort_keys=True)
    return cache_dir() / "latency" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


def load_table(
    settings: Latency,
    space: SearchSpace,
    model: nn.Module | None,
    image_size: int,
    say: Callable[[str], None] | None = None,
) -> LatencyTable | None:
    """The table a latency budget uses: its ``table`` file (refused if measured elsewhere),
    else this machine's cached one, else a fresh profile (None when ``model`` is None: shapes
    only, nothing can be measured)."""
    here = DeviceKey.here(settings, space.tokens)
    if settings.table is not None:
        table = LatencyTable.read(settings.table)
        problem = here.mismatch(table.key)
        if problem is not None:
            raise UserError(
                f"budget.table {settings.table}: {problem}; profile this machine "
                "(automl_hiap profile) or match the table's settings"
            )
        return table
    path = cache_path(here, space, 5)
    if path.is_file():
        with contextlib.suppress(UserError):
            return LatencyTable.read(path)
    if model is None:
        return None
    log.info("latency: profiling this machine once (cached in %s)", path.parent)
    table = profile(model, space, settings, image_size, say=say)
    table.write(path)
    return table


def latency_target(
    budget: Budget, space: SearchSpace, table: LatencyTable
) -> tuple[LatencyModel, float]:
    """The cost model of a latency budget and its target in seconds, checked against what the
    space can reach (one line with the achievable range, before any training)."""
    from automl_hiap.selection import cheapest

    cost = LatencyModel(table, space)
    dense = cost.predict(space, Subnet.dense(space))
    fastest = cost.predict(space, cheapest(space, cost))
    if not fastest <= budget.value <= dense:
        settings = budget.latency or Latency()
        raise UserError(
            f"budget: {budget} is outside what this space reaches at batch {settings.batch} "
            f"on {table.key.device} ({table.key.threads} threads): "
            f"{format_seconds(fastest)} (fastest allowed subnet) to {format_seconds(dense)} (dense)"
        )
    return cost, budget.value


def latency_plan(
    budget: Budget, space: SearchSpace, build: Callable[[], nn.Module] | None, image_size: int
) -> tuple[CostModel, float | None]:
    """A latency budget's cost model and target in seconds (see :func:`latency_target`);
    ``build`` makes a model to profile when no table is given or cached (None: shapes only,
    then the target stays unknown)."""
    settings = budget.latency or Latency()
    table = load_table(settings, space, None if build is None else build(), image_size)
    if table is None:
        return MACS, None
    return latency_target(budget, space, table)
