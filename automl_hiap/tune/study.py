"""The study: what every worker shares (:class:`StudyPlan`), the tracker seams, the Optuna
study itself with its sampler and pruner.

* :class:`TuneHooks` are the seams a tracker plugs into (:mod:`automl_hiap.tune.tracking` logs
  a study to MLflow); the outer loop never imports a tracker.
* A study remembers the setup it was made with (model, strategy, mode, target, tolerance); a
  resume with other settings is an error rather than a study that mixes two objectives.
* Sampler seeds mix ``tune.seed`` with the study's name, the number of trials already in the
  study and the worker index, so a resumed or parallel worker does not replay another's random
  start-up points, and studies for other budgets do not start from the same points. TPE's
  random start-up lasts ``startup_trials`` (default: a third of the trials, 2 to 10).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from automl_hiap.config import SearchConfig, TuneConfig
from automl_hiap.cost_model import CostModel
from automl_hiap.errors import ConfigError
from automl_hiap.outcome import SearchReport
from automl_hiap.space import SearchSpace
from automl_hiap.trainer import EpochListener
from automl_hiap.tune.results import TuneReport
from automl_hiap.tune.storage import display_storage


class TuneHooks:
    """Seams for trackers (e.g. MLflow parent/child runs); every method is a no-op.

    :meth:`study` and :meth:`study_finished` run in the process that called
    :func:`~automl_hiap.tune.run_tune`; the trial methods run where the trial runs (with
    ``workers`` > 1 the object is pickled into each worker process). Whatever ends a trial early
    (``optuna.TrialPruned``, an error, an interrupt) passes through :meth:`trial`, so a tracker
    sees how the trial ended.
    """

    @contextmanager
    def study(self, study: optuna.Study, config: SearchConfig) -> Iterator[None]:
        """Around this command's trials and results; ``config`` has the strategy, budget and
        resolved ``tune`` settings folded in."""
        yield

    @contextmanager
    def trial(
        self, trial: optuna.Trial, out: Path, config: SearchConfig
    ) -> Iterator[Sequence[EpochListener]]:
        """Around one trial's search of ``config`` into ``out``; yields extra epoch listeners."""
        yield ()

    def trial_searched(
        self, trial: optuna.Trial, report: SearchReport, result: dict[str, Any]
    ) -> None:
        """Inside :meth:`trial`: the search wrote ``report.out``; ``result`` is what the study
        records (val / test top-1, MACs, distance to the target, feasibility)."""

    def trial_finished(self, trial: FrozenTrial) -> None:
        """A trial ended (its state, values and user attrs are final)."""

    def study_finished(self, report: TuneReport) -> None:
        """Inside :meth:`study`: the results are written."""


@dataclass(frozen=True)
class StudyPlan:
    """Everything a worker needs (picklable: spawned workers receive it)."""

    config: SearchConfig  # strategy name, budget and resolved tune folded in
    tune: TuneConfig  # pruner and seed resolved
    out: Path
    storage: str
    study: str
    space: SearchSpace
    dense_macs: float
    cost: CostModel  # what the constraint and the front count: MACs, or predicted seconds
    dense_cost: float  # the dense model in ``cost``'s unit
    target: float | None  # in ``cost``'s unit
    hooks: TuneHooks
    progress: bool


def default_study_name(config: SearchConfig, pareto: bool) -> str:
    budget = "any" if config.budget is None else str(config.budget)
    return f"{config.model.name}-{config.strategy.name}-{budget}" + ("-pareto" if pareto else "")


def _setup_record(plan: StudyPlan) -> dict[str, Any]:
    """What a resumed study must share with this command (a mismatch is an error). A latency
    study also keeps where its latency holds (a MACs study's record is as it always was)."""
    macs = plan.cost.unit == "MACs"
    record: dict[str, Any] = {
        "model": plan.config.model.name,
        "strategy": plan.config.strategy.name,
        "pareto": plan.tune.pareto,
        "target_macs": plan.target if macs else None,
        "tolerance": plan.tune.tolerance,
    }
    budget = plan.config.budget
    if not macs and budget is not None and budget.latency is not None:
        settings = budget.latency
        record["target_s"] = plan.target
        record["latency"] = f"batch {settings.batch}, {settings.threads} threads, {settings.dtype}"
    return record


def open_study(plan: StudyPlan, storage: BaseStorage) -> optuna.Study:
    """Create the study or load it, checking it was made with this command's setup."""
    directions: list[Literal["maximize", "minimize"]] = ["maximize"]
    if plan.tune.pareto:
        directions.append("minimize")
    study = optuna.create_study(
        storage=storage, study_name=plan.study, directions=directions, load_if_exists=True
    )
    wanted, found = _setup_record(plan), study.user_attrs.get("setup")
    if found is None:
        study.set_user_attr("setup", wanted)
    elif found != wanted:
        diff = [k for k in wanted if found.get(k) != wanted[k]]
        changes = ", ".join(f"{k} {found.get(k)!r} -> {wanted[k]!r}" for k in diff)
        raise ConfigError(
            f"--study {plan.study}: the study in {display_storage(plan.storage)} was made with "
            f"other settings ({changes}); resume it with the same ones or choose another --study"
        )
    return study


def make_sampler(plan: StudyPlan, existing: int, worker: int) -> optuna.samplers.BaseSampler:
    """The sampler of worker ``worker`` joining a study that holds ``existing`` trials."""
    tune = plan.tune
    # the study's name too: studies for other budgets should not start from the same points
    study = zlib.crc32(plan.study.encode())
    seed_seq = np.random.SeedSequence([(tune.seed or 0) % 2**32, study, existing, worker])
    seed = int(seed_seq.generate_state(1)[0])
    startup = tune.startup_trials or max(2, min(10, tune.trials // 3))
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()
