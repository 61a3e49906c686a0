"""Post-training pruning without retraining: Fisher mask search, mask rearrangement and
layer-wise reconstruction, after Kwon, Kim, Mahoney, Hassoun, Keutzer and Gholami, *A Fast
Post-Training Pruning Framework for Transformers* (NeurIPS 2022).

The paper's idea, in our words: put a mask variable (initially 1) on every prunable structure
of a trained transformer, score each by how much the loss would grow if its mask went to 0 —
a second-order Taylor estimate whose curvature is the Fisher information of the masks, taken
from the gradients of a couple of thousand calibration samples — and choose the masks to zero
under a FLOPs constraint. The diagonal Fisher ignores interactions between units; within each
layer the block of the Fisher that couples its units is used to improve the chosen set by
swaps that keep the layer's cost. Finally, instead of retraining, what remains is re-fitted
layer by layer with linear least squares so that each pruned layer reproduces the dense
layer's output on the calibration set, each layer fed by the already repaired layers before
it. No training loop runs; the cost is a few forward and backward passes over the samples.

Stages, as implemented (``search``):

1. **Fisher.** Batches of calibration images from the training split go through the dense
   model with a *probe* of ones multiplied in, per image, wherever a searched unit's keep value
   acts (``layout.GATES``: a head and its v dims on ``proj``'s input columns, a neuron on
   ``fc2``'s, a q/k dim on its q row, a branch on its Linear's whole output, input columns on
   ``qkv``/``fc1``'s inputs). Because a probe has a batch dimension, the gradient of the
   summed loss with respect to it is each image's own mask gradient. These are reduced to the
   units (the sum over the positions a unit's gate covers, the adjoint of ``layout.expand``),
   squared and summed over the images: the diagonal empirical Fisher, in float64.
2. **Selection.** ``selection.select_to_budget`` keeps the units of highest Fisher per MAC
   under the target, respecting ``round_to``, minimum heads, head dims and neurons.
3. **Rearrangement** (``rearrange``). In every group whose kept count selection fixed (the
   neurons of a layer, the v or q/k dims of a kept head, the heads of a layer, its input
   columns), the set to prune P is changed by the best swap of a pruned and a kept unit while
   that lowers the block-Fisher estimate 1_Pᵀ F 1_P of the loss increase; counts, and so
   MACs, do not change.
4. **Reconstruction** (``reconstruct``), block by block with the calibration set: the dense
   stream and the pruned stream (the masked model with the blocks before already re-fitted)
   advance side by side; ``proj`` of every kept attention branch and then ``fc2`` of every
   kept FFN branch is re-fitted by damped least squares on its kept input columns (+ bias), in
   float64, from accumulated Gram matrices; the result is written into those columns of the
   dense weights, which is what slicing keeps, so the masked model equals the exported one.

Choices where the paper is silent, or where a ViT differs from BERT:

* *Unit mapping.* The paper masks BERT's heads and FFN neurons. Here every unit kind the space
  searches gets a mask variable at its gate: heads and v dims (``proj`` columns), q/k dims,
  neurons, whole attention and FFN branches, input columns. A head's gradient is the sum of its
  v dims' (both gates scale the same columns), so its Fisher (the square of that sum) already
  holds the couplings between its dims.
* *Branch scores.* ``select_to_budget`` charges a branch's score on top of its last units'.
  We give a branch the part of its own Fisher (the gate on its whole output, bias included)
  that its units' Fisher does not already account for, ``max(0, F_branch − Σ F_unit)``:
  removing a branch costs at least what removing its units one by one costs.
* *Per-image gradients, not per-batch.* A batch's summed gradient squared mixes the images'
  gradients; probes with a batch dimension give the per-image gradients in one backward pass
  at any batch size, so ``batch_size`` trades memory for speed and never changes the result.
* *Label-free mode* (``labels: false``). The KL divergence to the dense model's own
  predictions is 0 with a zero gradient at the dense point, so its squared gradient carries no
  information; its Hessian there is the model's Fisher information, E over y ~ p_dense(y|x) of
  the outer product of ∇ log p(y|x). We estimate it with one label per image drawn from the
  dense model's prediction (seeded): the same computation as the labeled mode with sampled
  instead of true labels. Reconstruction never needs labels.
* *Rearrangement by swaps from the diagonal solution.* The paper's per-layer greedy uses the
  block-diagonal Fisher; we start from the chosen set and take best-improvement swaps (at most
  ``max_swaps`` per group), the closest move that keeps every count the budget selection
  fixed. Heads are swapped only in layers whose kept heads keep all their dims (otherwise
  heads differ in cost and a swap would move MACs). A block Fisher estimated from N images has
  rank at most N, so a group larger than N has directions of zero estimated loss that swaps
  would exploit: rearrangement needs at least as many images as its largest group.
* *Reconstruction target: the dense block on the dense input.* The re-fitted ``proj`` makes
  x' + attn'(x') match the dense block's post-attention residual and the re-fitted ``fc2``
  makes the block's output match the dense block's output, where x' is the pruned model's own
  input; so each block also corrects the error the blocks before it left, and the pruned model
  tracks the dense one instead of drifting from it. A layer scale (``ls1``/``ls2``) is divided
  out of the target (channels whose scale is 0 keep their weights).
* *Full output-projection weights rather than per-unit scales* (``reconstruct: weights``).
  Re-fitting every kept column of ``proj``/``fc2`` and the bias is still one linear least-
  squares problem per Linear and has many more degrees of freedom than one scale per unit;
  the calibration set has far more rows (images × tokens) than unknowns. The paper's per-unit
  mask scales are ``reconstruct: scales`` (bias kept), ``none`` skips the stage.
* *Damping toward the dense weights.* The normal equations are solved as
  (A + λI) W = B + λ W_dense with λ = ``damping`` × the mean of diag(A): a small ridge toward
  the weights the model already has, so an ill-determined direction keeps its dense value
  instead of an arbitrary one, and ``damping`` → ∞ is no reconstruction. A system the given
  damping leaves singular (e.g. ``damping: 0`` with duplicated or dead units) is re-solved with
  λ raised a hundredfold at a time, counted in ``posttrain_damped_systems`` and warned about;
  a solution that is still not finite keeps the dense weights. Never NaN.
* *Memory.* Fisher needs per-image gradients of the units only (kept, as float32, only when
  rearranging); reconstruction keeps the two residual streams at the current depth (2 × images
  × tokens × width floats) and per Linear one Gram matrix (inputs + 1)² and one cross term
  (inputs + 1) × width, not any layer's activations.
* *Classifier* (``refit_head``). Optionally the classifier is re-fitted the same way on the
  pruned model's final features, to the dense model's logits (no labels).
* *Calibration images*: the first ``calibration_images`` of a seeded permutation of the
  training split, without augmentation when the dataset exposes an ``augment`` switch
  (augmented otherwise, with the RNG seeded, so a seed gives one result). The minimum needed
  is checked before any work: reconstruction needs images × tokens ≥ the widest re-fitted
  Linear's inputs + 1 (one row per image for the classifier), rearrangement needs images ≥
  its largest group.
* Optional fine-tuning of the sliced model (``finetune_epochs``, default 0) is the core's
  fine-tune phase, as for ``magnitude``. More in docs/strategies.md.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from automl_hiap.errors import UserError
from automl_hiap.selection import select_to_budget
from automl_hiap.space import SearchSpace, Unit
from automl_hiap.strategies.posttrain_fisher import (
    KEY,
    Calibration,
    calibration_loader,
    collect_fisher,
    fisher_scores,
    searched_units,
    unit_gradients,
)
from automl_hiap.strategies.posttrain_refit import (
    REARRANGED,
    LeastSquares,
    Reconstruct,
    Reconstruction,
    Solve,
    damped_solve,
    rearrange,
    reconstruct,
    swap_search,
)
from automl_hiap.strategy import FineTune, SearchContext, SearchResult, Strategy, StrategyParams

__all__ = [  # the stages, for tests and bench/posttrain.py
    "KEY",
    "REARRANGED",
    "Calibration",
    "LeastSquares",
    "PostTrainParams",
    "PostTrainStrategy",
    "Reconstruct",
    "Reconstruction",
    "Solve",
    "calibration_loader",
    "collect_fisher",
    "damped_solve",
    "fisher_scores",
    "minimum_images",
    "rearrange",
    "reconstruct",
    "searched_units",
    "swap_search",
    "unit_gradients",
]


class PostTrainParams(StrategyParams):
    """Calibration set, the three stages' switches, and the optional fine-tuning."""

    calibration_images: Annotated[int, Field(ge=1)] = 2000
    batch_size: Annotated[int, Field(ge=1)] = 64  # images per forward/backward pass
    labels: bool = True  # false: label-free (labels drawn from the dense model's predictions)
    rearrange: bool = False  # block-Fisher swaps within each group after selection
    max_swaps: Annotated[int, Field(ge=0)] = 1000  # per group
    reconstruct: Reconstruct = "weights"
    damping: Annotated[float, Field(ge=0)] = 1e-2  # λ relative to the mean of diag(A)
    refit_head: bool = False  # also re-fit the classifier to the dense logits
    finetune_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr


def minimum_images(space: SearchSpace, params: PostTrainParams) -> tuple[int, str]:
    """The fewest calibration images these params need, and why (for the error message)."""
    needs = [(1, "scoring the units")]
    if params.reconstruct != "none":
        widest = max(max(s.num_heads * s.head_dim, s.mlp_hidden) for s in space.layers)
        rows = math.ceil((widest + 1) / space.tokens)
        needs.append(
            (
                rows,
                f"re-fitting a Linear with {widest} inputs + bias from "
                f"{space.tokens} tokens per image",
            )
        )
        if params.refit_head:
            width = space.layers[-1].embed_dim
            needs.append((width + 1, f"re-fitting the classifier's {width} inputs + bias"))
    if params.rearrange:
        groups = [(_largest_group(space, u), str(u)) for u in REARRANGED if space.searches(u)]
        if groups:
            size, unit = max(groups)
            needs.append(
                (
                    size,
                    f"rearranging {size} {unit} units of a group by their Fisher "
                    "block (rank ≤ images)",
                )
            )
    return max(needs)


def _largest_group(space: SearchSpace, unit: Unit) -> int:
    sizes = {
        Unit.NEURON: lambda s: s.mlp_hidden,
        Unit.HEAD: lambda s: s.num_heads,
        Unit.QK_DIM: lambda s: s.head_dim,
        Unit.V_DIM: lambda s: s.head_dim,
        Unit.ATTN_IN: lambda s: s.embed_dim,
        Unit.MLP_IN: lambda s: s.embed_dim,
    }[unit]
    return max(sizes(s) for s in space.layers)


# ---------------------------------------------------------------- the strategy
class PostTrainStrategy(Strategy[PostTrainParams]):
    name = "posttrain"
    description = (
        "post-training, no retraining: Fisher mask search to the budget, block-Fisher "
        "rearrangement, layer-wise least-squares reconstruction (Kwon et al. 2022)"
    )
    needs_trainer = True
    trainer_error = (
        "strategy: {name!r} reads calibration images from the training split; "
        "it needs training data (a trainer)"
    )
    fine_tune = FineTune(phase="posttrain_finetune")
    latency_budgets = True  # selects through the core's cost model
    smoke_params: ClassVar[dict[str, Any]] = {"calibration_images": 32, "batch_size": 16}

    def search(self, context: SearchContext) -> SearchResult:
        params, space, model, trainer = self.params, context.space, context.model, context.trainer
        target = self.target(context)
        minimum, why = minimum_images(space, params)
        if params.calibration_images < minimum:
            raise UserError(
                f"{KEY}: {params.calibration_images} images are too few; at least {minimum} "
                f"are needed for {why}"
            )
        device = trainer.device if trainer is not None else next(model.parameters()).device
        model.to(device)
        progress = bool(getattr(trainer, "progress", False))
        loader = calibration_loader(
            trainer.train_data, params.calibration_images, params.batch_size, context.seed
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            calibration = collect_fisher(
                model,
                space,
                loader,
                params.labels,
                context.seed,
                params.rearrange,
                device,
                progress,
            )
        started = time.perf_counter()
        try:
            scores = fisher_scores(space, calibration)
            subnet = select_to_budget(space, scores, target, cost=context.cost)
        except ValueError as exc:
            raise UserError(f"budget: {exc}") from None
        swaps = 0
        if params.rearrange:
            subnet, swaps = rearrange(space, subnet, calibration, params.max_swaps, progress)
        selected = time.perf_counter() - started
        report = reconstruct(
            model,
            space,
            subnet,
            calibration,
            params.reconstruct,
            params.damping,
            params.batch_size,
            params.refit_head,
            progress,
            consume=True,
        )
        metrics = {
            "posttrain_calibration_images": float(calibration.images),
            "posttrain_fisher_seconds": calibration.seconds,
            "posttrain_select_seconds": selected,
            "posttrain_swaps": float(swaps),
            **report.metrics(),
        }
        return SearchResult(subnet=subnet, model=model, metrics=metrics)
