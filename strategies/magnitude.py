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
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from automl_hiap.errors import UserError
from automl_hiap.selection import select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.space import BlockKeep
from automl_hiap.strategy import SearchContext, SearchResult, Strategy, StrategyParams


class MagnitudeParams(StrategyParams):
    """Fine-tuning epochs of the exported model (0: one-shot, no training at all)."""

    finetune_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr


def _energy_rows(weight: Tensor, bias: Tensor | None) -> Tensor:
    energy = weight.detach().double().square().sum(1)
    return energy if bias is None else energy + bias.detach().double().square()


@torch.no_grad()
def unit_energies(model: torch.nn.Module) -> list[dict[str, Tensor]]:
    """Per layer: raw energies and weight counts of every unit family."""
    layers = []
    for block in model.blocks:  # type: ignore[union-attr]
        attn, mlp = block.attn, block.mlp
        heads, head_dim = attn.num_heads, attn.head_dim
        width = heads * head_dim
        rows = _energy_rows(attn.qkv.weight, attn.qkv.bias)
        proj_cols = attn.proj.weight.detach().double().square().sum(0)
        fc2_cols = mlp.fc2.weight.detach().double().square().sum(0)
        layers.append(
            {
                "qk": (rows[:width] + rows[width : 2 * width]).reshape(heads, head_dim),
                "v": (rows[2 * width :] + proj_cols).reshape(heads, head_dim),
                "neuron": _energy_rows(mlp.fc1.weight, mlp.fc1.bias) + fc2_cols,
                "attn_in": attn.qkv.weight.detach().double().square().sum(0),
                "mlp_in": mlp.fc1.weight.detach().double().square().sum(0),
                # weights owned by one unit of each family (to normalize per weight)
                "qk_size": torch.tensor(2.0 * attn.qkv.in_features),
                "v_size": torch.tensor(float(attn.qkv.in_features + attn.proj.out_features)),
                "neuron_size": torch.tensor(float(mlp.fc1.in_features + mlp.fc2.out_features)),
                "attn_in_size": torch.tensor(float(attn.qkv.out_features)),
                "mlp_in_size": torch.tensor(float(mlp.fc1.out_features)),
            }
        )
    return layers


def importance_scores(model: torch.nn.Module) -> list[BlockKeep]:
    """Family-normalized, additive unit importances for ``select_to_budget``."""
    energies = unit_energies(model)
    scale = {}
    for family in ("qk", "v", "neuron", "attn_in", "mlp_in"):
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


class MagnitudeStrategy(Strategy):
    name = "magnitude"
    description = "baseline: one-shot pruning by weight energy per MAC, optional fine-tuning"
    Params = MagnitudeParams

    def search(self, context: SearchContext) -> SearchResult:
        target = self.target_macs(context)
        scores = importance_scores(context.model)
        try:
            subnet = select_to_budget(context.space, scores, target)
        except ValueError as exc:
            raise UserError(f"budget: {exc}") from None
        epochs = self.params.finetune_epochs  # type: ignore[attr-defined]
        if epochs == 0:
            return SearchResult(subnet=subnet, model=context.model)
        if context.trainer is None:
            raise UserError("strategy.params.finetune_epochs: fine-tuning needs training data")
        pruned = slice_subnet(context.model, subnet, context.spec)
        context.trainer.fit(pruned, epochs, phase="magnitude_finetune", lr=self.params.finetune_lr)  # type: ignore[attr-defined]
        return SearchResult(subnet=subnet, model=pruned, fine_tuned=True)
