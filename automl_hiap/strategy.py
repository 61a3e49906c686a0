"""The Strategy API: one base class every pruning algorithm implements.

A strategy turns a dense model, its search space and a budget into a :class:`Subnet` and the
weights that go with it; :meth:`Strategy.search` is the paper's idea and nothing else. What
every strategy shares is the base class's job, in :meth:`Strategy.run`:

1. check what the class declares it needs (a budget, some of the space's units, a trainer),
   so a misconfigured search fails before it trains, with an error naming the setting;
2. ``search()``: the decision (HiAP trains gates; SERo explores masks; GOHSP ranks heads and
   runs ADMM; VTP trains sparse scores; magnitude ranks weights once);
3. slice the weights to the subnet (the physically smaller model);
4. fine-tune it, for a strategy that declares a :class:`FineTune` phase and asks for epochs.

Training phases run through the trainer's ``fit`` loop, which calls the no-op hooks of
:class:`TrainHooks` (extra parameters, extra loss, per-step schedules, gradient edits,
projections, metrics, state for exact resume). Strategies are found by name through the
``automl_hiap.strategies`` entry-point group (see ``plugins``); core code never imports one.
Every strategy, built in or plugin, must pass ``automl_hiap.testing``'s conformance suite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from automl_hiap.cost_model import MACS, CostModel
from automl_hiap.errors import UserError
from automl_hiap.models import ModelSpec
from automl_hiap.slicing import slice_subnet
from automl_hiap.space import SearchSpace, Unit
from automl_hiap.subnet import Subnet


class StrategyParams(BaseModel):
    """Base of every strategy's typed config: the YAML's ``strategy.params`` are validated
    against it, and the outer loop tunes its fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=StrategyParams)


@dataclass(frozen=True)
class FineTune:
    """A strategy's optional training of the sliced model, run by :meth:`Strategy.run`.

    It names which of the strategy's own params hold the epochs and the learning rate (None:
    ``train.lr``) and the trainer phase, whose name is the checkpoint file and the progress
    label (so a killed search resumes its fine-tuning).

    Why a declared mapping and not a shared params mixin: the papers name and size this phase
    differently (SERo's *re-optimization* is ``reopt_epochs``, 150 epochs; VTP and GOHSP
    fine-tune for 100; magnitude and NNI default to none), and the YAML keys, their defaults
    and ``metrics.json``'s ``params_config`` are a user-facing contract. A mixin would impose
    one name and one default (or aliases, which change ``model_dump()``); naming the fields
    keeps every Params class as it was, and the core still runs the phase in one place.
    """

    phase: str
    epochs: str = "finetune_epochs"
    lr: str = "finetune_lr"


@dataclass
class SearchContext:
    """What a strategy works on. ``model`` holds the dense weights and may be trained in place."""

    model: nn.Module
    spec: ModelSpec
    space: SearchSpace
    target: float | None  # the budget's target, in ``cost``'s unit (seconds: a latency)
    seed: int = 0
    trainer: Any = None  # the runtime's Trainer, when the strategy trains
    teacher: nn.Module | None = None
    cost: CostModel = MACS  # pass it to the selection: it trades importance per unit of it


@dataclass
class SearchResult:
    """A decision and its weights. From :meth:`Strategy.search`, ``model`` is the (possibly
    trained) unsliced network the subnet is cut from; from :meth:`Strategy.run`, it is the
    sliced, possibly fine-tuned, model (a ``PrunedVisionTransformer``)."""

    subnet: Subnet
    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)


class TrainHooks:
    """Points where the trainer's loop calls a strategy; every one is a no-op by default."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra optimizer groups (e.g. gate logits with their own lr and no weight decay)."""
        return []

    def on_step_start(self, step: int, total_steps: int) -> None:
        """Before a forward pass: temperature schedules, gate sampling, mask updates."""

    def extra_loss(self, logits: Tensor, targets: Tensor) -> Tensor | None:
        """A term added to the task loss (cost, feasibility, sparsity regularizers)."""
        return None

    def on_after_backward(self, step: int) -> None:
        """Between backward and the optimizer step: gradient edits (|W| scaling, L1 sign)."""

    def on_step_end(self, step: int) -> None:
        """After the optimizer step: projections, clamps."""

    def metrics(self) -> dict[str, float]:
        """Numbers for the progress bar and the tracker (expected MACs, temperature, λ, ...)."""
        return {}

    def candidate(self) -> Subnet | None:
        """The subnet this phase would yield if it stopped now (logged once per epoch)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this strategy exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def close(self) -> None:
        """After the phase, also when it failed: detach what these hooks attached (masks)."""


def unit_listing(units: tuple[Unit, ...]) -> str:
    """``a, b and c``: the units named in a requirement's error message."""
    names = [str(u) for u in units]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class Strategy(ABC, Generic[P]):
    """Base class of all pruning strategies, generic in its params:
    ``class MyStrategy(Strategy[MyParams])`` makes ``Params`` = ``MyParams`` and types
    ``self.params`` as one.

    Subclasses set ``name``, ``description`` (one line, shown by ``automl_hiap strategies``),
    declare what they need (class variables below; :meth:`run` checks them before
    :meth:`search`) and implement :meth:`search`. Error messages are ``str.format`` templates
    with ``{name}`` (and ``{units}`` for ``units_error``).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    needs_budget: ClassVar[bool] = True  # False for methods steered by a coefficient alone
    # at least one of these units must be searched (empty: no requirement)
    requires_units: ClassVar[tuple[Unit, ...]] = ()
    units_error: ClassVar[str] = (
        "space.units: strategy {name!r} prunes {units}; the space searches none of them"
    )
    needs_trainer: ClassVar[bool] = False  # the search itself trains or reads training data
    trainer_error: ClassVar[str] = "strategy: {name!r} trains; it needs training data (a trainer)"
    fine_tune: ClassVar[FineTune | None] = None  # the optional phase after slicing
    # True: the search prices its selection with ``SearchContext.cost`` (a latency budget works)
    latency_budgets: ClassVar[bool] = False
    # params that make a run a few optimizer steps on a tiny ViT (the conformance suite's)
    smoke_params: ClassVar[dict[str, Any]] = {}
    # optional packages: import name -> install command (the plugin list shows a strategy whose
    # package is missing as unavailable, with the command, instead of failing to load it)
    requires: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            params = (*get_args(base), None)[0]
            if (
                get_origin(base) is Strategy
                and isinstance(params, type)
                and issubclass(params, StrategyParams)
                and "Params" not in cls.__dict__
            ):
                cls.Params = params  # said once, in the class header
        if cls.fine_tune is not None:
            fields = cls.Params.model_fields
            missing = [f for f in (cls.fine_tune.epochs, cls.fine_tune.lr) if f not in fields]
            if missing:
                raise TypeError(
                    f"{cls.__qualname__}.fine_tune names {missing}, which "
                    f"{cls.Params.__qualname__} does not have"
                )

    def __init__(self, params: P | None = None) -> None:
        self.params: P = params if params is not None else cast(P, self.Params())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Strategy[Any]:
        """Build from the YAML's ``strategy.params`` (raises pydantic's ValidationError)."""
        return cls(cast(Any, cls.Params.model_validate(values)))

    def target(self, context: SearchContext) -> float:
        """The MACs budget, or a clear error for a strategy that cannot run without one."""
        if context.target is None:
            raise UserError(f"budget: strategy {self.name!r} needs a budget (e.g. --budget 0.5)")
        return context.target

    def fine_tune_settings(self) -> tuple[int, float | None]:
        """(epochs, lr) of the fine-tune phase with these params; (0, None) without one."""
        if self.fine_tune is None:
            return 0, None
        return int(getattr(self.params, self.fine_tune.epochs)), getattr(
            self.params, self.fine_tune.lr
        )

    def uses_trainer(self) -> bool:
        """Whether this configuration needs training data: the class says so, or it
        fine-tunes. Override for a need that depends on other params."""
        return self.needs_trainer or self.fine_tune_settings()[0] > 0

    def check(self, context: SearchContext) -> None:
        """Raise the class's declared errors for what ``context`` lacks (before any work)."""
        if self.needs_budget:
            self.target(context)
        if context.cost.unit != "MACs" and not self.latency_budgets:
            raise UserError(
                f"budget: strategy {self.name!r} selects to a MACs budget only (it does not "
                "declare latency_budgets); give a MACs budget, e.g. --budget 0.5"
            )
        units = self.requires_units
        if units and not any(context.space.searches(u) for u in units):
            raise UserError(self.units_error.format(name=self.name, units=unit_listing(units)))
        if context.trainer is None and self.uses_trainer():
            raise UserError(self.trainer_error.format(name=self.name))

    def train_phase(
        self, context: SearchContext, hooks: TrainHooks, phase: str, epochs: int, lr: float | None
    ) -> Any:
        """Train ``context.model`` for one phase with ``hooks``, closed after it (also on an
        error); returns the trainer's FitResult."""
        try:
            return context.trainer.fit(context.model, epochs, phase=phase, hooks=hooks, lr=lr)
        finally:
            hooks.close()

    @abstractmethod
    def search(self, context: SearchContext) -> SearchResult:
        """Decide the subnet (training as the method requires); return it with the weights
        to slice. Slicing and the fine-tune phase are :meth:`run`'s."""

    def run(self, context: SearchContext) -> SearchResult:
        """Check, search, slice, fine-tune: the result's ``model`` is the pruned network."""
        self.check(context)
        result = self.search(context)
        subnet = result.subnet.validate(context.space)
        pruned = slice_subnet(result.model, subnet, context.spec)
        epochs, lr = self.fine_tune_settings()
        if self.fine_tune is not None and epochs > 0:
            context.trainer.fit(pruned, epochs, phase=self.fine_tune.phase, lr=lr)
        return SearchResult(subnet=subnet, model=pruned, metrics=result.metrics)
