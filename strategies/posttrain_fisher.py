"""posttrain, stage 1: calibration data and the diagonal Fisher of mask variables (the method
and its choices: ``strategies/posttrain.py``)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from automl_hiap import layout
from automl_hiap.errors import UserError
from automl_hiap.space import UNIT_FIELD, BlockKeep, LayerShape, SearchSpace, Unit

KEY = "strategy.params.calibration_images"


# ---------------------------------------------------------------- calibration data
def calibration_loader(
    dataset: Dataset[Any], count: int, batch_size: int, seed: int
) -> DataLoader[Any]:
    """The first ``count`` images of a seeded permutation of ``dataset``, in a fixed order,
    without augmentation where the dataset has an ``augment`` switch."""
    size = len(dataset)  # type: ignore[arg-type]
    if count > size:
        raise UserError(f"{KEY}: {count} requested, the training split has only {size} images")
    if getattr(dataset, "augment", False):
        dataset = copy.copy(dataset)
        dataset.augment = False  # type: ignore[attr-defined]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
    return DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False)


def _split(batch: Any) -> tuple[Tensor, Tensor | None]:
    """(images, labels or None) of a batch from a dataset of images or (image, label) pairs."""
    if isinstance(batch, Tensor):
        return batch, None
    images = batch[0]
    labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    return images, labels


# ---------------------------------------------------------------- stage 1: Fisher
@dataclass
class Calibration:
    """What one pass over the calibration images collects."""

    fisher: list[dict[Unit, Tensor]]  # per layer, per searched unit: Σ_images g² (float64)
    grads: list[dict[Unit, Tensor]] | None  # per-image unit gradients (images, *unit shape)
    stream: Tensor  # the inputs of the first block (images, tokens, width)
    logits: Tensor  # the dense model's outputs (images, classes)
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return int(self.stream.shape[0])


def _index_map(shape: LayerShape, unit: Unit, where: layout.Slice) -> Tensor:
    """For every position along ``where``'s axis, the (flat) unit index whose gate covers it,
    or -1: ``layout.expand`` of the unit indices."""
    count = math.prod(layout.unit_shape(shape, unit))
    values = torch.arange(count, dtype=torch.float64)
    return layout.expand(shape, unit, where, values, fill=-1.0).round().long()


def unit_gradients(shape: LayerShape, unit: Unit, axis_grads: Tensor) -> Tensor:
    """Per-image gradients of one unit kind's keep values, from the per-image gradients of a
    probe along the axis its gate acts on (``(images, axis length)``): the sum over the
    positions each unit covers. Shaped ``(images, *unit shape)``."""
    where = layout.GATES[unit]
    unit_shape = layout.unit_shape(shape, unit)
    if unit_shape == ():  # a branch: its gate scales the whole axis
        return axis_grads.sum(-1)
    index = _index_map(shape, unit, where).to(axis_grads.device)
    valid = index >= 0
    out = axis_grads.new_zeros(axis_grads.shape[0], math.prod(unit_shape))
    out.index_add_(1, index[valid], axis_grads[:, valid])
    return out.reshape(axis_grads.shape[0], *unit_shape)


class _Probes:
    """Ones with a batch dimension multiplied in where each searched unit's gate acts, so the
    gradient of a summed loss w.r.t. a probe holds every image's own gradient."""

    def __init__(self, model: nn.Module, space: SearchSpace, units: Sequence[Unit]) -> None:
        self.axes = sorted(
            {(layout.GATES[u].linear, layout.GATES[u].axis) for u in units},
            key=layout.gated_axes().index,
        )
        self.values: dict[tuple[int, str, int], Tensor] = {}
        self._handles: list[Any] = []
        for i, block in enumerate(layout.blocks(model)):
            for name, axis in self.axes:
                module = layout.linear(block, name)
                if axis == layout.COLUMNS:
                    self._handles.append(module.register_forward_pre_hook(self._pre(i, name)))
                else:
                    self._handles.append(module.register_forward_hook(self._post(i, name)))

    def _probe(self, key: tuple[int, str, int], like: Tensor) -> Tensor:
        probe = like.new_ones(like.shape[0], *([1] * (like.dim() - 2)), like.shape[-1])
        probe.requires_grad_(True)
        self.values[key] = probe
        return probe

    def _pre(self, layer: int, name: str) -> Callable[..., Any]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            return (x * self._probe((layer, name, layout.COLUMNS), x), *args[1:])

        return hook

    def _post(self, layer: int, name: str) -> Callable[..., Any]:
        def hook(_: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            return out * self._probe((layer, name, layout.ROWS), out)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def searched_units(space: SearchSpace) -> list[Unit]:
    return [u for u in layout.GATES if space.searches(u)]


@contextmanager
def _capture(module: nn.Module, store: dict[str, Tensor], key: str) -> Iterator[None]:
    """Record the first input of ``module`` at each forward (detached) under ``key``."""

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        store[key] = args[0].detach()

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the wanted input is recorded."""


def _input_of(module: nn.Module, run: nn.Module, x: Tensor) -> Tensor:
    """The input ``module`` receives while ``run`` computes on ``x``; the forward stops there
    (nothing after it is computed). Hooks attached before (masks) have already acted on it."""
    store: dict[str, Tensor] = {}

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        store["x"] = args[0].detach()
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        run(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return store["x"]


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not progress)


def collect_fisher(
    model: nn.Module,
    space: SearchSpace,
    loader: DataLoader[Any],
    labels: bool,
    seed: int,
    keep_grads: bool,
    device: torch.device,
    progress: bool = False,
) -> Calibration:
    """Stage 1: the diagonal Fisher of every searched unit's mask over the calibration images
    (per-image gradients of the cross-entropy with the true labels, or with labels drawn from
    the dense predictions when ``labels`` is False), the first block's inputs and the dense
    logits. ``keep_grads`` also keeps the per-image unit gradients (for rearrangement)."""
    started = time.perf_counter()
    units = searched_units(space)
    blocks = layout.blocks(model)
    fisher: list[dict[Unit, Tensor]] = [
        {u: torch.zeros(layout.unit_shape(s, u), dtype=torch.float64) for u in units}
        for s in space.layers
    ]
    grads: list[dict[Unit, list[Tensor]]] = [{u: [] for u in units} for _ in space.layers]
    streams: list[Tensor] = []
    outputs: list[Tensor] = []
    sampler = torch.Generator().manual_seed(seed)
    store: dict[str, Tensor] = {}
    probes = _Probes(model, space, units)
    training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # only the probes' gradients are needed: no weight gradients
        p.requires_grad_(False)
    bar = _bar(len(loader), "posttrain fisher", progress)
    try:
        with _capture(blocks[0], store, "stream"), torch.enable_grad():
            for batch in loader:
                images, targets = _split(batch)
                if labels and targets is None:
                    raise UserError(
                        "strategy.params.labels: the calibration images have no labels; "
                        "set labels: false for the label-free mode"
                    )
                probes.values.clear()
                logits = model(images.to(device))
                if not labels:  # one label per image from the dense prediction (seeded)
                    predicted = torch.softmax(logits.detach().double().cpu(), -1)
                    targets = torch.multinomial(predicted, 1, generator=sampler).squeeze(1)
                assert targets is not None
                loss = F.cross_entropy(logits, targets.to(device), reduction="sum")
                keys = list(probes.values)
                found = torch.autograd.grad(
                    loss, [probes.values[k] for k in keys], allow_unused=True
                )
                by_key = dict(zip(keys, found, strict=True))
                for i, shape in enumerate(space.layers):
                    for unit in units:
                        where = layout.GATES[unit]
                        g = by_key.get((i, where.linear, where.axis))
                        if g is None:
                            continue
                        g = g.detach().reshape(g.shape[0], -1).double()
                        per_image = unit_gradients(shape, unit, g)
                        fisher[i][unit] += per_image.square().sum(0).cpu()
                        if keep_grads:
                            grads[i][unit].append(per_image.float().cpu())
                streams.append(store.pop("stream"))
                outputs.append(logits.detach())
                bar.update(1)
    finally:
        bar.close()
        probes.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.train(training)
    kept = None
    if keep_grads:
        kept = [{u: torch.cat(g[u]) for u in units if g[u]} for g in grads]
    return Calibration(
        fisher=fisher,
        grads=kept,
        stream=torch.cat(streams),
        logits=torch.cat(outputs),
        seconds=time.perf_counter() - started,
    )


def fisher_scores(space: SearchSpace, calibration: Calibration) -> list[BlockKeep]:
    """Unit scores for ``select_to_budget``: each unit's diagonal Fisher; a branch gets the part
    of its own Fisher its units do not already account for (``max(0, F_branch − Σ F_unit)``)."""
    scores = []
    for fisher in calibration.fisher:
        values: dict[str, Tensor] = {UNIT_FIELD[u]: f for u, f in fisher.items()}
        for branch, inner in ((Unit.ATTN_BLOCK, Unit.HEAD), (Unit.FFN_BLOCK, Unit.NEURON)):
            if branch in fisher:
                total = fisher[branch]
                if inner in fisher:
                    total = (total - fisher[inner].sum()).clamp_min(0.0)
                values[UNIT_FIELD[branch]] = total
        scores.append(BlockKeep(**values))
    return scores
