"""From unit scores to a valid subnet under a budget: the two budget solvers.

Every score-based strategy ends the same way: keep the most important units until the model
fits the budget, without breaking the space's constraints. This module does that once, in two
ways: :func:`select_to_budget` (greedy, importance per MAC; magnitude, GOHSP, repairs) and
:func:`bisect_to_budget` (one global threshold, or any one-parameter family of nested masks,
bisected to the target; SERo, VTP, NNI), with :func:`survivors` and :func:`top_kept` for the
threshold rules.

Greedy removal with lazy re-evaluation: each *group* of units (the neurons of one FFN, the v
dims of one head, the heads of one layer, ...) can shrink by one allowed step (``round_to``
units, never below the minimum; a whole branch goes in one step when its block unit is
searched). A step costs the scores of the units it removes and saves cost; the cheapest step
per unit of cost saved is taken until the budget is met. Savings depend on other groups (a v
dim saves nothing once its head is gone), so a popped step is re-priced and re-queued if it
went stale. Within a group, units go in ascending score order, so the kept set is always the
top-k.

The cost is a :class:`~automl_hiap.cost_model.CostModel`: MACs by default, or a device's
fitted latency, so the same greedy trades importance per millisecond. A step that saves no
time (a width the latency table shows to be as slow as a wider one) is never taken, which is
how slow widths are avoided without rules written by hand.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, overload

import torch

from automl_hiap.cost_model import MACS, CostModel, total_cost
from automl_hiap.space import BlockKeep, LayerShape, SearchSpace, Unit
from automl_hiap.subnet import HeadKeep, LayerKeep, Subnet

_Step = tuple[float, Callable[[], None]]  # (score lost per unit of cost saved, apply)
T = TypeVar("T", int, float)


@dataclass
class _Layer:
    """Kept counts of one layer; each unit list is ordered from most to least important."""

    shape: LayerShape
    heads: list[int]  # kept head indices, best first
    qk: dict[int, list[int]]  # head -> kept q/k dims, best first
    v: dict[int, list[int]]
    neurons: list[int]
    attn_in: list[int]
    mlp_in: list[int]
    price: Callable[[_Layer], float]  # the cost model on this block's kept counts

    def cost(self, heads: list[int] | None = None) -> float:
        """The block's cost, or what it would be with only ``heads`` kept."""
        return self.price(self if heads is None else replace(self, heads=heads))


def _pricing(space: SearchSpace, index: int, cost: CostModel) -> Callable[[_Layer], float]:
    def price(layer: _Layer) -> float:
        qk = [len(layer.qk[h]) for h in layer.heads]
        v = [len(layer.v[h]) for h in layer.heads]
        counts = (len(layer.neurons), len(layer.attn_in), len(layer.mlp_in))
        return cost.counts(space, index, qk, v, *counts)

    return price


def _ranked(scores: torch.Tensor | None, count: int) -> list[int]:
    """Indices best first (stable: ties keep the lower index)."""
    if scores is None:
        return list(range(count))
    return torch.argsort(-scores.double(), stable=True).tolist()


def select_to_budget(
    space: SearchSpace,
    scores: Sequence[BlockKeep],
    target: float,
    strict: bool = True,
    cost: CostModel = MACS,
) -> Subnet:
    """The subnet that keeps the highest-scored units with a cost <= ``target`` (in MACs, or
    the unit of ``cost``: seconds for a latency model).

    ``scores[l]`` holds an importance per unit of layer l, shaped like the keep values
    (``head (H,)``, ``qk``/``v`` ``(H, head_dim)``, ``neuron (hidden,)``, ``attn_in``/``mlp_in``
    ``(D,)``, ``attn``/``ffn`` scalars); a family left ``None`` (or not searched) is kept whole.
    Scores must be comparable across families: the greedy trades them per unit of cost saved.
    When even the smallest allowed subnet exceeds the target, raises ValueError, or with
    ``strict=False`` returns that smallest subnet (a repair that must yield something valid).
    """
    if len(scores) != space.depth:
        raise ValueError(f"expected scores for {space.depth} layers, got {len(scores)}")
    layers = [
        _initial(space, shape, s, _pricing(space, i, cost))
        for i, (shape, s) in enumerate(zip(space.layers, scores, strict=True))
    ]
    total = cost.fixed(space) + sum(layer.cost() for layer in layers)
    counter = itertools.count()
    heap: list[tuple[float, int, int, str, int]] = []

    def push(index: int, family: str, key: int = -1) -> None:
        step = _step(space, index, layers[index], scores[index], family, key)
        if step is not None:
            heapq.heappush(heap, (step[0], next(counter), index, family, key))

    for i in range(space.depth):
        for family, key in _groups(layers[i]):
            push(i, family, key)
    while total > target and heap:
        ratio, _, i, family, key = heapq.heappop(heap)
        step = _step(space, i, layers[i], scores[i], family, key)
        if step is None:
            continue
        if step[0] > ratio + 1e-12 and heap and step[0] > heap[0][0]:
            heapq.heappush(heap, (step[0], next(counter), i, family, key))  # stale: re-queue
            continue
        before = layers[i].cost()
        step[1]()  # apply
        total += layers[i].cost() - before
        push(i, family, key)
    if total > target and strict:
        raise ValueError(
            f"the smallest allowed subnet has {cost.describe(total)}, above the target "
            f"{cost.describe(target)}"
        )
    return Subnet(tuple(_to_layer_keep(layer) for layer in layers)).validate(space)


def cheapest(space: SearchSpace, cost: CostModel = MACS) -> Subnet:
    """The smallest subnet the space allows under ``cost``: the floor of every budget."""
    return select_to_budget(space, space.dense_keep(), 0.0, strict=False, cost=cost)


def _initial(
    space: SearchSpace,
    shape: LayerShape,
    s: BlockKeep,
    price: Callable[[_Layer], float],
) -> _Layer:
    heads = _ranked(s.head if space.searches(Unit.HEAD) else None, shape.num_heads)
    return _Layer(
        shape=shape,
        price=price,
        heads=heads,
        qk={h: _ranked(_row(s.qk, h, space, Unit.QK_DIM), shape.head_dim) for h in heads},
        v={h: _ranked(_row(s.v, h, space, Unit.V_DIM), shape.head_dim) for h in heads},
        neurons=_ranked(s.neuron if space.searches(Unit.NEURON) else None, shape.mlp_hidden),
        attn_in=_ranked(s.attn_in if space.searches(Unit.ATTN_IN) else None, shape.embed_dim),
        mlp_in=_ranked(s.mlp_in if space.searches(Unit.MLP_IN) else None, shape.embed_dim),
    )


def _row(
    values: torch.Tensor | None, head: int, space: SearchSpace, unit: Unit
) -> torch.Tensor | None:
    return None if values is None or not space.searches(unit) else values[head]


def _groups(layer: _Layer) -> list[tuple[str, int]]:
    groups: list[tuple[str, int]] = [
        ("heads", -1),
        ("neurons", -1),
        ("attn_in", -1),
        ("mlp_in", -1),
    ]
    groups += [("qk", h) for h in layer.heads] + [("v", h) for h in layer.heads]
    return groups


def _step(
    space: SearchSpace, index: int, layer: _Layer, scores: BlockKeep, family: str, key: int
) -> _Step | None:
    """(score lost per unit of cost saved, apply) of the next allowed shrink of a group, or
    None."""
    shape = layer.shape
    if family in ("qk", "v"):
        unit = Unit.QK_DIM if family == "qk" else Unit.V_DIM
        dims = getattr(layer, family).get(key)
        values = getattr(scores, family)
        if key not in layer.heads or values is None or not space.searches(unit):
            return None
        fewer = _counts_below(space, len(dims), space.min_dims(index), allow_zero=False)
        return _shrink(layer, dims, fewer, values[key])
    if family == "neurons":
        if not layer.neurons:
            return None
        branch = space.searches(Unit.FFN_BLOCK) and (scores.neuron, scores.ffn) != (None, None)
        counts: Iterable[int] = [0] if branch else []
        if space.searches(Unit.NEURON) and scores.neuron is not None:
            counts = _counts_below(space, len(layer.neurons), space.min_neurons(index), branch)
        return _shrink(layer, layer.neurons, counts, scores.neuron, scores.ffn)
    if family == "heads":
        if not layer.heads:
            return None
        minimum = min(space.min_heads, shape.num_heads)
        drops: list[tuple[list[int], bool]] = []  # (heads dropped, the whole branch?)
        if space.searches(Unit.HEAD) and scores.head is not None:  # the least important first
            kept = range(len(layer.heads) - 1, minimum - 1, -1)
            drops += [(layer.heads[n:], False) for n in kept]
        if space.searches(Unit.ATTN_BLOCK) and (scores.head, scores.attn) != (None, None):
            drops.append((list(layer.heads), True))
        return _drop_heads(layer, drops, scores)
    kept = getattr(layer, family)  # attn_in / mlp_in
    unit = Unit.ATTN_IN if family == "attn_in" else Unit.MLP_IN
    values = getattr(scores, family)
    if not space.searches(unit) or values is None:
        return None
    fewest = space.allowed_kept(1, shape.embed_dim, rounding="up")  # one step of round_to
    return _shrink(layer, kept, _counts_below(space, len(kept), fewest, False), values)


def _next_count(space: SearchSpace, count: int, minimum: int, allow_zero: bool) -> int | None:
    """The next smaller allowed kept count (>= minimum); below the minimum only 0, and only
    if the whole branch may go."""
    smaller = space.allowed_kept(count - 1, count, minimum)
    if 1 <= smaller < count:
        return smaller
    return 0 if allow_zero and count > 0 else None


def _counts_below(space: SearchSpace, count: int, minimum: int, allow_zero: bool) -> Iterator[int]:
    """Every allowed kept count below ``count``, largest first (0 last, if allowed)."""
    while (smaller := _next_count(space, count, minimum, allow_zero)) is not None:
        yield smaller
        if smaller == 0:
            return
        count = smaller


def _cost_of(values: torch.Tensor | None, removed: list[int]) -> float:
    if values is None:
        return 0.0
    return float(sum(float(values[i]) for i in removed))


def _shrink(
    layer: _Layer,
    kept: list[int],
    counts: Iterable[int],
    values: torch.Tensor | None,
    branch_score: torch.Tensor | None = None,
) -> _Step | None:
    """The step to the first of ``counts`` (largest first) that saves cost. Under a measured
    latency a step can save nothing (a slow width, a flat stretch of the table): the step then
    spans it, so one such point can neither stop a group shrinking nor keep its branch alive."""
    before, full = layer.cost(), kept[:]
    for new in counts:
        del kept[new:]
        saved = before - layer.cost()
        kept[:] = full
        if saved > 0:
            branch = 0.0 if branch_score is None or new else float(branch_score)
            lost = _cost_of(values, full[new:]) + branch

            def apply(new: int = new) -> None:
                del kept[new:]

            return max(lost, 0.0) / saved, apply
    return None


def _drop_heads(
    layer: _Layer, drops: Sequence[tuple[list[int], bool]], scores: BlockKeep
) -> _Step | None:
    """The first of ``drops`` (fewest heads first; ``True``: the whole branch) that saves cost
    (see :func:`_shrink`)."""
    before = layer.cost()
    for heads, branch in drops:
        kept = [h for h in layer.heads if h not in heads]
        saved = before - layer.cost(kept)
        if saved > 0:
            attn = float(scores.attn) if branch and scores.attn is not None else 0.0
            lost = _cost_of(scores.head, heads) + attn

            def apply(kept: list[int] = kept) -> None:
                layer.heads[:] = kept

            return max(lost, 0.0) / saved, apply
    return None


def _to_layer_keep(layer: _Layer) -> LayerKeep:
    full = layer.shape.embed_dim
    return LayerKeep(
        heads=tuple(
            HeadKeep(h, tuple(sorted(layer.qk[h])), tuple(sorted(layer.v[h])))
            for h in sorted(layer.heads)
        ),
        neurons=tuple(sorted(layer.neurons)),
        attn_in=None if len(layer.attn_in) == full else tuple(sorted(layer.attn_in)),
        mlp_in=None if len(layer.mlp_in) == full else tuple(sorted(layer.mlp_in)),
    )


# ---------------------------------------------------------------- threshold selection
@dataclass(frozen=True)
class Bisection(Generic[T]):
    """Where a nested family of masks meets a target (MACs, or the cost model's unit)."""

    value: T  # the least pruning parameter whose masks meet the target (``high`` if none does)
    keeps: list[BlockKeep]  # the masks at ``value``
    macs: float  # their cost (MACs for the default cost model)
    feasible: bool  # False: even ``high`` misses the target (``keeps`` are its masks)


@overload
def bisect_to_budget(
    space: SearchSpace,
    keeps_at: Callable[[int], Sequence[BlockKeep]],
    target: float,
    high: int,
    steps: None = None,
    cost: CostModel = ...,
) -> Bisection[int]: ...
@overload
def bisect_to_budget(
    space: SearchSpace,
    keeps_at: Callable[[float], Sequence[BlockKeep]],
    target: float,
    high: float,
    steps: int,
    cost: CostModel = ...,
) -> Bisection[float]: ...
def bisect_to_budget(
    space: SearchSpace,
    keeps_at: Callable[[Any], Sequence[BlockKeep]],
    target: float,
    high: Any,
    steps: int | None = None,
    cost: CostModel = MACS,
) -> Bisection[Any]:
    """The least pruning parameter in ``[0, high]`` whose masks meet ``target`` MACs.

    ``keeps_at(t)`` gives the keep values at parameter t (units below a global threshold
    removed, a sparse ratio, ...); the masks must be nested, pruning more as t grows, so MACs
    never rise with t. Without ``steps`` t is an integer and the answer exact (the masks keep
    the most units that fit); with ``steps`` t is real and is halved that many times. ``high``
    is tried first: when it misses the target the result says so (``feasible`` False) and the
    caller decides (an error, or a repair).
    """

    best: list[Bisection[Any]] = []

    def fits(value: Any) -> bool:
        keeps = list(keeps_at(value))
        macs = float(total_cost(cost, space, keeps))
        if macs <= target or not best:  # the least feasible so far, or high's masks
            best[:] = [Bisection(value, keeps, macs, feasible=macs <= target)]
        return macs <= target

    if not fits(high):
        return best[-1]
    if steps is None:  # integers: the exact least value
        low = 0
        while low < high:
            middle = (low + high) // 2
            high, low = (middle, low) if fits(middle) else (high, middle + 1)
    else:
        real_low = 0.0
        for _ in range(steps):
            middle = (real_low + high) / 2
            high, real_low = (middle, real_low) if fits(middle) else (high, middle)
    return best[-1]


def survivors(values: Sequence[torch.Tensor], pruned: int) -> list[torch.Tensor]:
    """Which entries survive removing the ``pruned`` lowest of all ``values`` together: one
    global threshold (ties: the earlier entry of the concatenation goes first). Boolean
    tensors shaped like ``values``."""
    pool = torch.cat([v.flatten() for v in values])
    alive = torch.ones(pool.numel(), dtype=torch.bool)
    alive[torch.argsort(pool, stable=True)[:pruned]] = False
    parts = alive.split([v.numel() for v in values])
    return [a.reshape(v.shape) for a, v in zip(parts, values, strict=True)]


def top_kept(scores: torch.Tensor, count: int) -> torch.Tensor:
    """0/1 (float64) keep values of the ``count`` highest of a 1-D score vector (ties: the
    lower index)."""
    keep = torch.zeros(scores.shape[-1], dtype=torch.float64)
    keep[torch.argsort(-scores, stable=True)[:count]] = 1.0
    return keep
