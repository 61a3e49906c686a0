"""Which weights each prunable unit owns in a block: the one place that knows the weight layout.

A timm ``Block`` has four Linears: ``attn.qkv`` (3·H·d, D), ``attn.proj`` (D, H·d), ``mlp.fc1``
(hidden, D) and ``mlp.fc2`` (D, hidden). timm fuses q, k and v into one weight: row
``part·(H·d) + head·d + j`` with part 0/1/2 = q/k/v, and ``proj``'s column ``head·d + j`` reads
v dim (head, j). A unit owns *slices*: a run of a Linear's rows (output features, with their
bias entries) or columns (input features):

========== ==================================================== =============================
unit       owns                                                 its gate acts on (``GATES``)
========== ==================================================== =============================
head       its d q, k and v rows of ``qkv``, its d ``proj`` cols ``proj`` columns
qk_dim     one q row and one k row of ``qkv`` (+ biases)         the q row (once in q·k)
v_dim      one v row of ``qkv`` (+ bias), one ``proj`` column    the ``proj`` column
neuron     one ``fc1`` row (+ bias), one ``fc2`` column          the ``fc2`` column
attn_in    one input column of ``qkv``                           that column
mlp_in     one input column of ``fc1``                           that column
attn_block its heads; ``proj``'s output and bias                 ``proj``'s output
ffn_block  its neurons; ``fc2``'s output and bias                ``fc2``'s output
========== ==================================================== =============================

Scores (energies, gradient reductions), masks, gates, slicing and calibration read these
tables instead of index arithmetic of their own; a new block family (separate q/k/v Linears,
another fusion order) changes this module and nothing else. Unit indices are the positions in
the unit's keep tensor (``space.BlockKeep``): ``(head, dim)`` row-major for q/k and v dims.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from automl_hiap.space import UNIT_FIELD, BlockKeep, LayerShape, Unit, layer_shape

ROWS, COLUMNS = 0, 1  # a Linear weight's axes: output features, input features

# the block's Linears: short name -> module path inside a timm Block
LINEARS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
# the block tensors units own: key -> (module path, parameter name); absent biases are left out
TENSORS = {
    f"{name}_{param[0]}": (path, param)
    for name, path in LINEARS.items()
    for param in ("weight", "bias")
}


@dataclass(frozen=True)
class Slice:
    """A run along one axis of a Linear: ``part`` counts runs of equal length from the start
    (qkv's rows hold three: q, k, v); every other axis is one run."""

    linear: str
    axis: int
    part: int = 0


# axes made of equal runs (timm's fused qkv rows: [q | k | v]); every other axis is one run
RUNS = {("qkv", ROWS): 3}
Q_ROWS, K_ROWS, V_ROWS = (Slice("qkv", ROWS, p) for p in range(3))
QKV_COLUMNS = Slice("qkv", COLUMNS)
PROJ_ROWS, PROJ_COLUMNS = Slice("proj", ROWS), Slice("proj", COLUMNS)
FC1_ROWS, FC1_COLUMNS = Slice("fc1", ROWS), Slice("fc1", COLUMNS)
FC2_ROWS, FC2_COLUMNS = Slice("fc2", ROWS), Slice("fc2", COLUMNS)

# the weights a unit removes when it goes (branches: their units, plus fixed parameters)
OWNED: dict[Unit, tuple[Slice, ...]] = {
    Unit.HEAD: (Q_ROWS, K_ROWS, V_ROWS, PROJ_COLUMNS),
    Unit.QK_DIM: (Q_ROWS, K_ROWS),
    Unit.V_DIM: (V_ROWS, PROJ_COLUMNS),
    Unit.NEURON: (FC1_ROWS, FC2_COLUMNS),
    Unit.ATTN_IN: (QKV_COLUMNS,),
    Unit.MLP_IN: (FC1_COLUMNS,),
}
# where a unit's keep value multiplies the computation so that a 0 equals the sliced model
# (masking): one place per unit; a branch gate scales its Linear's whole output, bias included
GATES: dict[Unit, Slice] = {
    Unit.ATTN_IN: QKV_COLUMNS,
    Unit.QK_DIM: Q_ROWS,
    Unit.HEAD: PROJ_COLUMNS,
    Unit.V_DIM: PROJ_COLUMNS,
    Unit.ATTN_BLOCK: PROJ_ROWS,
    Unit.MLP_IN: FC1_COLUMNS,
    Unit.NEURON: FC2_COLUMNS,
    Unit.FFN_BLOCK: FC2_ROWS,
}
# the units whose own slices ``weight_masks`` zeroes (heads and branches act through them)
MICRO_OWNERS = (Unit.QK_DIM, Unit.V_DIM, Unit.NEURON, Unit.ATTN_IN, Unit.MLP_IN)
BRANCH_OUTPUT = {"proj": Unit.ATTN_BLOCK, "fc2": Unit.FFN_BLOCK}  # Linear whose bias a branch owns
BRANCH_MEMBERS = {Unit.ATTN_BLOCK: Unit.HEAD, Unit.FFN_BLOCK: Unit.NEURON}  # what a branch holds


def axis_length(shape: LayerShape, linear: str, axis: int) -> int:
    """Rows (axis 0) or columns (axis 1) of one of the block's Linears."""
    width, heads = shape.embed_dim, shape.num_heads * shape.head_dim
    sizes = {"qkv": (3 * heads, width), "proj": (width, heads), "fc1": (shape.mlp_hidden, width)}
    sizes["fc2"] = (width, shape.mlp_hidden)
    return sizes[linear][axis]


def _run(shape: LayerShape, where: Slice) -> tuple[int, int]:
    """(start, length) of a slice along its axis: every slice is one contiguous run."""
    runs = RUNS.get((where.linear, where.axis), 1)
    length = axis_length(shape, where.linear, where.axis) // runs
    return where.part * length, length


def _width(shape: LayerShape, unit: Unit) -> int:
    """Consecutive indices per unit in each of its slices (a head spans its d dims)."""
    return shape.head_dim if unit == Unit.HEAD else 1


def unit_shape(shape: LayerShape, unit: Unit) -> tuple[int, ...]:
    """Shape of the unit's keep values (``BlockKeep``)."""
    return tuple(getattr(BlockKeep().filled(shape), UNIT_FIELD[unit]).shape)


def blocks(model: nn.Module) -> list[Any]:
    """A ViT's blocks (typed loosely: timm's submodules are reached by attribute)."""
    return list(model.blocks)  # type: ignore[arg-type]


def block_shape(block: nn.Module, index: int = 0) -> LayerShape:
    """The shapes of one block (checked to be of a supported kind)."""
    return layer_shape(index, block)


def linear(block: nn.Module, name: str) -> nn.Linear:
    """One of the block's Linears by short name (``LINEARS``)."""
    module = block.get_submodule(LINEARS[name])
    assert isinstance(module, nn.Linear)
    return module


def module_name(layer: int, name: str) -> str:
    """The Linear's qualified name in a timm VisionTransformer (``blocks.{layer}.attn.qkv``)."""
    return f"blocks.{layer}.{LINEARS[name]}"


def block_tensors(block: nn.Module) -> dict[str, Tensor]:
    """The block's live parameters by ``TENSORS`` key (absent biases left out)."""
    tensors = {}
    for key, (path, param) in TENSORS.items():
        value = getattr(block.get_submodule(path), param)
        if value is not None:
            tensors[key] = value
    return tensors


def indices(
    shape: LayerShape,
    unit: Unit,
    linear: str,
    axis: int,
    units: Iterable[int | tuple[int, int]] | None = None,
) -> list[int]:
    """Indices along ``linear``'s ``axis`` that the given units own, slice by slice (qkv rows of
    q/k dims: the q rows, then the k rows), in the order given; all units when None."""
    width = _width(shape, unit)
    if units is None:
        flat = list(range(_count(shape, unit)))
    else:
        flat = [u if isinstance(u, int) else u[0] * shape.head_dim + u[1] for u in units]
    result: list[int] = []
    for where in OWNED[unit]:
        if (where.linear, where.axis) == (linear, axis):
            start, _ = _run(shape, where)
            result += [start + u * width + j for u in flat for j in range(width)]
    return result


def _count(shape: LayerShape, unit: Unit) -> int:
    return functools.reduce(operator.mul, unit_shape(shape, unit), 1)


def weight_count(shape: LayerShape, unit: Unit) -> int:
    """Weights one unit owns (biases not counted): to compare energies per weight."""
    width = _width(shape, unit)
    return sum(width * axis_length(shape, w.linear, 1 - w.axis) for w in OWNED[unit])


def expand(
    shape: LayerShape, unit: Unit, where: Slice, values: Tensor, fill: float = 1.0
) -> Tensor:
    """A vector along ``where``'s axis: the units' ``values`` on their indices, ``fill``
    elsewhere (differentiable; a 0-dim branch value is returned as it is: it scales all)."""
    if values.dim() == 0:
        return values
    flat = values.reshape(-1)
    width = _width(shape, unit)
    if width > 1:
        flat = flat.repeat_interleave(width)
    start, length = _run(shape, where)
    total = axis_length(shape, where.linear, where.axis)
    if start == 0 and length == total:
        return flat
    return torch.cat(
        [flat.new_full((start,), fill), flat, flat.new_full((total - start - length,), fill)]
    )


def gate(shape: LayerShape, keep: BlockKeep, linear: str, axis: int) -> Tensor | None:
    """The product of the keep values whose gate acts on ``linear``'s ``axis`` (None: all 1)."""
    factors = [
        expand(shape, unit, where, value)
        for unit, where in GATES.items()
        if (where.linear, where.axis) == (linear, axis)
        and (value := _gate_value(keep, unit)) is not None
    ]
    return functools.reduce(operator.mul, factors) if factors else None


def _gate_value(keep: BlockKeep, unit: Unit) -> Tensor | None:
    """A unit's keep value as its gate applies it. A branch also goes with its last unit (the
    slice then drops it, bias and all), so its gate carries "any unit kept" (> 0.5, the
    hardening rule of ``Subnet.from_keep``) as a 0/1 factor: the hardened masked model equals
    the slice, and soft gates train as before while any unit of the branch is open."""
    own = getattr(keep, UNIT_FIELD[unit])
    member = BRANCH_MEMBERS.get(unit)
    members = None if member is None else getattr(keep, UNIT_FIELD[member])
    if members is None:
        return own
    alive = (members.detach() > 0.5).any().to(members.dtype)
    return alive if own is None else own * alive


def gated_axes() -> list[tuple[str, int]]:
    """The (Linear, axis) pairs some gate acts on, in block order."""
    return list(dict.fromkeys((where.linear, where.axis) for where in GATES.values()))


def weight_masks(shape: LayerShape, keep: BlockKeep) -> dict[str, Tensor]:
    """0/1 multipliers of every block tensor (``TENSORS`` keys) that zero exactly what the
    units with keep 0 own. ``keep`` must be effective (``BlockKeep.effective``: micro under
    macro), so a closed head or branch has closed dims."""
    filled = keep.filled(shape)
    masks = {}
    for name in LINEARS:
        factors = []
        for axis in (ROWS, COLUMNS):
            vector = filled.attn.new_ones(axis_length(shape, name, axis))
            for unit in MICRO_OWNERS:
                for where in OWNED[unit]:
                    if (where.linear, where.axis) == (name, axis):
                        start, length = _run(shape, where)
                        values = getattr(filled, UNIT_FIELD[unit]).reshape(-1)
                        vector[start : start + length] *= values
            factors.append(vector)
        rows, columns = factors
        masks[f"{name}_w"] = rows[:, None] * columns[None, :]
        branch = BRANCH_OUTPUT.get(name)
        masks[f"{name}_b"] = rows if branch is None else rows * getattr(filled, UNIT_FIELD[branch])
    return masks


def unit_view(shape: LayerShape, unit: Unit, where: Slice, tensor: Tensor, dim: int) -> Tensor:
    """``tensor`` (indexed along ``dim`` like ``where``'s axis) cut to the slice, with that
    dimension split into the unit's keep shape (heads: ``(H, d)``)."""
    start, length = _run(shape, where)
    inner = unit_shape(shape, unit) + ((_width(shape, unit),) if _width(shape, unit) > 1 else ())
    dim = dim % tensor.dim()
    cut = tensor.narrow(dim, start, length)
    return cut.reshape(*tensor.shape[:dim], *inner, *tensor.shape[dim + 1 :])


Reduce = Callable[[Tensor, int], Tensor]  # (weight-shaped tensor, axis to reduce) -> per index


def _sum(tensor: Tensor, axis: int) -> Tensor:
    return tensor.sum(axis)


def per_unit(
    shape: LayerShape,
    tensors: Mapping[str, Tensor],
    units: Iterable[Unit],
    reduce: Reduce = _sum,
    axis: int | None = None,
) -> dict[Unit, list[Tensor]]:
    """Per unit kind, one tensor (shaped like its keep values) per owned slice whose weight is
    in ``tensors`` (``TENSORS`` keys, e.g. ``{"qkv_w": grad}``; slices of absent weights, or
    along another ``axis`` than the one given, are skipped): ``reduce`` of that weight-shaped
    tensor over the other axis, plus the given bias-shaped tensor on rows (a unit owns its
    rows' biases). A head sums over its dims. Each tensor is reduced once per axis."""
    reduced: dict[tuple[str, int], Tensor] = {}
    result: dict[Unit, list[Tensor]] = {}
    for unit in units:
        parts = []
        for where in OWNED[unit]:
            weight = tensors.get(f"{where.linear}_w")
            if weight is None or axis not in (None, where.axis):
                continue
            key = (where.linear, where.axis)
            if key not in reduced:
                values = reduce(weight, 1 - where.axis)
                bias = tensors.get(f"{where.linear}_b")
                reduced[key] = values + bias if where.axis == ROWS and bias is not None else values
            view = unit_view(shape, unit, where, reduced[key], 0)
            parts.append(view.sum(-1) if _width(shape, unit) > 1 else view)
        result[unit] = parts
    return result


def energy(
    shape: LayerShape, tensors: Mapping[str, Tensor], units: Sequence[Unit]
) -> dict[Unit, Tensor]:
    """Per unit kind, the sum of squares (float64) of every weight and bias a unit owns."""
    squared = {key: t.detach().double().square() for key, t in tensors.items()}
    parts = per_unit(shape, squared, units)
    return {unit: functools.reduce(operator.add, values) for unit, values in parts.items()}
