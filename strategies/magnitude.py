"""One-shot magnitude pruning: the simple baseline every other strategy must beat.

Each unit's importance is the energy (sum of squared weights) of the weights it owns:

* q/k dim (h, j): its q and k rows of ``qkv`` (+ biases);
* v dim (h, j): its v row of ``qkv`` (+ bias) and its ``proj`` column;
* FFN neuron k: its ``fc1`` row (+ bias) and ``fc2`` column;
* input column c of ``qkv`` / ``fc1``: that column;
* head: the sum of its q/k and v dims; attention / FFN branch: nothing beyond its units.

Choices (no paper defines this baseline):

* Energies are divided by the mean energy per weight of their family across the network, so
  families with different weight scales compare fairly (pretrained q/k weights are larger than
  v weights, which would otherwise make v dims look unimportant — SERo's observation).
* Scores are additive (a head is worth the sum of its dims), and units are removed greedily by
  importance lost per MAC saved until the budget is met (``automl_hiap.selection``), which is
  the "importance per MAC" ranking with the space's constraints respected.
* Optional fine-tuning of the sliced model (``finetune_epochs``, default 0: one-shot) is the
  core's fine-tune phase (``Strategy.run``). More in docs/strategies.md.

``criterion`` swaps the energy for a data-driven score of the same coupled groups
(``automl_hiap.importance``: first-order Taylor, diagonal Fisher) from a few calibration
batches of the training split; ``normalize`` and ``tradeoff`` say how families are compared.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from automl_hiap import importance
from automl_hiap.errors import UserError
from automl_hiap.selection import select_to_budget
from automl_hiap.space import BlockKeep, SearchSpace
from automl_hiap.strategy import FineTune, SearchContext, SearchResult, Strategy, StrategyParams


class MagnitudeParams(StrategyParams):
    """The importance criterion and, for the data-driven ones, the calibration set; fine-tuning
    epochs of the exported model (0: one-shot, no training at all)."""

    criterion: importance.Criterion = "energy"
    normalize: importance.Normalize = "family"
    tradeoff: importance.Tradeoff = "per_mac"
    calibration_images: Annotated[int, Field(ge=1)] = 512  # training images (taylor/fisher)
    batch_size: Annotated[int, Field(ge=1)] = 32  # one gradient per batch (fisher's samples)
    finetune_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr


def importance_scores(model: torch.nn.Module) -> list[BlockKeep]:
    """Family-normalized, additive unit energies for ``select_to_budget`` (the default
    criterion; ``automl_hiap.importance`` holds every criterion)."""
    return importance.importance(model, SearchSpace.from_model(model), "energy")


class MagnitudeStrategy(Strategy[MagnitudeParams]):
    name = "magnitude"
    description = "baseline: one-shot pruning by weight energy per MAC, optional fine-tuning"
    fine_tune = FineTune(phase="magnitude_finetune")
    latency_budgets = True  # selects through the core's cost model
    trainer_error = (
        "strategy.params: fine-tuning (finetune_epochs) and the criteria taylor, fisher and "
        "gradsq need training data"
    )

    def uses_trainer(self) -> bool:
        return super().uses_trainer() or self.params.criterion not in importance.DATA_FREE

    def search(self, context: SearchContext) -> SearchResult:
        target = self.target(context)
        p = self.params
        batches = None
        if p.criterion not in importance.DATA_FREE:
            batches = importance.calibration_batches(
                context.trainer.train_data, p.calibration_images, p.batch_size, context.seed
            )
        scores = importance.importance(
            context.model, context.space, p.criterion, batches, p.normalize, p.tradeoff
        )
        try:
            subnet = select_to_budget(context.space, scores, target, cost=context.cost)
        except ValueError as exc:
            raise UserError(f"budget: {exc}") from None
        return SearchResult(subnet=subnet, model=context.model)
