"""The latency table of one device: what is measured, how, and the file it is kept in.

The profiler times the pieces an exported model is made of (``pruned_vit``'s branches, on
random weights: timing does not depend on them), on the target machine, at the batch size,
threads and dtype of the budget:

* the attention branch (norm, qkv, attention, proj, residual) on a grid of head counts and
  per-head q/k and v widths, and what splitting a layer's heads into two width groups adds
  (on the CPU each head shape is one attention call);
* the FFN branch (norm, fc1, activation, fc2, residual) on a grid of widths;
* the fixed part: the model with no blocks (patch embedding, tokens, final norm, head);
* the whole dense model, as a check of the fit.

Every point is timed with warm-up and interleaved repeats (``measure``); the median is kept.
A branch repeated alone in a loop runs faster than the same branch inside a model's forward
pass (its caches stay warm; nothing runs between): the table keeps one factor, ``in_model``,
that scales every block. It is fitted (least squares through the origin) on whole models timed
the way an exported model is, by themselves and interleaved with each other rather than with
the pieces: the dense model and two random subnets, one narrow and one wide, so one noisy
timing of one model does not set the scale of every prediction.
Between grid points a branch is interpolated multilinearly, so only the measured widths can
show up as slow; ``points`` sets how many. A table is valid only where it was measured: it is
keyed by device, torch version, threads, dtype, batch and tokens (:class:`DeviceKey`).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import json
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from automl_hiap.atomic import write_json
from automl_hiap.budget import Latency
from automl_hiap.errors import UserError
from automl_hiap.measure import Spread, time_calls
from automl_hiap.placement import Placement
from automl_hiap.pruned_vit import HeadGroup, PrunedAttention, PrunedBlock, PrunedMlp
from automl_hiap.slicing import build_blocks
from automl_hiap.space import LayerShape, SearchSpace, Unit
from automl_hiap.subnet import Subnet, random_subnet

FORMAT = 3  # of the table file (2: the in-model factor; 3: fitted on several whole models)
CALIBRATION_KEEPS = ((0.3, 0.6), (0.6, 0.9))  # keep-fraction ranges of the random subnets


@dataclass(frozen=True)
class DeviceKey:
    """Where a table holds. Two keys must be equal for a table to be used."""

    device: str
    torch: str
    threads: int
    dtype: str
    batch: int
    tokens: int

    @classmethod
    def here(cls, settings: Latency, tokens: int) -> DeviceKey:
        """The key of this machine for a latency budget's settings."""
        threads = settings.threads if settings.threads is not None else torch.get_num_threads()
        version = torch.__version__.split("+")[0]
        return cls(device_name(), version, threads, settings.dtype, settings.batch, tokens)

    def mismatch(self, other: DeviceKey) -> str | None:
        """``'threads: measured with 4, this run uses 2'`` for the first differing field."""
        for f in fields(self):
            theirs, ours = getattr(other, f.name), getattr(self, f.name)
            if theirs != ours:
                return f"{f.name}: measured with {theirs}, this run uses {ours}"
        return None


def device_name() -> str:
    """The CPU's model name (what a table is measured on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine() or "unknown")


@dataclass(frozen=True)
class BlockTable:
    """Measured milliseconds of the branches of one block shape."""

    shape: tuple[int, int, int, int]  # embed_dim, num_heads, head_dim, mlp_hidden
    heads: tuple[int, ...]  # grid of head counts (0: branch gone, 0 ms)
    qk: tuple[int, ...]  # grid of per-head q/k widths
    v: tuple[int, ...]  # grid of per-head v widths
    attn_ms: tuple[tuple[tuple[float, ...], ...], ...]  # [heads][qk][v]
    group_ms: float  # what one more head-width group adds to a layer
    ffn: tuple[int, ...]  # grid of FFN widths (0: branch gone, 0 ms)
    ffn_ms: tuple[float, ...]

    def attention(self, heads: Any, qk: Any, v: Any) -> Any:
        """Milliseconds at a head count and mean widths (floats, or tensors: differentiable)."""
        return _multilinear(self.attn_ms, (self.heads, self.qk, self.v), (heads, qk, v))

    def mlp(self, width: Any) -> Any:
        return _multilinear(self.ffn_ms, (self.ffn,), (width,))

    def ms(self, qk: Sequence[int], v: Sequence[int], neurons: int) -> float:
        """The block's branches as timed alone, from kept counts (per-head q/k and v widths,
        FFN neurons): the table at the head count and mean widths, plus the group term."""
        heads, total = len(qk), self.mlp(float(neurons))
        if heads:
            total += self.attention(float(heads), sum(qk) / heads, sum(v) / heads)
            total += (len(set(zip(qk, v, strict=True))) - 1) * self.group_ms
        return float(total)


@dataclass(frozen=True)
class LatencyTable:
    """A profiled device (see the module docstring); ``automl_hiap profile`` writes one."""

    key: DeviceKey
    fixed_ms: float
    blocks: tuple[BlockTable, ...]
    dense_ms: float  # the whole dense model, measured next to the pieces (a check of the fit)
    dense_iqr_ms: tuple[float, float]
    load_average: float | None
    # whole models' time in their blocks over the sum of their branches timed alone (fitted):
    # a branch repeated in a loop by itself runs faster than in a model's forward pass
    in_model: float = 1.0
    # the fit's points: (blocks' branches timed alone, whole model measured) in ms per model
    calibration: tuple[tuple[float, float], ...] = ()

    def block_of(self, shape: LayerShape) -> BlockTable:
        wanted = block_shape(shape)
        for table in self.blocks:
            if table.shape == wanted:
                return table
        raise UserError(f"latency table: no measurements for a block of shape {wanted}")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"format {data.get('format')!r}, expected {FORMAT}: written by another version, "
                "run automl_hiap profile again"
            )
        blocks = tuple(
            BlockTable(
                shape=tuple(b["shape"]),
                heads=tuple(b["heads"]),
                qk=tuple(b["qk"]),
                v=tuple(b["v"]),
                attn_ms=tuple(
                    tuple(tuple(map(float, row)) for row in plane) for plane in b["attn_ms"]
                ),
                group_ms=float(b["group_ms"]),
                ffn=tuple(b["ffn"]),
                ffn_ms=tuple(map(float, b["ffn_ms"])),
            )
            for b in data["blocks"]
        )
        return cls(
            key=DeviceKey(**data["key"]),
            fixed_ms=float(data["fixed_ms"]),
            blocks=blocks,
            dense_ms=float(data["dense_ms"]),
            dense_iqr_ms=tuple(data["dense_iqr_ms"]),
            load_average=data.get("load_average"),
            in_model=float(data["in_model"]),
            calibration=tuple((float(a), float(m)) for a, m in data["calibration"]),
        )

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_json(), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> LatencyTable:
        """Load a table file; one line naming the file on any problem."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"latency table {path}: cannot read it ({exc})") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"latency table {path}: not a latency table ({exc})") from None


# ---------------------------------------------------------------- interpolation
def _bracket(grid: Sequence[int], x: Any) -> tuple[int, Any]:
    """(i, w): x = (1 − w)·grid[i] + w·grid[i + 1], clamped to the grid's ends."""
    i = min(max(bisect.bisect_right(grid, float(x)) - 1, 0), len(grid) - 2)
    w = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, (w.clamp(0.0, 1.0) if isinstance(w, Tensor) else min(max(w, 0.0), 1.0))


def _multilinear(values: Any, grids: Sequence[Sequence[int]], point: Sequence[Any]) -> Any:
    """Piecewise-multilinear interpolation of a nested table (one axis per grid)."""
    if not grids:
        return values
    grid, rest, x = grids[0], grids[1:], point[0]
    if len(grid) == 1:
        return _multilinear(values[0], rest, point[1:])
    i, w = _bracket(grid, x)
    low = _multilinear(values[i], rest, point[1:])
    high = _multilinear(values[i + 1], rest, point[1:])
    return low + w * (high - low)


# ---------------------------------------------------------------- profiling
def block_shape(shape: LayerShape) -> tuple[int, int, int, int]:
    """What a block table is looked up by: embed_dim, num_heads, head_dim, mlp_hidden."""
    return (shape.embed_dim, shape.num_heads, shape.head_dim, shape.mlp_hidden)


def widths(space: SearchSpace, minimum: int, full: int, points: int) -> tuple[int, ...]:
    """``points`` allowed kept counts from ``minimum`` to ``full``, evenly spread."""
    if points <= 1 or minimum >= full:
        return (full,)
    wanted = (minimum + (full - minimum) * j / (points - 1) for j in range(points))
    return tuple(sorted({space.nearest_allowed(w, full, minimum) for w in wanted}))


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch CPU threads, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def block_grids(
    space: SearchSpace, index: int, points: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The measured points of block ``index``: head counts, q/k widths, v widths, FFN widths
    (0 where the space can remove the whole branch)."""
    shape = space.layers[index]
    heads: tuple[int, ...] = (shape.num_heads,)
    if space.searches(Unit.HEAD):
        heads = tuple(range(min(space.min_heads, shape.num_heads), shape.num_heads + 1))
    if space.searches(Unit.HEAD) or space.searches(Unit.ATTN_BLOCK):
        heads = (0, *(h for h in heads if h > 0))
    dims = space.min_dims(index)
    qk = widths(space, dims, shape.head_dim, points if space.searches(Unit.QK_DIM) else 1)
    v = widths(space, dims, shape.head_dim, points if space.searches(Unit.V_DIM) else 1)
    ffn: tuple[int, ...] = (shape.mlp_hidden,)
    if space.searches(Unit.NEURON):
        ffn = widths(space, space.min_neurons(index), shape.mlp_hidden, 2 * points)
    if space.searches(Unit.NEURON) or space.searches(Unit.FFN_BLOCK):
        ffn = (0, *(w for w in ffn if w > 0))
    return heads, qk, v, ffn


def profile(
    model: nn.Module,
    space: SearchSpace,
    settings: Latency,
    image_size: int,
    points: int = 5,
    repeats: int = 5,
    min_seconds: float = 0.05,
    say: Callable[[str], None] | None = None,
) -> LatencyTable:
    """Measure the tables of ``model`` (any weights) on this machine's CPU."""
    key = DeviceKey.here(settings, space.tokens)
    dtype = getattr(torch, settings.dtype)
    where = Placement(torch.device("cpu"))
    with threads(key.threads), torch.inference_mode():
        model = copy.deepcopy(model).to(dtype).eval()
        calls: dict[str, Callable[[], object]] = {}
        plans: dict[tuple[int, int, int, int], tuple[Any, ...]] = {}
        for i, shape in enumerate(space.layers):
            if block_shape(shape) in plans:
                continue
            grids = block_grids(space, i, points)
            plans[block_shape(shape)] = grids
            block = model.blocks[i]  # type: ignore[index]
            _branch_calls(calls, block, shape, grids, settings.batch, space.tokens, dtype)
        images = torch.randn(settings.batch, 3, image_size, image_size, dtype=dtype)
        stem = copy.deepcopy(model)
        stem.blocks = nn.Sequential()
        calls["fixed"] = lambda: stem(images)
        calls["dense"] = lambda: model(images)
        if say is not None:
            say(
                f"profiling {len(calls)} pieces x {repeats} repeats on {key.device}, "
                f"{key.threads} threads, batch {key.batch}, {key.dtype}"
            )
        timed = time_calls(calls, where, settings.batch, repeats, 1, min_seconds)
        subnets = {"dense": Subnet.dense(space)}
        generator = torch.Generator().manual_seed(0)
        for i, (low, high) in enumerate(CALIBRATION_KEEPS):
            subnets[f"subnet{i}"] = random_subnet(space, generator, low, high)
        wholes = {name: _timing_model(stem, model, s, dtype) for name, s in subnets.items()}
        calls = {name: (lambda w: lambda: w(images))(m) for name, m in wholes.items()}
        models = time_calls(calls, where, settings.batch, repeats, 1, min_seconds)
    ms = {name: timed.latency_ms(name).median for name in timed.seconds}
    blocks = []
    for shape_key, (heads, qk, v, ffn) in plans.items():
        tag = "x".join(map(str, shape_key))
        attn = tuple(
            tuple(tuple(ms[f"{tag}/attn/{h}/{a}/{b}"] if h else 0.0 for b in v) for a in qk)
            for h in heads
        )
        split = ms.get(f"{tag}/split2"), ms.get(f"{tag}/split1")
        group = 0.0 if None in split else max(0.0, split[0] - split[1])  # type: ignore[operator]
        mlp = tuple(ms[f"{tag}/ffn/{w}"] if w else 0.0 for w in ffn)
        blocks.append(BlockTable(shape_key, heads, qk, v, attn, group, ffn, mlp))
    dense = models.latency_ms("dense")
    table = LatencyTable(
        key=key,
        fixed_ms=ms["fixed"],
        blocks=tuple(blocks),
        dense_ms=dense.median,
        dense_iqr_ms=(dense.low, dense.high),
        load_average=timed.load_average,
    )
    fit = tuple(
        (_alone_ms(table, space, s), models.latency_ms(name).median) for name, s in subnets.items()
    )
    alone = sum(a * a for a, _ in fit)
    fitted = sum(a * (m - table.fixed_ms) for a, m in fit) / alone if alone > 0 else 1.0
    return dataclasses.replace(table, in_model=max(fitted, 1e-3), calibration=fit)


def _alone_ms(table: LatencyTable, space: SearchSpace, subnet: Subnet) -> float:
    """A subnet's blocks as the sum of their branches timed alone (no in-model factor)."""
    total = 0.0
    for shape, layer in zip(space.layers, subnet.layers, strict=True):
        qk = [len(h.qk) for h in layer.heads] if layer.has_attn else []
        v = [len(h.v) for h in layer.heads] if layer.has_attn else []
        total += table.block_of(shape).ms(qk, v, len(layer.neurons) if layer.has_mlp else 0)
    return total


def _timing_model(stem: nn.Module, model: nn.Module, subnet: Subnet, dtype: torch.dtype) -> Any:
    """``model``'s architecture shaped by ``subnet`` (fresh weights: timing ignores them)."""
    whole = copy.deepcopy(stem)
    whole.blocks = nn.Sequential(*build_blocks(model, subnet))
    return whole.to(dtype).eval()


def _branch_calls(
    calls: dict[str, Callable[[], object]],
    block: Any,
    shape: LayerShape,
    grids: tuple[tuple[int, ...], ...],
    batch: int,
    tokens: int,
    dtype: torch.dtype,
) -> None:
    """One timed call per grid point of a block shape's branches (exported modules)."""
    heads, qk, v, ffn = grids
    tag = "x".join(map(str, block_shape(shape)))
    x = torch.randn(batch, tokens, shape.embed_dim, dtype=dtype)

    def attention(groups: list[HeadGroup]) -> Callable[[], object]:
        attn = PrunedAttention(
            shape.embed_dim, groups, float(block.attn.scale), None, shape.qkv_bias, True
        )
        branch = PrunedBlock(
            copy.deepcopy(block.norm1), attn, copy.deepcopy(block.ls1), None, None, None
        )
        branch = branch.to(dtype).eval()
        return lambda: branch(x)

    for h in heads:
        for a in qk:
            for b in v:
                if h:
                    calls[f"{tag}/attn/{h}/{a}/{b}"] = attention([HeadGroup(h, a, b)])
    wide, narrow = (v[-1], v[-2]) if len(v) > 1 else (qk[-1], qk[-2]) if len(qk) > 1 else (0, 0)
    if shape.num_heads >= 2 and narrow:  # what a second width group adds: 2 groups vs 1
        half, rest = shape.num_heads // 2, shape.num_heads - shape.num_heads // 2
        mean = round((half * wide + rest * narrow) / shape.num_heads)
        if len(v) > 1:
            two = [HeadGroup(half, qk[-1], wide), HeadGroup(rest, qk[-1], narrow)]
            one = [HeadGroup(shape.num_heads, qk[-1], mean)]
        else:
            two = [HeadGroup(half, wide, v[-1]), HeadGroup(rest, narrow, v[-1])]
            one = [HeadGroup(shape.num_heads, mean, v[-1])]
        calls[f"{tag}/split2"], calls[f"{tag}/split1"] = attention(two), attention(one)
    for w in ffn:
        if w:
            mlp = PrunedMlp(shape.embed_dim, w, copy.deepcopy(block.mlp.act), None, shape.fc1_bias)
            branch = PrunedBlock(
                None, None, None, copy.deepcopy(block.norm2), mlp, copy.deepcopy(block.ls2)
            )
            branch = branch.to(dtype).eval()
            calls[f"{tag}/ffn/{w}"] = (lambda b: lambda: b(x))(branch)


def measure_latency(
    models: Mapping[str, nn.Module], key: DeviceKey, image_size: int, repeats: int = 7
) -> dict[str, Spread]:
    """Milliseconds per forward pass of each model where a table's key says (CPU), timed in
    one interleaved run: a machine whose speed drifts between minutes slows them all alike."""
    dtype = getattr(torch, key.dtype)
    with threads(key.threads), torch.inference_mode():
        runs = {name: copy.deepcopy(m).cpu().to(dtype).eval() for name, m in models.items()}
        x = torch.randn(key.batch, 3, image_size, image_size, dtype=dtype)
        calls = {name: (lambda r: lambda: r(x))(run) for name, run in runs.items()}
        timed = time_calls(calls, Placement(torch.device("cpu")), key.batch, repeats)
    return {name: timed.latency_ms(name) for name in models}
