"""VTP: Vision Transformer Pruning (Zhu, Tang, Han; arXiv 2104.08500, 2021).

Network slimming for ViT dimensions: learnable importance scores â multiply the inputs of the
linear projections, ``L = L_task + λ‖â‖₁`` is trained end to end, a global threshold over all
scores selects the dimensions to keep, and the pruned model is fine-tuned without the ℓ1 term.
The fine-tuning is the core's fine-tune phase (``Strategy.run``); equations and defaults are in
docs/strategies.md. Per block there are four score vectors, mapped onto this project's units:

========================  ============  =================================================
score on                  unit          what a pruned entry removes
========================  ============  =================================================
input of ``qkv`` (D)      ``attn_in``   a ``qkv`` input column (the residual stream keeps D)
input of ``proj`` (H·d)   ``v_dim``     a v row of ``qkv`` and its ``proj`` column
input of ``fc1`` (D)      ``mlp_in``    an ``fc1`` input column
input of ``fc2`` (4D)     ``neuron``    an ``fc1`` row and its ``fc2`` column
========================  ============  =================================================

The scores act through ``automl_hiap.masking`` (the same activation hooks as hard masks, fed
with the learnable values), so the scored model is the masked model with soft keep values.

Choices where the sources are silent (the paper body is known only through a summary):

* Threshold to a MACs budget: VTP's global rate is a fraction of score entries; here the
  smallest fraction whose mask meets the MACs target is found by bisection (the kept sets are
  nested, so MACs only fall as the fraction grows). Entries are ranked by |â|, ties to the
  lower index. The global threshold is VTP's own rule, so ``select_to_budget`` is not used;
  each group's kept count (per head for v dims, per layer otherwise) is then floored to the
  space's allowed counts (``round_to``, ``min_head_dims``, ``min_neuron_fraction``; input
  columns keep at least one), keeping its top entries — no repair is needed.
* v dims are head-agnostic, so heads end with unequal v widths (the export supports that); a
  head keeps at least ``min_head_dims`` v dims, since heads are not VTP units.
* Surviving scores are folded into the weights they scale (``W[:, j] *= â_j``), so the pruned
  model computes what the sparse-trained model computed with the pruned scores at 0;
  setting them to 1 (a literal a* ∈ {0, 1}) would change the function before fine-tuning.
* Scores start at 1, live in their own optimizer group without weight decay (AdamW's decay
  would add an ℓ2 shrinkage), with ``score_lr`` (default: the phase's lr). The ℓ1 term is
  λ·Σ|â| over all entries, a loss term (its gradient is the unofficial code's
  ``grad += λ·sign(â)``). Paper values: λ = 1e-4, 100 sparse-training epochs.
* Units of the space that VTP has no scores for (heads, q/k dims, branches) stay whole.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from automl_hiap import layout
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

# VTP's score vectors: BlockKeep field -> space unit
FAMILIES = {"attn_in": Unit.ATTN_IN, "v": Unit.V_DIM, "mlp_in": Unit.MLP_IN, "neuron": Unit.NEURON}


class VTPParams(StrategyParams):
    """Sparse training (λ, epochs) then fine-tuning (paper: λ = 1e-4, 100 epochs each)."""

    sparse_epochs: Annotated[int, Field(ge=1)] = 100
    l1: Annotated[float, Field(ge=0)] = 1e-4
    sparse_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr
    score_lr: Annotated[float, Field(gt=0)] | None = None  # default: the sparse phase's lr
    finetune_epochs: Annotated[int, Field(ge=0)] = 100
    finetune_lr: Annotated[float, Field(gt=0)] | None = None


def _families(space: SearchSpace) -> list[str]:
    return [f for f, unit in FAMILIES.items() if space.searches(unit)]


def _minimum(space: SearchSpace, layer: int, family: str) -> int:
    if family == "v":
        return space.min_dims(layer)
    if family == "neuron":
        return space.min_neurons(layer)
    return 1


def threshold_masks(
    space: SearchSpace, scores: list[dict[str, Tensor]], pruned: int
) -> list[BlockKeep]:
    """0/1 keep values after removing the ``pruned`` entries of lowest |score| (one global
    threshold), with each group's count floored to an allowed one (its top entries kept)."""
    families = _families(space)
    magnitudes = [s[f].detach().abs().double().cpu() for s in scores for f in families]
    alive = iter(zip(magnitudes, survivors(magnitudes, pruned), strict=True))
    keeps = []
    for i in range(space.depth):
        values = {}
        for family in families:
            magnitude, above = next(alive)
            groups = magnitude.reshape(-1, magnitude.shape[-1])  # per head for v dims
            rows = []
            for row, row_alive in zip(groups, above.reshape(groups.shape), strict=True):
                count = int(row_alive.sum())
                count = space.allowed_kept(count, row.numel(), _minimum(space, i, family))
                rows.append(top_kept(row, count))
            values[family] = torch.stack(rows).reshape(magnitude.shape)
        keeps.append(BlockKeep(**values))
    return keeps


def threshold_to_budget(
    space: SearchSpace, scores: list[dict[str, Tensor]], target: float, cost: CostModel = MACS
) -> Subnet:
    """The global threshold that keeps the most entries while meeting ``target`` (MACs, or
    ``cost``'s unit)."""
    total = sum(s[f].numel() for s in scores for f in _families(space))
    fit = bisect_to_budget(
        space, lambda pruned: threshold_masks(space, scores, pruned), target, total, cost=cost
    )
    if not fit.feasible:
        raise UserError(
            f"budget: VTP's smallest structure costs {cost.describe(fit.macs)}, above the "
            f"target {cost.describe(target)}; search more units (space.units) or raise the budget"
        )
    return Subnet.from_keep(space, fit.keeps).validate(space)


class _SparseTraining(TrainHooks):
    """Learnable scores on the projection inputs, ℓ1-regularized."""

    def __init__(self, model: nn.Module, space: SearchSpace, params: VTPParams) -> None:
        self.space, self.params = space, params
        device = next(model.parameters()).device
        self.scores = [
            {
                f: nn.Parameter(torch.ones_like(getattr(k, f), device=device))
                for f in _families(space)
            }
            for k in space.dense_keep()
        ]
        self.masks = Masks(model, space, [BlockKeep(**s) for s in self.scores])

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.scores for p in layer.values()]

    def param_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": self.parameters(), "weight_decay": 0.0}
        if self.params.score_lr is not None:
            group["lr"] = self.params.score_lr
        return [group]

    def extra_loss(self, logits: Tensor, targets: Tensor) -> Tensor | None:
        if self.params.l1 == 0:
            return None
        return self.params.l1 * sum(
            (p.abs().sum() for p in self.parameters()), logits.new_zeros(())
        )

    def close(self) -> None:
        self.masks.remove()

    def metrics(self) -> dict[str, float]:
        values = torch.cat([p.detach().abs().flatten() for p in self.parameters()])
        return {
            "score_mean": float(values.mean()),
            "score_below_0.1": float((values < 0.1).double().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"scores": [{f: p.detach().clone() for f, p in s.items()} for s in self.scores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for mine, saved in zip(self.scores, state["scores"], strict=True):
                for family, p in mine.items():
                    p.copy_(saved[family])


@torch.no_grad()
def fold_scores(model: nn.Module, scores: list[dict[str, Tensor]]) -> None:
    """Multiply each weight column by the score that scaled its input (every VTP score gates
    input columns: ``layout.GATES``)."""
    blocks: Any = model.blocks
    for i, (block, s) in enumerate(zip(blocks, scores, strict=True)):
        shape = layout.block_shape(block, i)
        for family, values in s.items():
            where = layout.GATES[FAMILIES[family]]
            assert where.axis == layout.COLUMNS
            weight = layout.linear(block, where.linear).weight
            column = layout.expand(shape, FAMILIES[family], where, values.detach())
            weight.mul_(column.to(weight)[None, :])


class VTPStrategy(Strategy[VTPParams]):
    name = "vtp"
    description = "VTP (2021): ℓ1-trained dimension scores, global threshold, fine-tuning"
    requires_units = tuple(FAMILIES.values())
    units_error = (
        "space.units: VTP scores attn_in, v_dim, mlp_in and neuron; the space searches none of them"
    )
    needs_trainer = True
    trainer_error = "strategy: VTP trains; it needs training data (a trainer)"
    fine_tune = FineTune(phase="vtp_finetune")
    latency_budgets = True  # the threshold bisects the core's cost model
    smoke_params: ClassVar[dict[str, Any]] = {"sparse_epochs": 1}

    def search(self, context: SearchContext) -> SearchResult:
        params, space, trainer = self.params, context.space, context.trainer
        target = self.target(context)
        context.model.to(trainer.device)
        hooks = _SparseTraining(context.model, space, params)
        self.train_phase(context, hooks, "vtp_sparse", params.sparse_epochs, params.sparse_lr)
        scores = [{f: p.detach() for f, p in s.items()} for s in hooks.scores]
        subnet = threshold_to_budget(space, scores, target, context.cost)
        fold_scores(context.model, scores)
        return SearchResult(subnet=subnet, model=context.model, metrics=hooks.metrics())
