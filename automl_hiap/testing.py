"""The conformance suite every strategy must pass, shipped so a plugin is tested like a
built-in one (as Optuna ships tests every sampler must pass).

On a tiny ViT (3 blocks, 48 wide, 16×16 images) with synthetic data, a strategy run with its
``smoke_params`` must: declare consistent settings; raise its declared errors for a missing
budget, unit or trainer before searching; decide a subnet that validates against the space
and meets the budget; decide the same subnet for the same seed; return weights whose masked
forward equals the sliced model's; with a fine-tune phase, return the sliced subnet trained in
that phase; and, when it declares ``latency_budgets``, meet a budget in a cost model that is
not MACs (the one in ``SearchContext.cost``), as it must a latency. A plugin author runs it
with one call::

    from automl_hiap.testing import check_strategy
    check_strategy(MyStrategy)  # AssertionError naming the failed check

or one pytest test per check::

    @pytest.mark.parametrize("check", checks_for(MyStrategy))
    def test_conformance(check: str) -> None:
        run_check(MyStrategy, check)

A strategy whose optional package is missing (``Strategy.requires``) raises
``unittest.SkipTest``, which pytest reports as a skip.
"""

from __future__ import annotations

import functools
import unittest
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from automl_hiap.config import TrainConfig
from automl_hiap.cost import dense_cost, subnet_cost
from automl_hiap.cost_model import CostModel, Macs, total_cost
from automl_hiap.errors import UserError
from automl_hiap.masking import Masks
from automl_hiap.models import ModelSpec
from automl_hiap.plugins import missing_requirements
from automl_hiap.slicing import slice_subnet
from automl_hiap.space import ALL_UNITS, Constraints, SearchSpace, Unit
from automl_hiap.strategy import (
    SearchContext,
    SearchResult,
    Strategy,
    StrategyParams,
    unit_listing,
)
from automl_hiap.trainer import FitResult, Trainer

BUDGET = 0.5  # target: this fraction of the dense MACs
BUDGET_TOLERANCE = 0.03  # a strategy may overshoot its target by this fraction
EQUAL_LOGITS = 1e-4  # masked vs sliced, fp32
TINY = ModelSpec(
    "vit_tiny_patch16_224",
    dict(img_size=16, patch_size=4, depth=3, embed_dim=48, num_heads=3, mlp_ratio=2.0),
)
CONSTRAINTS = Constraints(round_to=2, min_head_dims=2)
StrategyClass = type[Strategy[Any]]


class RecordingTrainer(Trainer):
    """A trainer that remembers its phases (the suite checks the core ran the fine-tuning)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phases: list[tuple[str, nn.Module]] = []

    def fit(self, model: nn.Module, epochs: int, phase: str, *args: Any, **kw: Any) -> FitResult:
        self.phases.append((phase, model))
        return super().fit(model, epochs, phase, *args, **kw)


def synthetic_data(count: int = 64, seed: int = 1234) -> torch.utils.data.TensorDataset:
    """Random 16×16 images with random labels of 10 classes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return torch.utils.data.TensorDataset(images, labels)


class DepthPricedCost(Macs):
    """MACs with block i priced (i + 1)-fold: a cost model unlike MACs (deep blocks dear), for
    checking that a strategy selects to the context's cost model, as a latency budget needs."""

    unit = "depth-priced MACs"

    def counts(self, space: SearchSpace, index: int, *counts: Any) -> float:
        return (index + 1) * super().counts(space, index, *counts)

    def block(self, space: SearchSpace, index: int, keep: Any) -> torch.Tensor:
        return (index + 1) * super().block(space, index, keep)


def tiny_context(
    seed: int = 0,
    units: Iterable[Unit] = ALL_UNITS,
    budget: float | None = BUDGET,
    trainer: bool = True,
    cost: CostModel | None = None,
) -> SearchContext:
    """A fresh tiny ViT (seeded weights), its space and, by default, a CPU trainer; with
    ``cost``, the budget is that fraction of the dense model's cost in that model."""
    torch.manual_seed(seed)
    model = TINY.create().eval()
    space = SearchSpace.from_model(model, units, CONSTRAINTS)
    config = TrainConfig(batch_size=16, lr=1e-3, seed=seed)
    fit = RecordingTrainer(config, synthetic_data(), device="cpu") if trainer else None
    if cost is None:
        target = None if budget is None else budget * dense_cost(space).macs
        return SearchContext(model, TINY, space, target, seed=seed, trainer=fit)
    dense = float(total_cost(cost, space, space.dense_keep()))
    target = None if budget is None else budget * dense
    return SearchContext(model, TINY, space, target, seed=seed, trainer=fit, cost=cost)


def smoke_strategy(cls: StrategyClass, fine_tune_epochs: int = 0) -> Strategy[Any]:
    """``cls`` with its smoke params (and the fine-tune phase's epochs, if it has one)."""
    params = dict(cls.smoke_params)
    if cls.fine_tune is not None:
        params[cls.fine_tune.epochs] = fine_tune_epochs
    return cls.from_dict(params)


@functools.lru_cache(maxsize=16)
def _decision(cls: StrategyClass, seed: int = 0) -> tuple[SearchContext, SearchResult]:
    context, strategy = tiny_context(seed), smoke_strategy(cls)
    strategy.check(context)
    return context, strategy.search(context)


@functools.lru_cache(maxsize=16)
def _fine_tuned(cls: StrategyClass, seed: int = 0) -> tuple[SearchContext, SearchResult]:
    context = tiny_context(seed)
    return context, smoke_strategy(cls, fine_tune_epochs=1).run(context)


def clear_cache() -> None:
    """Forget the cached runs (they are shared by the checks of one strategy)."""
    _decision.cache_clear()
    _fine_tuned.cache_clear()


def _fail(cls: StrategyClass, message: str) -> AssertionError:
    return AssertionError(f"strategy {getattr(cls, 'name', cls.__qualname__)!r}: {message}")


# ---------------------------------------------------------------- the checks
def declarations(cls: StrategyClass) -> None:
    """Name, description, Params and smoke params are what the registry and suite expect."""
    for attribute in ("name", "description"):
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            raise _fail(cls, f"{attribute} must be a non-empty string")
    if not issubclass(cls.Params, StrategyParams):
        raise _fail(cls, "Params must subclass StrategyParams")
    try:
        cls.Params.model_validate(cls.smoke_params)
    except ValueError as exc:
        raise _fail(cls, f"smoke_params do not validate against its Params: {exc}") from None


def requirements_checked_before_search(cls: StrategyClass) -> None:
    """``run`` raises the declared error for a missing budget, unit family or trainer."""
    expectations: list[tuple[str, SearchContext, Strategy[Any], str]] = []
    strategy = smoke_strategy(cls)
    if cls.needs_budget:
        message = f"budget: strategy {cls.name!r} needs a budget"
        expectations.append(("without a budget", tiny_context(budget=None), strategy, message))
    if cls.requires_units:
        others = tuple(u for u in ALL_UNITS if u not in cls.requires_units)
        message = cls.units_error.format(name=cls.name, units=unit_listing(cls.requires_units))
        context = tiny_context(units=others)
        expectations.append((f"with units {[str(u) for u in others]}", context, strategy, message))
    for variant in (strategy, smoke_strategy(cls, fine_tune_epochs=1)):
        if variant.uses_trainer():
            message = cls.trainer_error.format(name=cls.name)
            context = tiny_context(trainer=False)
            expectations.append(("without a trainer", context, variant, message))
    for what, context, variant, message in expectations:
        try:
            variant.run(context)
        except UserError as exc:
            if message not in str(exc):
                raise _fail(cls, f"{what}: expected the error {message!r}, got {exc}") from None
        else:
            raise _fail(cls, f"{what}: run() should raise UserError({message!r})")


def subnet_validates_and_respects_the_budget(cls: StrategyClass) -> None:
    context, result = _decision(cls)
    problems = result.subnet.problems(context.space)
    if problems:
        raise _fail(cls, f"its subnet breaks the space's constraints: {problems}")
    assert context.target is not None
    macs = subnet_cost(context.space, result.subnet).macs
    if macs > context.target * (1 + BUDGET_TOLERANCE):
        raise _fail(
            cls,
            f"its subnet has {macs:.0f} MACs, above the budget {context.target:.0f} "
            f"(+{BUDGET_TOLERANCE:.0%} tolerance)",
        )


def meets_a_budget_in_another_cost_model(cls: StrategyClass) -> None:
    """With ``latency_budgets``, the subnet meets a budget in ``SearchContext.cost`` (here
    :class:`DepthPricedCost`), not in MACs."""
    cost = DepthPricedCost()
    context, strategy = tiny_context(cost=cost), smoke_strategy(cls)
    strategy.check(context)
    subnet = strategy.search(context).subnet
    assert context.target is not None
    spent = float(total_cost(cost, context.space, subnet.to_keep(context.space, torch.float64)))
    if spent > context.target * (1 + BUDGET_TOLERANCE):
        raise _fail(
            cls,
            f"its subnet costs {spent:.0f} {cost.unit}, above the budget "
            f"{context.target:.0f} (+{BUDGET_TOLERANCE:.0%} tolerance): it does not select "
            "to SearchContext.cost",
        )


def seed_deterministic(cls: StrategyClass) -> None:
    """Two runs with one seed decide the same subnet (for a strategy that fine-tunes, the
    second run is the fine-tuning one: its decision comes before the fine-tuning)."""
    first = _decision(cls)[1].subnet
    if cls.fine_tune is not None:
        second = _fine_tuned(cls)[1].subnet
    else:
        second = _decision.__wrapped__(cls)[1].subnet
    if first != second:
        raise _fail(cls, "two runs with the same seed decided different subnets")


def masked_equals_exported(cls: StrategyClass) -> None:
    """The returned weights under hard masks compute what the sliced model computes."""
    context, result = _decision(cls)
    model, subnet, space = result.model.eval(), result.subnet, context.space
    hooked = [
        name
        for name, module in model.named_modules()
        if module._forward_pre_hooks or module._forward_hooks
    ]
    if hooked:
        raise _fail(cls, f"it left hooks (masks) on the model it returns: {hooked}")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), Masks(model, space, subnet.to_keep(space)):
        masked = model(x)
    with torch.no_grad():
        exported = slice_subnet(model, subnet, context.spec).eval()(x)
    gap = float((masked - exported).abs().max())
    if not gap <= EQUAL_LOGITS:
        raise _fail(cls, f"masked and sliced logits differ by {gap:.3g} (> {EQUAL_LOGITS})")


def fine_tuned_model_is_the_exported_subnet(cls: StrategyClass) -> None:
    """``run`` slices the subnet and trains exactly that model in the declared phase."""
    assert cls.fine_tune is not None
    context, result = _fine_tuned(cls)
    problems = result.subnet.problems(context.space)
    if problems:
        raise _fail(cls, f"the fine-tuned subnet breaks the space's constraints: {problems}")
    if getattr(result.model, "subnet", None) != result.subnet:
        raise _fail(cls, "run() returned a model that is not the sliced subnet")
    params = sum(p.numel() for p in result.model.parameters())
    expected = subnet_cost(context.space, result.subnet).params
    if params != expected:
        raise _fail(cls, f"the returned model has {params} parameters, the subnet {expected}")
    phase, trained = context.trainer.phases[-1]
    if phase != cls.fine_tune.phase or trained is not result.model:
        raise _fail(cls, f"the last trained phase is {phase!r}, not {cls.fine_tune.phase!r} on it")


CHECKS: dict[str, Callable[[StrategyClass], None]] = {
    check.__name__: check
    for check in (
        declarations,
        requirements_checked_before_search,
        subnet_validates_and_respects_the_budget,
        meets_a_budget_in_another_cost_model,
        seed_deterministic,
        masked_equals_exported,
        fine_tuned_model_is_the_exported_subnet,
    )
}


def checks_for(cls: StrategyClass) -> list[str]:
    """The names of the checks that apply to ``cls`` (the fine-tune one needs a phase)."""
    names = list(CHECKS)
    if cls.fine_tune is None:
        names.remove("fine_tuned_model_is_the_exported_subnet")
    if not cls.latency_budgets:
        names.remove("meets_a_budget_in_another_cost_model")
    return names


def run_check(cls: StrategyClass, check: str) -> None:
    """One named check (raises AssertionError, or unittest.SkipTest for a missing package)."""
    missing = missing_requirements(cls)
    if missing:
        raise unittest.SkipTest(f"{cls.name} needs an optional package: {'; '.join(missing)}")
    CHECKS[check](cls)


def check_strategy(cls: StrategyClass) -> None:
    """Every check that applies to ``cls``; the first failure raises AssertionError."""
    for check in checks_for(cls):
        run_check(cls, check)
