"""NNI 3.0's L1-norm and Taylor pruners as extra baselines (optional: ``pip install
'automl_hiap[nni]'``).

NNI decides which output rows of every block's ``qkv`` and ``fc1`` to mask: ``L1NormPruner``
by the rows' L1 weight norms, ``TaylorPruner`` by the first-order Taylor importance
Σ(g·w)² of the rows, accumulated over ``taylor_batches`` training batches. One global
ranking (``global_group_id``) spans all layers, so widths come out heterogeneous. An adapter
turns NNI's masks into this project's units — a v row is a v dim (with its ``proj`` column),
an ``fc1`` row a neuron, and a q/k dim stays only when NNI keeps both its q and its k row (a
masked q or k row already zeroes that dim's logit contribution) — and our export makes the
model physically smaller (NNI's own ``ModelSpeedup`` tracer breaks on recent torch, and cannot
see heads anyway).

Choices:

* Budget: NNI takes a ``sparse_ratio`` of rows; the smallest ratio whose adapted mask meets the
  MACs target is found by bisection (NNI's masks are nested in the ratio). The adapted mask may
  still break the space's constraints (``round_to``, minimum dims per head); a repair with
  ``select_to_budget`` on 0/1 scores (NNI-kept units 1, NNI-pruned units 0) removes the
  NNI-pruned units first and stops at the budget, so it only rounds NNI's decision.
* Taylor needs gradients, which NNI collects while its evaluator trains; the training function
  given to it runs the first ``taylor_batches`` shuffled training batches with an SGD optimizer
  at lr 0, so the pruned weights are the dense ones (as for L1) and every bisection step sees
  the same scores.
* Only the units NNI masks are pruned (qk_dim, v_dim, neuron; heads and branches only as
  their dims go); input columns are not. A unit family the space does not search is kept
  whole, whatever NNI masked.
* Optional fine-tuning of the sliced model (``finetune_epochs``, default 0) is the core's
  fine-tune phase (``Strategy.run``). More in docs/strategies.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from automl_hiap import layout
from automl_hiap.cost_model import MACS, CostModel
from automl_hiap.errors import UserError
from automl_hiap.selection import bisect_to_budget, select_to_budget
from automl_hiap.space import BlockKeep, SearchSpace, Unit
from automl_hiap.strategy import FineTune, SearchContext, SearchResult, Strategy, StrategyParams
from automl_hiap.subnet import Subnet

INSTALL = "pip install 'automl_hiap[nni]'"
Masks = dict[str, dict[str, Tensor]]  # NNI's format: module name -> {"weight": mask, ...}
R = TypeVar("R")


class NNIParams(StrategyParams):
    """Which NNI pruner; Taylor's gradient batches; fine-tuning of the exported model."""

    pruner: Literal["l1", "taylor"] = "l1"
    taylor_batches: Annotated[int, Field(ge=1)] = 8
    finetune_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr


# the Linears whose output rows NNI masks, and the unit families their rows are
PRODUCERS = ("qkv", "fc1")
FAMILIES = {"qk": Unit.QK_DIM, "v": Unit.V_DIM, "neuron": Unit.NEURON}


def _kept(mask: Tensor, axis: int) -> Tensor:
    """1.0 for each row NNI keeps (any weight of it unmasked)."""
    return (mask != 0).any(axis).double().cpu()


def masks_to_keep(space: SearchSpace, masks: Masks) -> list[BlockKeep]:
    """NNI row masks of ``blocks.{i}.attn.qkv`` / ``blocks.{i}.mlp.fc1`` as unit keep values
    (a module NNI did not prune keeps every row)."""
    keeps = []
    for i, shape in enumerate(space.layers):
        weights = {}
        for name in PRODUCERS:
            rows = layout.axis_length(shape, name, layout.ROWS)
            mask = masks.get(layout.module_name(i, name), {}).get("weight")
            weights[f"{name}_w"] = (
                torch.ones(rows, 1) if mask is None else mask.detach().reshape(rows, -1)
            )
        parts = layout.per_unit(shape, weights, FAMILIES.values(), _kept, axis=layout.ROWS)
        (q, k), (v,), (neuron,) = (parts[unit] for unit in FAMILIES.values())
        values = {"qk": q * k, "v": v, "neuron": neuron}
        keeps.append(BlockKeep(**{f: t for f, t in values.items() if space.searches(FAMILIES[f])}))
    return keeps


def repair(
    space: SearchSpace, keeps: list[BlockKeep], target: float, cost: CostModel = MACS
) -> Subnet:
    """The budget-feasible, valid subnet closest to NNI's decision (its pruned units go first)."""
    scores = []
    for shape, keep in zip(space.layers, keeps, strict=True):
        k = keep.filled(shape, like=torch.ones((), dtype=torch.float64))
        scores.append(
            BlockKeep(
                attn=torch.zeros((), dtype=torch.float64),
                head=k.qk.sum(1) + k.v.sum(1),
                ffn=torch.zeros((), dtype=torch.float64),
                qk=k.qk,
                v=k.v,
                neuron=k.neuron,
            )
        )
    try:
        return select_to_budget(space, scores, target, cost=cost)
    except ValueError as exc:
        raise UserError(f"budget: {exc}") from None


def _import_nni() -> Any:
    try:
        import nni
        from nni.compression.pruning import L1NormPruner, TaylorPruner
        from nni.compression.utils import TorchEvaluator
    except ImportError as exc:
        raise UserError(f"strategy.name: 'nni' needs NNI 3.0 ({exc}); {INSTALL}") from None
    return nni, L1NormPruner, TaylorPruner, TorchEvaluator


def _batches(trainer: Any, count: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        trainer.train_data, batch_size=trainer.config.batch_size, shuffle=True, generator=generator
    )
    batches = []
    for batch in loader:
        batches.append((batch[0], batch[1]))
        if len(batches) == count:
            break
    return batches


def with_nni_masks(
    model: nn.Module,
    pruner: str,
    batches: list[tuple[Tensor, Tensor]],
    device: torch.device,
    use: Callable[[Callable[[float], Masks]], R],
) -> R:
    """Run NNI's pruner once and call ``use(masks_at)``, where ``masks_at(ratio)`` is NNI's own
    mask generation at any global sparse ratio from the metrics it collected (for Taylor, the
    gradients its evaluator gathered; ``use`` runs while they are still held). The model is
    unwrapped afterwards, its weights unchanged."""
    nni, l1_pruner, taylor_pruner, evaluator_cls = _import_nni()
    suffixes = tuple(f".{layout.LINEARS[name]}" for name in PRODUCERS)
    names = [name for name, _ in model.named_modules() if name.endswith(suffixes)]
    config = [{"op_names": names, "sparse_ratio": 0.5, "global_group_id": 0}]
    result: list[R] = []

    def masks_at(ratio: float) -> Masks:
        # NNI keeps the ratio on each target space (no public setter on the pruner; NNI is
        # archived at 3.0, pinned exactly, so this attribute does not move)
        for spaces in compressor._target_spaces.values():
            for target in spaces.values():
                if target.sparse_ratio is not None:  # weights; biases follow them (align)
                    target.sparse_ratio = ratio
        return compressor.generate_masks()

    def training_step(batch: tuple[Tensor, Tensor], model: nn.Module) -> Tensor:
        images, targets = batch
        return F.cross_entropy(model(images.to(device)), targets.to(device))

    def training_func(
        model: nn.Module,
        optimizers: Any,
        training_step: Any,
        lr_schedulers: Any = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
    ) -> None:
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        model.train()
        for batch in batches:
            optimizer.zero_grad()
            training_step(batch, model).backward()
            optimizer.step()
        result.append(use(masks_at))  # the evaluator drops the gradients when training ends

    was_training = model.training
    if pruner == "l1":
        compressor = l1_pruner(model, config)
    else:
        optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)
        evaluator = evaluator_cls(training_func, optimizer, training_step)
        compressor = taylor_pruner(model, config, evaluator, training_steps=len(batches))
    try:
        compressor.compress()
        if pruner == "l1":
            result.append(use(masks_at))
    finally:
        compressor.unwrap_model()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return result[0]


def nni_subnet(
    space: SearchSpace,
    masks_at: Callable[[float], Masks],
    target: float,
    cost: CostModel = MACS,
    iterations: int = 14,
) -> tuple[Subnet, float]:
    """Bisect NNI's sparse ratio to the smallest one meeting ``target``, adapt, repair."""
    fit = bisect_to_budget(
        space,
        lambda ratio: masks_to_keep(space, masks_at(ratio)),
        target,
        0.99,
        iterations,
        cost=cost,
    )
    return repair(space, fit.keeps, target, cost), fit.value


class NNIStrategy(Strategy[NNIParams]):
    name = "nni"
    description = "NNI 3.0 L1-norm / Taylor pruners on qkv and fc1 rows, mapped to our units"
    requires: ClassVar[dict[str, str]] = {"nni": INSTALL}
    requires_units = (Unit.QK_DIM, Unit.V_DIM, Unit.NEURON)
    units_error = (
        "space.units: the NNI pruners mask qk_dim, v_dim and neuron rows; "
        "the space searches none of them"
    )
    trainer_error = "strategy.params: Taylor pruning and fine-tuning need training data"
    fine_tune = FineTune(phase="nni_finetune")
    latency_budgets = True  # the ratio bisects, and the repair selects, by the core's cost model
    smoke_params: ClassVar[dict[str, Any]] = {"pruner": "taylor", "taylor_batches": 2}

    def uses_trainer(self) -> bool:
        """Taylor importance reads gradients of training batches; L1 needs no data."""
        return self.params.pruner == "taylor" or super().uses_trainer()

    def search(self, context: SearchContext) -> SearchResult:
        params, space, trainer = self.params, context.space, context.trainer
        target = self.target(context)
        device = trainer.device if trainer is not None else next(context.model.parameters()).device
        context.model.to(device)
        batches = (
            _batches(trainer, params.taylor_batches, context.seed)
            if params.pruner == "taylor"
            else []
        )
        subnet, ratio = with_nni_masks(
            context.model,
            params.pruner,
            batches,
            device,
            lambda masks_at: nni_subnet(space, masks_at, target, context.cost),
        )
        return SearchResult(subnet=subnet, model=context.model, metrics={"nni_sparse_ratio": ratio})
