"""A subnet: the frozen keep/drop decision for every unit of a ViT.

Stored as kept indices (not masks) so a spec is readable and small, and so export can slice
weights directly. A layer with no heads has its attention branch removed; a layer with no
neurons has its FFN branch removed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from automl_hiap.atomic import write_json
from automl_hiap.errors import UserError
from automl_hiap.space import BlockKeep, FilledKeep, LayerShape, SearchSpace, Unit

FORMAT = "automl_hiap.subnet/1"


@dataclass(frozen=True)
class HeadKeep:
    """One kept head: its original index and the q/k and v dims it keeps."""

    index: int
    qk: tuple[int, ...]
    v: tuple[int, ...]


@dataclass(frozen=True)
class LayerKeep:
    """What one block keeps. ``attn_in``/``mlp_in`` None means every input column."""

    heads: tuple[HeadKeep, ...]
    neurons: tuple[int, ...]
    attn_in: tuple[int, ...] | None = None
    mlp_in: tuple[int, ...] | None = None

    @property
    def has_attn(self) -> bool:
        return bool(self.heads)

    @property
    def has_mlp(self) -> bool:
        return bool(self.neurons)


@dataclass(frozen=True)
class Subnet:
    layers: tuple[LayerKeep, ...]

    @classmethod
    def dense(cls, space: SearchSpace) -> Subnet:
        return cls.from_keep(space, space.dense_keep())

    @classmethod
    def from_keep(cls, space: SearchSpace, keeps: Sequence[BlockKeep]) -> Subnet:
        """Harden keep values: a unit is kept when its effective value is > 0.5."""
        if len(keeps) != space.depth:
            raise ValueError(f"expected {space.depth} layers of keep values, got {len(keeps)}")
        layers = []
        for shape, keep in zip(space.layers, keeps, strict=True):
            eff = keep.map(torch.Tensor.detach).effective(shape)
            heads = tuple(
                HeadKeep(h, _kept(eff.qk[h]), _kept(eff.v[h]))
                for h in range(shape.num_heads)
                if float(eff.head[h]) > 0.5
            )
            layers.append(
                LayerKeep(
                    heads=heads,
                    neurons=_kept(eff.neuron),
                    attn_in=_kept_or_all(eff.attn_in),
                    mlp_in=_kept_or_all(eff.mlp_in),
                )
            )
        return cls(tuple(layers))

    def to_keep(self, space: SearchSpace, dtype: torch.dtype = torch.float32) -> list[FilledKeep]:
        """0/1 keep values for every unit of every layer."""
        keeps = []
        like = torch.ones((), dtype=dtype)
        for shape, layer in zip(space.layers, self.layers, strict=True):
            k = BlockKeep().filled(shape, like=like)
            k.attn.fill_(float(layer.has_attn))
            k.ffn.fill_(float(layer.has_mlp))
            k.head.zero_()
            k.qk.zero_()
            k.v.zero_()
            for head in layer.heads:
                k.head[head.index] = 1.0
                k.qk[head.index, list(head.qk)] = 1.0
                k.v[head.index, list(head.v)] = 1.0
            k.neuron.zero_()
            k.neuron[list(layer.neurons)] = 1.0
            for name, kept in (("attn_in", layer.attn_in), ("mlp_in", layer.mlp_in)):
                if kept is not None:
                    values = getattr(k, name)
                    values.zero_()
                    values[list(kept)] = 1.0
            keeps.append(k)
        return keeps

    # ---------------------------------------------------------------- validation
    def problems(self, space: SearchSpace) -> list[str]:
        """Every way this subnet breaks the space's structure or constraints (empty if valid)."""
        if len(self.layers) != space.depth:
            return [f"expected {space.depth} layers, got {len(self.layers)}"]
        found: list[str] = []
        for i, (shape, layer) in enumerate(zip(space.layers, self.layers, strict=True)):
            found.extend(f"layer {i}: {p}" for p in _layer_problems(space, i, shape, layer))
        return found

    def validate(self, space: SearchSpace) -> Subnet:
        problems = self.problems(space)
        if problems:
            raise UserError("invalid subnet: " + "; ".join(problems[:5]))
        return self

    # ---------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "layers": [
                {
                    "heads": [
                        {"index": h.index, "qk": list(h.qk), "v": list(h.v)} for h in layer.heads
                    ],
                    "neurons": list(layer.neurons),
                    "attn_in": None if layer.attn_in is None else list(layer.attn_in),
                    "mlp_in": None if layer.mlp_in is None else list(layer.mlp_in),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subnet:
        if data.get("format") != FORMAT:
            raise UserError(
                f"not a subnet spec: expected format {FORMAT!r}, got {data.get('format')!r}"
            )
        try:
            return cls(
                tuple(
                    LayerKeep(
                        heads=tuple(
                            HeadKeep(int(h["index"]), _ints(h["qk"]), _ints(h["v"]))
                            for h in layer["heads"]
                        ),
                        neurons=_ints(layer["neurons"]),
                        attn_in=None if layer.get("attn_in") is None else _ints(layer["attn_in"]),
                        mlp_in=None if layer.get("mlp_in") is None else _ints(layer["mlp_in"]),
                    )
                    for layer in data["layers"]
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed subnet spec: {exc!r}") from None

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Subnet:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read subnet spec: {exc}") from None
        return cls.from_dict(data)

    def describe(self) -> list[dict[str, Any]]:
        """Per-layer kept counts, for tables and plots."""
        return [
            {
                "heads": len(layer.heads),
                "qk_dims": [len(h.qk) for h in layer.heads],
                "v_dims": [len(h.v) for h in layer.heads],
                "neurons": len(layer.neurons),
                "attn_in": None if layer.attn_in is None else len(layer.attn_in),
                "mlp_in": None if layer.mlp_in is None else len(layer.mlp_in),
            }
            for layer in self.layers
        ]


def _kept(values: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(values > 0.5).flatten().tolist())


def _kept_or_all(values: torch.Tensor) -> tuple[int, ...] | None:
    kept = _kept(values)
    return None if len(kept) == values.numel() else kept


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _layer_problems(space: SearchSpace, i: int, shape: LayerShape, layer: LayerKeep) -> list[str]:
    problems: list[str] = []
    hd, heads = shape.head_dim, shape.num_heads
    indices = [h.index for h in layer.heads]
    if sorted(set(indices)) != indices or any(not 0 <= h < heads for h in indices):
        problems.append(f"head indices must be distinct, sorted and in [0, {heads}): {indices}")
    if not layer.has_attn and not space.searches(Unit.ATTN_BLOCK):
        problems.append("attention branch removed but attn_block is not searched")
    if layer.has_attn:
        if len(layer.heads) < min(space.min_heads, heads):
            problems.append(f"{len(layer.heads)} heads kept, min_heads is {space.min_heads}")
        if len(layer.heads) != heads and not space.searches(Unit.HEAD):
            problems.append("heads removed but head is not searched")
    min_dims = space.min_dims(i)
    for head in layer.heads:
        for part, dims, unit in (("qk", head.qk, Unit.QK_DIM), ("v", head.v, Unit.V_DIM)):
            if sorted(set(dims)) != list(dims) or any(not 0 <= d < hd for d in dims):
                problems.append(f"head {head.index} {part} dims must be distinct, sorted, < {hd}")
            elif len(dims) != hd and not space.searches(unit):
                problems.append(f"head {head.index} {part} dims removed but {unit} is not searched")
            elif not space.allowed_count(len(dims), hd, min_dims):
                problems.append(
                    f"head {head.index} keeps {len(dims)} {part} dims: expected {hd} or a "
                    f"multiple of {space.round_to} >= {min_dims}"
                )
    hidden = shape.mlp_hidden
    neurons = list(layer.neurons)
    if not layer.has_mlp and not space.searches(Unit.FFN_BLOCK):
        problems.append("FFN branch removed but ffn_block is not searched")
    if layer.has_mlp:
        if sorted(set(neurons)) != neurons or any(not 0 <= n < hidden for n in neurons):
            problems.append(f"neuron indices must be distinct, sorted and in [0, {hidden})")
        elif len(neurons) != hidden and not space.searches(Unit.NEURON):
            problems.append("neurons removed but neuron is not searched")
        elif not space.allowed_count(len(neurons), hidden, space.min_neurons(i)):
            problems.append(
                f"{len(neurons)} neurons kept: expected {hidden} or a multiple of "
                f"{space.round_to} >= {space.min_neurons(i)}"
            )
    for name, kept, unit in (
        ("attn_in", layer.attn_in, Unit.ATTN_IN),
        ("mlp_in", layer.mlp_in, Unit.MLP_IN),
    ):
        if kept is None:
            continue
        columns = list(kept)
        if not space.searches(unit):
            problems.append(f"{name} columns removed but {unit} is not searched")
        elif not columns or sorted(set(columns)) != columns or columns[-1] >= shape.embed_dim:
            problems.append(f"{name} must be distinct sorted indices in [0, {shape.embed_dim})")
    return problems


def random_subnet(
    space: SearchSpace,
    generator: torch.Generator,
    keep_low: float = 0.2,
    keep_high: float = 1.0,
    uniform: bool = False,
) -> Subnet:
    """A random valid subnet: each searched unit family keeps a random fraction in
    [keep_low, keep_high] (the same fraction everywhere if ``uniform``), chosen units random.

    For tests and benchmarks: it exercises every shape the space allows.
    """

    def fraction() -> float:
        return keep_low + (keep_high - keep_low) * float(torch.rand((), generator=generator))

    shared = fraction() if uniform else None

    def pick(full: int, minimum: int, searched: bool) -> tuple[int, ...]:
        if not searched:
            return tuple(range(full))
        count = space.nearest_allowed((shared or fraction()) * full, full, minimum)
        chosen = (
            torch.randperm(full, generator=generator)[:count]
            if not uniform
            else torch.arange(count)
        )
        return tuple(sorted(chosen.tolist()))

    layers = []
    for i, shape in enumerate(space.layers):
        drop = (torch.rand(2, generator=generator) < 0.15) & (not uniform)
        head_ids = pick(
            shape.num_heads, min(space.min_heads, shape.num_heads), space.searches(Unit.HEAD)
        )
        heads = tuple(
            HeadKeep(
                h,
                pick(shape.head_dim, space.min_dims(i), space.searches(Unit.QK_DIM)),
                pick(shape.head_dim, space.min_dims(i), space.searches(Unit.V_DIM)),
            )
            for h in head_ids
        )
        neurons = pick(shape.mlp_hidden, space.min_neurons(i), space.searches(Unit.NEURON))
        if space.searches(Unit.ATTN_BLOCK) and bool(drop[0]):
            heads = ()
        if space.searches(Unit.FFN_BLOCK) and bool(drop[1]):
            neurons = ()
        d = shape.embed_dim
        attn_in = pick(d, 1, space.searches(Unit.ATTN_IN)) if space.searches(Unit.ATTN_IN) else None
        mlp_in = pick(d, 1, space.searches(Unit.MLP_IN)) if space.searches(Unit.MLP_IN) else None
        layers.append(
            LayerKeep(
                heads,
                neurons,
                None if attn_in is None or len(attn_in) == d else attn_in,
                None if mlp_in is None or len(mlp_in) == d else mlp_in,
            )
        )
    return Subnet(tuple(layers))
