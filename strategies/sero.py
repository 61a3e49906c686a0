"""SERo: Sparse Structure Exploration and Re-optimization (An et al., UAI 2025, PMLR 286).

Exploration trains the dense model with masks that are recomputed every ``mask_every``
iterations from gradient magnitudes, under a cubic sparsity schedule; the explored weights are
then physically compressed and *re-optimized* with a fresh optimizer and a restarted
learning-rate schedule (a new trainer phase). Units, with masks shared where computation
couples them (paper §3.2): a Q&K output dim (same mask on W_q and W_k rows), a V output dim
with its ``proj`` column, an FFN neuron (``fc1`` row, ``fc2`` column). Importance (Eq. 1–3):
the L1 norm of the weight gradient of the unit's rows, ½(q + k) for Q&K, ranked against one
global threshold over all unit types and layers.

Re-optimization is the core's fine-tune phase (``Strategy.run``), declared here under the
paper's names ``reopt_epochs`` / ``reopt_lr``. Equations and defaults: docs/strategies.md.

Choices where the paper is silent or its released code (``Ahnho/SERo``) disagrees with it:

* Mask rule: the code's ``get_vit_masks_with_independent_heads``, the closest available
  variant (the default ``--method ours`` calls a function that exists in no commit): after the
  global threshold, each layer keeps one count K of Q&K dims for all its heads (the floor of
  the mean per-head count above the threshold, at least one) and K' of V dims likewise, the
  top ones per head; the FFN keeps its neurons above the threshold (at least one). Counts are
  then floored to the space's allowed values (``round_to``, ``min_head_dims``,
  ``min_neuron_fraction``). Heads, branches and input columns are never pruned: SERo has no
  such units, even when the space searches them.
* Criterion: the gradient (the paper), not the code's default ``--mag_type weight``. One
  mini-batch (the step's own gradient, taken before the optimizer step; the code uses the
  previous step's, the same quantity) and the mean over the input dimension (the code; the
  paper's L1 sum differs by the constant input width, the same for every unit type).
* The |W|-scaled update of Eq. 5 (``scaled_update``, on by default) really persists through
  exploration: every Linear weight's gradient is multiplied by |W| before each optimizer step.
  In the released code an ``evaluate()`` call resets it after the first epoch, so
  ``scaled_update: false`` reproduces what the code effectively runs. Importance is always
  taken from the plain gradient (Eq. 1–3 as written), before the scaling.
* Mask frequency counts iterations (the code), not epochs (the appendix text).
* Budget: the paper prunes a fraction P of *units*; here the target is MACs. At every mask
  update P is solved as the smallest unit fraction whose mask meets the MACs target under the
  current scores (MACs are monotone in it: a larger fraction only removes units), and the
  cubic schedule p(t) = P·(1 − (1 − t)³) runs on units, as in the code, reaching P at the start
  of the last exploration epoch (the code's ``epoch + 1 >= target_epoch`` rule), or at the last
  mask update when exploration prunes for one epoch only. So the final mask meets the budget
  exactly and no repair is needed; the result reports both the unit sparsity and the MACs.
* Masks are activation multipliers (``automl_hiap.masking``) instead of the code's masked
  weights: masked units receive zero weight gradient either way (so their importance is 0 and
  they are re-picked only by tie-breaking, as in the code), and the masked model equals the
  sliced one. Ties in the global ranking go to the lower index.
* ``warmup_epochs`` exploration epochs train without masks before the first one (the paper's
  one warm-up epoch; the code's ``--warmup``).
* Re-optimization: plain AdamW (no |W| scaling), fresh warm-up + cosine; the lr of both phases
  defaults to ``train.lr`` (the paper uses 5e-5 for both).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from automl_hiap import layout
from automl_hiap.cost import dense_cost, expected_macs
from automl_hiap.cost_model import MACS, CostModel
from automl_hiap.errors import UserError
from automl_hiap.masking import Masks
from automl_hiap.selection import bisect_to_budget, survivors, top_kept
from automl_hiap.space import BlockKeep, SearchSpace, Unit
from automl_hiap.strategy import (
    FineTune,
    SearchContext,
    SearchResult,
    Strategy,
    StrategyParams,
    TrainHooks,
)
from automl_hiap.subnet import Subnet

# SERo's unit families: BlockKeep field -> space unit
FAMILIES = {"qk": Unit.QK_DIM, "v": Unit.V_DIM, "neuron": Unit.NEURON}


class SERoParams(StrategyParams):
    """Exploration and re-optimization lengths (paper: 50 + 150 epochs), mask frequency F."""

    explore_epochs: Annotated[int, Field(ge=1)] = 50
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    reopt_epochs: Annotated[int, Field(ge=0)] = 150
    mask_every: Annotated[int, Field(ge=1)] = 8
    scaled_update: bool = True
    explore_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr
    reopt_lr: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _warmup_inside_exploration(self) -> SERoParams:
        if self.warmup_epochs >= self.explore_epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than explore_epochs "
                f"({self.explore_epochs})"
            )
        return self


def gradient_importance(model: nn.Module) -> list[dict[str, Tensor]]:
    """Per layer, the mean |gradient| of each unit's weight rows (paper Eq. 1–3)."""
    layers = []
    for i, block in enumerate(layout.blocks(model)):
        shape = layout.block_shape(block, i)
        weights = layout.block_tensors(block)
        grads = {key: _grad(weights[key]) for key in ("qkv_w", "fc1_w")}  # the rows' producers
        parts = layout.per_unit(shape, grads, FAMILIES.values(), _mean_abs, axis=layout.ROWS)
        (q, k), (v,), (neuron,) = (parts[unit] for unit in FAMILIES.values())
        layers.append({"qk": 0.5 * (q + k), "v": v, "neuron": neuron})
    return layers


def _grad(weight: Tensor) -> Tensor:
    return torch.zeros_like(weight) if weight.grad is None else weight.grad.detach()


def _mean_abs(values: Tensor, axis: int) -> Tensor:
    return values.abs().mean(axis).double().cpu()


def sero_masks(space: SearchSpace, scores: list[dict[str, Tensor]], pruned: int) -> list[BlockKeep]:
    """The mask after removing the ``pruned`` lowest-scored units under one global threshold,
    with SERo's per-layer equal head widths and the space's allowed counts."""
    families = [f for f, unit in FAMILIES.items() if space.searches(unit)]
    above = iter(survivors([s[f] for s in scores for f in families], pruned))
    keeps = []
    for i, (shape, s) in enumerate(zip(space.layers, scores, strict=True)):
        values: dict[str, Tensor] = {}
        for family in families:
            alive = next(above)
            if family == "neuron":
                count = max(1, int(alive.sum()))
                count = space.allowed_kept(count, shape.mlp_hidden, space.min_neurons(i))
                values[family] = top_kept(s[family], count)
            else:  # one width for every head of the layer: the mean count above threshold
                per_head = alive.sum(1).clamp(min=1).double()
                count = space.allowed_kept(int(per_head.mean()), shape.head_dim, space.min_dims(i))
                values[family] = torch.stack([top_kept(row, count) for row in s[family]])
        keeps.append(BlockKeep(**values))
    return keeps


def _macs(space: SearchSpace, keeps: list[BlockKeep]) -> float:
    return float(expected_macs(space, keeps))


def units_for_budget(
    space: SearchSpace, scores: list[dict[str, Tensor]], target: float, cost: CostModel = MACS
) -> int:
    """The fewest units to prune so that the SERo mask meets ``target`` (MACs, or ``cost``'s
    unit; bisection: the cost never grows as more units go)."""
    total = sum(s[f].numel() for s in scores for f, u in FAMILIES.items() if space.searches(u))
    fit = bisect_to_budget(
        space, lambda pruned: sero_masks(space, scores, pruned), target, total, cost=cost
    )
    if not fit.feasible:
        raise UserError(
            f"budget: SERo's smallest structure (minimum dims per head and neurons per layer) "
            f"costs {cost.describe(fit.macs)}, above the target {cost.describe(target)}"
        )
    return fit.value


class _Exploration(TrainHooks):
    """Mask updates every F iterations, cubic unit-sparsity schedule, |W|-scaled update."""

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        target: float,
        params: SERoParams,
        steps: int,
        cost: CostModel = MACS,
    ) -> None:
        self.model, self.space, self.target, self.params = model, space, target, params
        self.cost = cost
        self.start = params.warmup_epochs * steps
        self.end = params.explore_epochs * steps
        last_update = (
            self.start + (self.end - 1 - self.start) // params.mask_every * params.mask_every
        )
        ramp_end = (params.explore_epochs - 1) * steps
        self.ramp = max(1, (ramp_end if ramp_end > self.start else last_update) - self.start)
        self.total_units = sum(
            getattr(k, f).numel() for k in space.dense_keep() for f in self._families()
        )
        self.keeps: list[BlockKeep] = [
            BlockKeep(**{f: getattr(k, f).double() for f in self._families()})
            for k in space.dense_keep()
        ]
        self.final_units = 0  # P (as a unit count), re-solved at every update
        self.masks = Masks(model, space, self.keeps)
        self.device: torch.device | None = None
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]

    def _apply(self) -> None:
        """Hand the masks to the hooks in the model's dtype and device."""
        weight = self.linears[0].weight
        self.device = weight.device
        self.masks.set([k.map(lambda t: t.to(weight)) for k in self.keeps])

    def _families(self) -> list[str]:
        return [f for f, unit in FAMILIES.items() if self.space.searches(unit)]

    def schedule(self, step: int) -> float:
        """Fraction of P reached at ``step``: 1 − (1 − t)³ (cubic, as in AGP)."""
        t = min(1.0, max(0.0, (step - self.start) / self.ramp))
        return 1.0 - (1.0 - t) ** 3

    def on_step_start(self, step: int, total_steps: int) -> None:
        if self.device != self.linears[0].weight.device:  # the trainer moved the model
            self._apply()

    def on_after_backward(self, step: int) -> None:
        if self.start <= step < self.end and (step - self.start) % self.params.mask_every == 0:
            scores = gradient_importance(self.model)
            self.final_units = units_for_budget(self.space, scores, self.target, self.cost)
            pruned = round(self.final_units * self.schedule(step))
            self.keeps = sero_masks(self.space, scores, pruned)
            self._apply()
        if self.params.scaled_update:  # Eq. 5: W ← W − η · (∇L ⊙ M) ⊙ |W|
            for linear in self.linears:
                if linear.weight.grad is not None:
                    linear.weight.grad.mul_(linear.weight.detach().abs())

    def unit_sparsity(self) -> float:
        kept = sum(float(getattr(k, f).sum()) for k in self.keeps for f in self._families())
        return 1.0 - kept / self.total_units

    def close(self) -> None:
        self.masks.remove()

    def metrics(self) -> dict[str, float]:
        dense = float(dense_cost(self.space).macs)
        return {
            "unit_sparsity": self.unit_sparsity(),
            "macs_ratio": _macs(self.space, self.keeps) / dense,
        }

    def candidate(self) -> Subnet:
        return Subnet.from_keep(self.space, self.keeps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "keeps": [{f: getattr(k, f) for f in self._families()} for k in self.keeps],
            "final_units": self.final_units,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.keeps = [
            BlockKeep(**{f: t.cpu().double() for f, t in k.items()}) for k in state["keeps"]
        ]
        self.final_units = int(state["final_units"])
        self._apply()


class SERoStrategy(Strategy[SERoParams]):
    name = "sero"
    description = "SERo (UAI'25): gradient-magnitude mask exploration, compression, re-optimization"
    requires_units = tuple(FAMILIES.values())
    units_error = (
        "space.units: SERo prunes qk_dim, v_dim and neuron; the space searches none of them"
    )
    needs_trainer = True
    trainer_error = "strategy: SERo trains; it needs training data (a trainer)"
    # re-optimization: a fresh optimizer and schedule on the physically compressed model
    fine_tune = FineTune(phase="sero_reopt", epochs="reopt_epochs", lr="reopt_lr")
    latency_budgets = True  # P is solved against the core's cost model
    smoke_params: ClassVar[dict[str, Any]] = {
        "explore_epochs": 2,
        "warmup_epochs": 1,
        "mask_every": 2,
    }

    def search(self, context: SearchContext) -> SearchResult:
        params, space, trainer = self.params, context.space, context.trainer
        target = self.target(context)
        steps = trainer.steps_per_epoch()
        hooks = _Exploration(context.model, space, target, params, steps, context.cost)
        self.train_phase(context, hooks, "sero_explore", params.explore_epochs, params.explore_lr)
        subnet = Subnet.from_keep(space, hooks.keeps).validate(space)
        return SearchResult(subnet=subnet, model=context.model, metrics=hooks.metrics())
