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
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from automl_hiap import layout
from automl_hiap.errors import UserError
from automl_hiap.selection import select_to_budget
from automl_hiap.space import BlockKeep, Unit
from automl_hiap.strategy import FineTune, SearchContext, SearchResult, Strategy, StrategyParams


class MagnitudeParams(StrategyParams):
    """Fine-tuning epochs of the exported model (0: one-shot, no training at all)."""

    finetune_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr


# the unit families scored: BlockKeep field -> space unit
FAMILIES = {
    "qk": Unit.QK_DIM,
    "v": Unit.V_DIM,
    "neuron": Unit.NEURON,
    "attn_in": Unit.ATTN_IN,
    "mlp_in": Unit.MLP_IN,
}


@torch.no_grad()
def unit_energies(model: torch.nn.Module) -> list[dict[str, Tensor]]:
    """Per layer: raw energies and weight counts of every unit family."""
    layers = []
    for i, block in enumerate(layout.blocks(model)):
        shape = layout.block_shape(block, i)
        energy = layout.energy(shape, layout.block_tensors(block), list(FAMILIES.values()))
        layer = {family: energy[unit] for family, unit in FAMILIES.items()}
        for family, unit in FAMILIES.items():  # weights one unit owns (to normalize per weight)
            layer[f"{family}_size"] = torch.tensor(float(layout.weight_count(shape, unit)))
        layers.append(layer)
    return layers


def importance_scores(model: torch.nn.Module) -> list[BlockKeep]:
    """Family-normalized, additive unit importances for ``select_to_budget``."""
    energies = unit_energies(model)
    scale = {}
    for family in FAMILIES:
        total = sum(float(e[family].sum()) for e in energies)
        count = sum(e[family].numel() * float(e[f"{family}_size"]) for e in energies)
        scale[family] = total / count if total > 0 else 1.0  # mean energy per weight
    scores = []
    for e in energies:
        qk, v = e["qk"] / scale["qk"], e["v"] / scale["v"]
        scores.append(
            BlockKeep(
                attn=torch.zeros((), dtype=torch.float64),
                head=qk.sum(1) + v.sum(1),
                ffn=torch.zeros((), dtype=torch.float64),
                qk=qk,
                v=v,
                neuron=e["neuron"] / scale["neuron"],
                attn_in=e["attn_in"] / scale["attn_in"],
                mlp_in=e["mlp_in"] / scale["mlp_in"],
            )
        )
    return scores


class MagnitudeStrategy(Strategy[MagnitudeParams]):
    name = "magnitude"
    description = "baseline: one-shot pruning by weight energy per MAC, optional fine-tuning"
    fine_tune = FineTune(phase="magnitude_finetune")
    trainer_error = "strategy.params.finetune_epochs: fine-tuning needs training data"

    def search(self, context: SearchContext) -> SearchResult:
        target = self.target_macs(context)
        scores = importance_scores(context.model)
        try:
            subnet = select_to_budget(context.space, scores, target)
        except ValueError as exc:
            raise UserError(f"budget: {exc}") from None
        return SearchResult(subnet=subnet, model=context.model)
