"""Unit importances for one-shot selection: what removing a unit costs, for ``select_to_budget``.

A unit's removal deletes a *coupled group* of weights (``layout.OWNED``: a head's q, k and v
rows of ``qkv`` with their biases and its ``proj`` columns; a neuron's ``fc1`` row + bias and
``fc2`` column; ...). Every criterion here scores one number per weight and sums it over the
whole group, through ``layout.per_unit``, so no criterion knows timm's weight layout:

========== ============================================= ====================================
criterion  per weight w with gradient g                  why
========== ============================================= ====================================
energy     w²                                            data-free; today's magnitude score
taylor     |w · ḡ|  (ḡ: mean gradient of the batches)    first-order loss change of w → 0
fisher     Σ_b (w · g_b)²  (g_b: one batch's gradient)   diagonal Fisher of the removal
gradsq     Σ_b g_b²                                      diagonal Fisher of the weights
========== ============================================= ====================================

Gradients are of the cross-entropy on a few calibration batches of the *training* split. Two
choices decide how scores of different families meet in the greedy selection, and they are
settings because only measurement can choose them (``bench/selection.py``):

* ``normalize``: ``family`` divides each family's scores by its mean score per weight across
  the network (the energy criterion's historical rule: pretrained q/k weights are larger than
  v weights); ``none`` leaves them on one scale (a loss estimate is already comparable).
* ``tradeoff``: ``per_mac`` lets the greedy trade score lost per MAC saved; ``raw`` multiplies
  each unit's score by the MACs it saves, so the greedy removes by score alone.

A head's score is the sum of its q/k and v dims' (exactly its group, ``layout.OWNED``); a
branch adds what only it deletes, its output bias (``layout.BRANCH_OUTPUT``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from automl_hiap import layout
from automl_hiap.cost import unit_macs
from automl_hiap.space import BlockKeep, SearchSpace, Unit

Criterion = Literal["energy", "taylor", "fisher", "gradsq"]
Normalize = Literal["family", "none"]
Tradeoff = Literal["per_mac", "raw"]
CRITERIA: tuple[str, ...] = get_args(Criterion)
DATA_FREE = ("energy",)

# the micro families scored: BlockKeep field -> unit (heads and branches are built from them)
FAMILIES = {
    "qk": Unit.QK_DIM,
    "v": Unit.V_DIM,
    "neuron": Unit.NEURON,
    "attn_in": Unit.ATTN_IN,
    "mlp_in": Unit.MLP_IN,
}
BRANCH_FIELD = {Unit.ATTN_BLOCK: "attn", Unit.FFN_BLOCK: "ffn"}
# the member family whose MACs a branch's score is priced with under ``tradeoff: raw``
BRANCH_PRICE = {Unit.ATTN_BLOCK: Unit.V_DIM, Unit.FFN_BLOCK: Unit.NEURON}


@dataclass
class Gradients:
    """Per block, per ``layout.TENSORS`` key: the summed gradient and the batch-wise sums of
    squares needed by the data-driven criteria (float64, on the CPU)."""

    total: list[dict[str, Tensor]] = field(default_factory=list)  # Σ_b g_b
    weighted_sq: list[dict[str, Tensor]] = field(default_factory=list)  # Σ_b (w · g_b)²
    grad_sq: list[dict[str, Tensor]] = field(default_factory=list)  # Σ_b g_b²
    batches: int = 0
    images: int = 0


def calibration_batches(
    dataset: Dataset[Any], count: int, batch_size: int, seed: int
) -> DataLoader[Any]:
    """``count`` images of a seeded permutation of ``dataset`` (training split, augmentation
    off where the dataset has that switch): the seed picks the calibration subset."""
    import copy

    size = len(dataset)  # type: ignore[arg-type]
    count = min(count, size)
    if getattr(dataset, "augment", False):
        dataset = copy.copy(dataset)
        dataset.augment = False  # type: ignore[attr-defined]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
    return DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False)


def collect_gradients(
    model: nn.Module, batches: Iterable[Any], max_batches: int | None = None
) -> Gradients:
    """Cross-entropy gradients of the block tensors, batch by batch (the model is unchanged;
    its ``.grad`` fields are cleared afterwards). Batches are (images, labels)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # calibrate the network as it will be used (no dropout)
    blocks = layout.blocks(model)
    tensors = [layout.block_tensors(b) for b in blocks]
    result = Gradients()
    for block in tensors:
        zeros = {k: torch.zeros(t.shape, dtype=torch.float64) for k, t in block.items()}
        result.total.append({k: z.clone() for k, z in zeros.items()})
        result.weighted_sq.append({k: z.clone() for k, z in zeros.items()})
        result.grad_sq.append(zeros)
    for images, labels in itertools.islice(batches, max_batches):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        loss.backward()
        for i, block in enumerate(tensors):
            for key, weight in block.items():
                if weight.grad is None:
                    continue
                g = weight.grad.detach().double().cpu()
                w = weight.detach().double().cpu()
                result.total[i][key] += g
                result.weighted_sq[i][key] += (w * g).square()
                result.grad_sq[i][key] += g.square()
        result.batches += 1
        result.images += int(labels.shape[0])
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if result.batches == 0:
        raise ValueError("no calibration batches")
    return result


@torch.no_grad()
def weight_scores(
    model: nn.Module, criterion: Criterion, gradients: Gradients | None = None
) -> list[dict[str, Tensor]]:
    """Per block, the criterion's score of every weight and bias (``layout.TENSORS`` keys)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; one of {', '.join(CRITERIA)}")
    if criterion not in DATA_FREE and gradients is None:
        raise ValueError(f"criterion {criterion!r} needs calibration gradients")
    result = []
    for i, block in enumerate(layout.blocks(model)):
        weights = {k: t.detach().double().cpu() for k, t in layout.block_tensors(block).items()}
        if criterion == "energy":
            result.append({k: w.square() for k, w in weights.items()})
            continue
        assert gradients is not None
        if criterion == "taylor":
            mean = {k: g / gradients.batches for k, g in gradients.total[i].items()}
            result.append({k: (weights[k] * g).abs() for k, g in mean.items()})
        elif criterion == "fisher":
            result.append(dict(gradients.weighted_sq[i]))
        else:
            result.append(dict(gradients.grad_sq[i]))
    return result


def unit_scores(
    space: SearchSpace,
    scores: Sequence[dict[str, Tensor]],
    normalize: Normalize = "family",
    tradeoff: Tradeoff = "per_mac",
) -> list[BlockKeep]:
    """Per-weight scores summed over each unit's coupled group, as ``select_to_budget`` takes
    them (every family filled; the selection ignores the ones the space does not search)."""
    raw = []
    for shape, tensors in zip(space.layers, scores, strict=True):
        parts = layout.per_unit(shape, tensors, list(FAMILIES.values()))
        layer: dict[str, Tensor] = {
            name: sum(parts[unit], torch.zeros(layout.unit_shape(shape, unit), dtype=torch.float64))
            for name, unit in FAMILIES.items()
        }
        for linear, branch in layout.BRANCH_OUTPUT.items():  # what only the branch deletes
            bias = tensors.get(f"{linear}_b")
            value = torch.zeros((), dtype=torch.float64) if bias is None else bias.sum()
            layer[BRANCH_FIELD[branch]] = value.double()
        raw.append(layer)
    scale = {name: 1.0 for name in [*FAMILIES, *BRANCH_FIELD.values()]}
    if normalize == "family":
        for name, unit in FAMILIES.items():
            total = sum(float(layer[name].sum()) for layer in raw)
            count = sum(
                layer[name].numel() * layout.weight_count(shape, unit)
                for layer, shape in zip(raw, space.layers, strict=True)
            )
            scale[name] = total / count if total > 0 else 1.0  # mean score per weight
        scale["attn"], scale["ffn"] = scale["v"], scale["neuron"]
    elif normalize != "none":
        raise ValueError(f"unknown normalize {normalize!r}; one of {get_args(Normalize)}")
    if tradeoff not in get_args(Tradeoff):
        raise ValueError(f"unknown tradeoff {tradeoff!r}; one of {get_args(Tradeoff)}")
    result = []
    for layer, shape in zip(raw, space.layers, strict=True):
        values = {name: value / scale[name] for name, value in layer.items()}
        if tradeoff == "raw":  # score × MACs saved: the greedy's ratio becomes the score
            for name, unit in FAMILIES.items():
                values[name] = values[name] * unit_macs(shape, space.tokens, unit)
            for branch, name in BRANCH_FIELD.items():
                values[name] = values[name] * unit_macs(shape, space.tokens, BRANCH_PRICE[branch])
        result.append(
            BlockKeep(
                attn=values["attn"],
                head=values["qk"].sum(-1) + values["v"].sum(-1),  # a head owns exactly these
                ffn=values["ffn"],
                qk=values["qk"],
                v=values["v"],
                neuron=values["neuron"],
                attn_in=values["attn_in"],
                mlp_in=values["mlp_in"],
            )
        )
    return result


def importance(
    model: nn.Module,
    space: SearchSpace,
    criterion: Criterion = "energy",
    batches: Iterable[Any] | None = None,
    normalize: Normalize = "family",
    tradeoff: Tradeoff = "per_mac",
    max_batches: int | None = None,
) -> list[BlockKeep]:
    """Unit scores of ``model`` for ``select_to_budget`` by one criterion (the data-driven
    ones read ``batches`` of training images with their labels)."""
    gradients = None
    if criterion not in DATA_FREE:
        if batches is None:
            raise ValueError(f"criterion {criterion!r} needs calibration batches")
        gradients = collect_gradients(model, batches, max_batches)
    return unit_scores(space, weight_scores(model, criterion, gradients), normalize, tradeoff)
