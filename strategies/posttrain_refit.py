"""posttrain, stages 3 and 4: mask rearrangement within a layer and layer-wise least-squares
reconstruction (the method and its choices: ``strategies/posttrain.py``)."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from automl_hiap import layout
from automl_hiap.errors import UserError
from automl_hiap.masking import Masks
from automl_hiap.space import LayerShape, SearchSpace, Unit
from automl_hiap.strategies.posttrain_fisher import (
    Calibration,
    _bar,
    _capture,
    _input_of,
)
from automl_hiap.subnet import HeadKeep, LayerKeep, Subnet

Reconstruct = Literal["weights", "scales", "none"]


# ---------------------------------------------------------------- stage 3: rearrangement
REARRANGED = (Unit.NEURON, Unit.HEAD, Unit.QK_DIM, Unit.V_DIM, Unit.ATTN_IN, Unit.MLP_IN)


def swap_search(fisher: Tensor, pruned: Sequence[int], max_swaps: int) -> tuple[list[int], int]:
    """Best-improvement swaps of one pruned and one kept unit that lower 1_Pᵀ F 1_P, the
    block-Fisher estimate of the loss the pruned set P adds; the count of P never changes.
    Returns (new P, sorted; swaps made)."""
    n = fisher.shape[0]
    p_mask = torch.zeros(n, dtype=torch.bool)
    p_mask[list(pruned)] = True
    if not 0 < int(p_mask.sum()) < n:
        return sorted(pruned), 0
    diag = fisher.diagonal()
    row = fisher[:, p_mask].sum(1)  # r_i = Σ_{j∈P} F_ij
    scale = float(diag.abs().max()) or 1.0
    swaps = 0
    while swaps < max_swaps:
        out_idx = p_mask.nonzero().squeeze(1)  # pruned: may come back
        in_idx = (~p_mask).nonzero().squeeze(1)  # kept: may go
        # S(P − j + k) − S(P) = F_jj − 2r_j + F_kk + 2r_k − 2F_jk
        delta = (diag[out_idx] - 2 * row[out_idx])[:, None] + (diag[in_idx] + 2 * row[in_idx])
        delta = delta - 2 * fisher[out_idx][:, in_idx]
        best = int(torch.argmin(delta))
        if float(delta.reshape(-1)[best]) >= -1e-12 * scale:
            break
        j = int(out_idx[best // in_idx.numel()])
        k = int(in_idx[best % in_idx.numel()])
        p_mask[j], p_mask[k] = False, True
        row += fisher[:, k] - fisher[:, j]
        swaps += 1
    return sorted(p_mask.nonzero().squeeze(1).tolist()), swaps


def _rearranged(grads: Tensor, kept: Sequence[int], max_swaps: int) -> tuple[tuple[int, ...], int]:
    """The kept indices of one group after :func:`swap_search` on its Fisher block, from the
    group's per-image gradients ``(images, n)``, and the swaps made."""
    n = grads.shape[1]
    kept_set = set(kept)
    pruned = [i for i in range(n) if i not in kept_set]
    if not pruned or not kept:
        return tuple(sorted(kept)), 0
    g = grads.double()
    new_pruned, swaps = swap_search(g.T @ g, pruned, max_swaps)
    gone = set(new_pruned)
    return tuple(i for i in range(n) if i not in gone), swaps


def _rearrange_layer(
    shape: LayerShape, layer: LayerKeep, grads: dict[Unit, Tensor], max_swaps: int
) -> tuple[LayerKeep, int]:
    total = 0
    heads = list(layer.heads)
    full = tuple(range(shape.head_dim))
    if Unit.HEAD in grads and heads and all(h.qk == h.v == full for h in heads):
        kept, total = _rearranged(grads[Unit.HEAD], [h.index for h in heads], max_swaps)
        heads = [HeadKeep(h, full, full) for h in kept]
    new_heads = []
    for head in heads:
        dims = {Unit.QK_DIM: head.qk, Unit.V_DIM: head.v}
        for unit in dims:
            if unit in grads:
                dims[unit], swaps = _rearranged(grads[unit][:, head.index], dims[unit], max_swaps)
                total += swaps
        new_heads.append(HeadKeep(head.index, dims[Unit.QK_DIM], dims[Unit.V_DIM]))
    neurons = layer.neurons
    if Unit.NEURON in grads and neurons:
        neurons, swaps = _rearranged(grads[Unit.NEURON], neurons, max_swaps)
        total += swaps
    inputs = {Unit.ATTN_IN: layer.attn_in, Unit.MLP_IN: layer.mlp_in}
    for unit, current in inputs.items():
        if unit in grads and current is not None:
            inputs[unit], swaps = _rearranged(grads[unit], current, max_swaps)
            total += swaps
    rearranged = LayerKeep(tuple(new_heads), neurons, inputs[Unit.ATTN_IN], inputs[Unit.MLP_IN])
    return rearranged, total


def rearrange(
    space: SearchSpace,
    subnet: Subnet,
    calibration: Calibration,
    max_swaps: int,
    progress: bool = False,
) -> tuple[Subnet, int]:
    """Stage 3: within each group of fixed kept count, swaps that lower the block-Fisher loss
    estimate. Returns the rearranged subnet (same counts, same MACs) and the swaps made."""
    if calibration.grads is None:
        raise ValueError("rearrangement needs the per-image gradients (keep_grads=True)")
    layers, total = [], 0
    bar = _bar(space.depth, "posttrain rearrange", progress)
    for shape, layer, grads in zip(space.layers, subnet.layers, calibration.grads, strict=True):
        rearranged, swaps = _rearrange_layer(shape, layer, grads, max_swaps)
        layers.append(rearranged)
        total += swaps
        bar.update(1)
    bar.close()
    return Subnet(tuple(layers)).validate(space), total


# ---------------------------------------------------------------- stage 4: reconstruction
class LeastSquares:
    """Sufficient statistics of one linear least-squares fit, rows = tokens: the Gram matrix
    of the inputs with a ones column (bias), their cross term with the targets, Σ‖target‖²."""

    def __init__(self, inputs: int, outputs: int, device: torch.device) -> None:
        self.gram = torch.zeros(inputs + 1, inputs + 1, dtype=torch.float64, device=device)
        self.cross = torch.zeros(inputs + 1, outputs, dtype=torch.float64, device=device)
        self.target_energy = 0.0

    def add(self, x: Tensor, target: Tensor) -> None:
        """Accumulate a batch (float64 products: the normal equations can be ill-conditioned)."""
        rows = x.reshape(-1, x.shape[-1])
        inputs = rows.new_empty(rows.shape[0], rows.shape[1] + 1, dtype=torch.float64)
        inputs[:, :-1] = rows
        inputs[:, -1] = 1.0
        t = target.reshape(-1, target.shape[-1]).double()
        self.gram.addmm_(inputs.T, inputs)
        self.cross.addmm_(inputs.T, t)
        self.target_energy += float(torch.linalg.vector_norm(t).square())

    def error(self, solution: Tensor) -> float:
        """Σ‖x·W + b − target‖² of a solution stacked as [Wᵀ; b] ((inputs + 1) × outputs)."""
        quad = (solution * (self.gram @ solution)).sum()
        return float(quad - 2 * (solution * self.cross).sum()) + self.target_energy


@dataclass
class Solve:
    """How one damped system was solved."""

    solution: Tensor | None  # None: not finite at any damping (the dense weights stay)
    damping: float  # the λ finally used (relative to the mean of diag(A))
    escalated: bool  # the requested damping left the system singular


def damped_solve(matrix: Tensor, rhs: Tensor, prior: Tensor, damping: float) -> Solve:
    """Solve (M + λI) X = rhs + λ·prior with λ = ``damping`` × mean(diag M) by Cholesky,
    raising λ a hundredfold at a time while the system is singular or the result not finite."""
    scale = float(matrix.diagonal().mean()) if matrix.numel() else 0.0
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    relative = damping
    for attempt in range(12):
        lam = relative * scale
        factor, info = torch.linalg.cholesky_ex(matrix + lam * eye)
        if int(info) == 0:
            solution = torch.cholesky_solve(rhs + lam * prior, factor)
            if bool(torch.isfinite(solution).all()):
                return Solve(solution, relative, attempt > 0)
        relative = max(relative * 100.0, 1e-10)
    return Solve(None, relative, True)


@dataclass
class Reconstruction:
    """What stage 4 did: per re-fitted Linear, its calibration error before and after."""

    fits: list[dict[str, Any]] = field(default_factory=list)
    damped: int = 0  # systems the requested damping left singular
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        before = sum(f["error_before"] for f in self.fits)
        after = sum(f["error_after"] for f in self.fits)
        return {
            "posttrain_refitted": float(len(self.fits)),
            "posttrain_damped_systems": float(self.damped),
            "posttrain_refit_error_ratio": after / before if before > 0 else 1.0,
            "posttrain_reconstruct_seconds": self.seconds,
        }


def _layer_scale(module: nn.Module) -> Tensor | None:
    """The per-channel factor of a branch's layer scale (None: identity)."""
    if isinstance(module, nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if isinstance(gamma, Tensor):
        return gamma.detach()
    raise UserError(f"unsupported model: layer scale {type(module).__name__} (expected timm's)")


def _fit_linear(
    module: nn.Linear,
    columns: list[int],
    stats: LeastSquares,
    gamma: Tensor | None,
    mode: Reconstruct,
    damping: float,
    where: str,
    report: Reconstruction,
) -> None:
    """Solve one damped least-squares system and write the kept columns (+ bias) of
    ``module``'s weight; every other entry is left as it is (slicing drops them)."""
    weight, bias = module.weight, module.bias
    old_w = weight.detach()[:, columns].double()  # (out, k)
    old_b = bias.detach().double() if bias is not None else old_w.new_zeros(weight.shape[0])
    prior = torch.cat([old_w.T, old_b[None]], 0)  # [Wᵀ; b]
    k = len(columns)
    if mode == "weights":
        rows = k + 1 if bias is not None else k
        result = damped_solve(stats.gram[:rows, :rows], stats.cross[:rows], prior[:rows], damping)
        solution = None
        if result.solution is not None:
            solution = (
                result.solution if bias is not None else torch.cat([result.solution, prior[k:]], 0)
            )
    else:  # per-unit scales s: prediction = (x ⊙ s) Wᵀ + b, b kept
        gram_w = old_w.T @ old_w
        matrix = stats.gram[:k, :k] * gram_w
        rhs = ((stats.cross[:k] - stats.gram[:k, k:] * old_b[None]) * old_w.T).sum(1)
        ones = torch.ones(k, 1, dtype=torch.float64, device=matrix.device)
        result = damped_solve(matrix, rhs[:, None], ones, damping)
        solution = None
        if result.solution is not None:
            solution = torch.cat([old_w.T * result.solution, old_b[None]], 0)
    if result.escalated:
        report.damped += 1
        warnings.warn(
            f"posttrain: the least-squares system of {where} is singular at damping "
            f"{damping:g}; solved with damping {result.damping:g}"
            + ("" if solution is not None else " failed, the dense weights stay"),
            RuntimeWarning,
            stacklevel=2,
        )
    before = stats.error(prior)
    if solution is None or (after := stats.error(solution)) > before:
        report.fits.append({"where": where, "error_before": before, "error_after": before})
        return
    if gamma is not None:  # channels whose layer scale is 0 carry no signal: keep them
        dead = gamma.double().abs() < 1e-12
        solution[:, dead] = prior[:, dead]
    with torch.no_grad():
        weight[:, columns] = solution[:k].T.to(weight.dtype)
        if bias is not None:
            bias.copy_(solution[k].to(bias.dtype))
    report.fits.append({"where": where, "error_before": before, "error_after": after})


def _batches(count: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, count)) for s in range(0, count, size)]


def _target(goal: Tensor, base: Tensor, gamma: Tensor | None) -> Tensor:
    """What a branch's last Linear must output so that base + ls(out) = goal."""
    diff = goal - base
    if gamma is None:
        return diff
    safe = torch.where(gamma.abs() < 1e-12, torch.ones_like(gamma), gamma)
    return diff / safe


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    space: SearchSpace,
    subnet: Subnet,
    calibration: Calibration,
    mode: Reconstruct = "weights",
    damping: float = 1e-2,
    batch_size: int = 64,
    refit_head: bool = False,
    progress: bool = False,
    consume: bool = False,
) -> Reconstruction:
    """Stage 4, block by block: re-fit ``proj`` of every kept attention branch so the pruned
    post-attention residual matches the dense one, then ``fc2`` of every kept FFN branch so
    the pruned block output matches the dense block output, each on the pruned model's own
    (already re-fitted) inputs; optionally the classifier to the dense logits. Writes into
    ``model``'s weights (the columns slicing keeps). ``consume``: advance the dense stream in
    ``calibration.stream`` itself (one copy of the activations fewer; unusable afterwards)."""
    report = Reconstruction()
    if mode == "none":
        return report
    started = time.perf_counter()
    device = calibration.stream.device
    keeps = [k.map(lambda t: t.to(device)) for k in subnet.to_keep(space)]
    dense = calibration.stream if consume else calibration.stream.clone()
    pruned = calibration.stream.clone()
    slices = _batches(calibration.images, batch_size)
    training = model.training
    model.eval()
    blocks = layout.blocks(model)
    bar = _bar(3 * space.depth, "posttrain reconstruct", progress)
    try:
        for i, (block, layer, shape) in enumerate(
            zip(blocks, subnet.layers, space.layers, strict=True)
        ):
            store: dict[str, Tensor] = {}
            proj, fc2 = layout.linear(block, "proj"), layout.linear(block, "fc2")
            gamma1, gamma2 = _layer_scale(block.ls1), _layer_scale(block.ls2)
            v = [(h.index, j) for h in layer.heads for j in h.v]
            v_cols = layout.indices(shape, Unit.V_DIM, "proj", layout.COLUMNS, v)
            neurons = layout.indices(shape, Unit.NEURON, "fc2", layout.COLUMNS, layer.neurons)
            reference = copy.deepcopy(block)  # the dense block, before its weights change
            with Masks(model, space, keeps):
                # pass 1: the dense block advances its stream; the pruned attention's stats
                attn = LeastSquares(len(v_cols), shape.embed_dim, device) if v_cols else None
                for part in slices:
                    with _capture(reference.norm2, store, "mid"):
                        out = reference(dense[part])
                    dense_mid = store.pop("mid")
                    dense[part] = out
                    if attn is not None:
                        o = _input_of(proj, block, pruned[part])
                        attn.add(o[..., v_cols], _target(dense_mid, pruned[part], gamma1))
                if attn is not None:
                    where = layout.module_name(i, "proj")
                    _fit_linear(proj, v_cols, attn, gamma1, mode, damping, where, report)
                bar.update(1)
                # pass 2: the pruned block with its new proj; the FFN's statistics
                if neurons:
                    mlp = LeastSquares(len(neurons), shape.embed_dim, device)
                    for part in slices:
                        with _capture(block.norm2, store, "mid"):
                            h = _input_of(fc2, block, pruned[part])
                        mlp.add(h[..., neurons], _target(dense[part], store.pop("mid"), gamma2))
                    where = layout.module_name(i, "fc2")
                    _fit_linear(fc2, neurons, mlp, gamma2, mode, damping, where, report)
                bar.update(1)
                # pass 3: the pruned stream advances through the re-fitted block
                for part in slices:
                    pruned[part] = block(pruned[part])
                bar.update(1)
            del reference
        if refit_head:
            _refit_classifier(model, pruned, calibration.logits, slices, damping, report)
    finally:
        bar.close()
        model.train(training)
    report.seconds = time.perf_counter() - started
    return report


def _refit_classifier(
    model: Any,
    stream: Tensor,
    logits: Tensor,
    slices: list[slice],
    damping: float,
    report: Reconstruction,
) -> None:
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or getattr(model, "head_dist", None) is not None:
        return  # distilled / non-linear heads: left as they are
    stats = LeastSquares(head.in_features, head.out_features, stream.device)
    for part in slices:
        features = model.forward_head(model.norm(stream[part]), pre_logits=True)
        stats.add(features, logits[part])
    columns = list(range(head.in_features))
    _fit_linear(head, columns, stats, None, "weights", damping, "head", report)
