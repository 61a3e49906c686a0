"""The Strategy API: one base class every pruning algorithm implements.

A strategy turns a dense model, its search space and a budget into a :class:`Subnet` (and,
for methods that train, the weights that go with it). It drives its own phases: HiAP trains
gates in one stage; SERo explores then re-optimizes with a fresh optimizer; GOHSP ranks heads,
runs ADMM-style soft pruning, prunes and fine-tunes; VTP trains sparse scores, thresholds and
fine-tunes; magnitude pruning ranks weights once.

Training phases run through the trainer's ``fit`` loop, which calls the no-op hooks of
:class:`TrainHooks` (extra parameters, extra loss, per-step schedules, gradient edits,
projections, metrics, state for exact resume). Strategies are found by name through the
``automl_hiap.strategies`` entry-point group (see ``plugins``); core code never imports one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from automl_hiap.errors import UserError
from automl_hiap.models import ModelSpec
from automl_hiap.slicing import slice_subnet
from automl_hiap.space import SearchSpace
from automl_hiap.subnet import Subnet


class StrategyParams(BaseModel):
    """Base of every strategy's typed config: the YAML's ``strategy.params`` are validated
    against it, and the outer loop tunes its fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class SearchContext:
    """What a strategy works on. ``model`` holds the dense weights and may be trained in place."""

    model: nn.Module
    spec: ModelSpec
    space: SearchSpace
    target_macs: float | None
    seed: int = 0
    trainer: Any = None  # the runtime's Trainer, when the strategy trains
    teacher: nn.Module | None = None


@dataclass
class SearchResult:
    """A strategy's decision; ``model`` carries the weights to export (trained or not)."""

    subnet: Subnet
    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    fine_tuned: bool = False  # True when ``model`` is already the exported, trained network


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


class Strategy(ABC):
    """Base class of all pruning strategies.

    Subclasses set ``name``, ``description`` (one line, shown by ``automl_hiap strategies``)
    and ``Params`` (their typed config), and implement :meth:`search`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    needs_budget: ClassVar[bool] = True  # False for methods steered by a coefficient alone
    # optional packages: import name -> install command (the plugin list shows a strategy whose
    # package is missing as unavailable, with the command, instead of failing to load it)
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, params: StrategyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Strategy:
        """Build from the YAML's ``strategy.params`` (raises pydantic's ValidationError)."""
        return cls(cls.Params.model_validate(values))

    def target_macs(self, context: SearchContext) -> float:
        """The MACs budget, or a clear error for a strategy that cannot run without one."""
        if context.target_macs is None:
            raise UserError(f"budget: strategy {self.name!r} needs a budget (e.g. --budget 0.5)")
        return context.target_macs

    @abstractmethod
    def search(self, context: SearchContext) -> SearchResult:
        """Decide the subnet (training as the method requires)."""

    def run(self, context: SearchContext) -> SearchResult:
        """Search, then slice: the result's ``model`` is the physically pruned network."""
        result = self.search(context)
        subnet = result.subnet.validate(context.space)
        if result.fine_tuned:
            return result
        pruned = slice_subnet(result.model, subnet, context.spec)
        return SearchResult(subnet=subnet, model=pruned, metrics=result.metrics, fine_tuned=True)
