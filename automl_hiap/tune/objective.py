"""One trial: sample the params, run the search into ``OUT/trials/<n>/``, record the result.

* **budget** (single objective): maximize the exported model's top-1 on the held-out val split
  (never the test split) subject to ``|cost / target - 1| <= tolerance``, set as an Optuna
  constraint on each trial (``Trial.set_constraint``; Optuna 5 deprecates ``constraints_func``)
  so TPE and NSGA-II learn from infeasible trials instead of discarding them. Intermediate val
  top-1 after every epoch of the strategy's phases goes to the pruner (the dense phase is
  skipped: it is the same in every trial).
* **pareto**: two objectives, val top-1 up and cost down. Optuna cannot prune multi-objective
  studies, so no trial stops early.
* The cost is the budget's: MACs, or for a latency budget the latency the device's fitted
  model predicts for the exported subnet. Predicted, not measured: it is what every strategy
  selects to, it is the same on every worker and on a resume (a measurement on a shared
  machine is not), and it holds for a table profiled on another device, which the tuning
  machine cannot time. The measured latency (median and spread) is recorded next to it.
* A pruned trial counts as feasible unless the strategy reported a candidate subnet: it was
  stopped for its accuracy, and calling it infeasible would steer the sampler for a reason it
  never observed.
* A trial starts from the same state whatever its worker ran before: every RNG is seeded from
  ``train.seed`` (:func:`fresh_rngs`) and the dense scores a worker caches are computed without
  touching the RNGs (``run_search``), so a trial's result depends on its params alone.
* A trial that raises (an exception, a NaN loss) is recorded as failed with the reason (user
  attr ``fail_reason``, :func:`failure_reason`) and the study goes on.
* Under ``torchrun`` only rank 0 talks to Optuna: it samples, broadcasts the params to the other
  ranks (:func:`follow` runs their side), and records the result. Pruning is off there, because
  the trainer calls epoch listeners on rank 0 only and a rank that stopped alone would leave
  the others waiting.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
from typing import Any

import numpy as np
import optuna
import torch
import torch.distributed as dist

from automl_hiap.cost import subnet_cost
from automl_hiap.cost_model import MACS, CostModel, subnet_total
from automl_hiap.distributed import is_distributed
from automl_hiap.outcome import SearchReport
from automl_hiap.search import Scores, run_search
from automl_hiap.space import SearchSpace
from automl_hiap.trainer import EpochEnd
from automl_hiap.tune.params import suggest, with_params
from automl_hiap.tune.study import StudyPlan


def broadcast(payload: Any) -> Any:
    """Rank 0's payload on every rank (identity outside torchrun)."""
    if not is_distributed():
        return payload
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fresh_rngs(seed: int) -> None:
    """Seed every RNG (torch on all devices, numpy, Python) as a fresh process would be."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class EpochReporter:
    """Epoch listener: intermediate val top-1 to Optuna, pruning on its verdict."""

    def __init__(self, trial: optuna.Trial, space: SearchSpace, cost: CostModel = MACS) -> None:
        self.trial, self.space, self.cost_model = trial, space, cost
        self.phase, self.offset, self.next_offset = "", 0, 0
        self.macs: float | None = None
        self.cost: float | None = None  # of the latest candidate, in the budget's unit

    def __call__(self, event: EpochEnd) -> None:
        if event.phase == "dense" or "val_top1" not in event.metrics:
            return
        if event.phase != self.phase:  # steps continue across phases
            self.phase, self.offset = event.phase, self.next_offset
        self.next_offset = self.offset + event.epochs
        if event.candidate is not None:
            self.macs = subnet_cost(self.space, event.candidate).macs
            self.cost = subnet_total(self.cost_model, self.space, event.candidate)
        step, value = self.offset + event.epoch, event.metrics["val_top1"]
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val top-1 {value:.2%} at step {step}")


class Objective:
    """One trial on rank 0: sample, broadcast, search, record."""

    def __init__(self, plan: StudyPlan, worker: int) -> None:
        self.plan, self.worker = plan, worker
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.dense_scores: dict[str, Scores] = {}  # the dense model is scored once per process

    def _constrain(self, trial: optuna.Trial, cost: float | None) -> None:
        """Feasible when <= 0; a trial without a cost (pruned, no candidate) has none."""
        plan = self.plan
        if not plan.tune.pareto and plan.target is not None and cost is not None:
            name = "macs" if plan.cost.unit == "MACs" else "latency"
            trial.set_constraint(name, abs(cost / plan.target - 1) - plan.tune.tolerance)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        plan = self.plan
        trial.set_user_attr("worker", self.identity)
        folder_number = trial.user_attrs.get("folder", trial.number)
        folder = plan.out / "trials" / str(folder_number)
        trial.set_user_attr("folder", folder_number)
        if "retry_of" not in trial.user_attrs:  # stale files of a deleted study must not resume
            shutil.rmtree(folder, ignore_errors=True)
        trial.set_user_attr("out", f"{socket.gethostname()}:{folder.resolve()}")
        params = {name: suggest(trial, name, spec) for name, spec in plan.tune.params.items()}
        broadcast((str(folder), params))
        reporter = None
        try:
            config = with_params(plan.config, params, plan.dense_cost)
            with plan.hooks.trial(trial, folder, config) as extra:
                listeners = list(extra)  # trackers first: they log the epoch a pruner stops
                if not plan.tune.pareto and not is_distributed():
                    reporter = EpochReporter(trial, plan.space, plan.cost)
                    listeners.append(reporter)
                fresh_rngs(config.train.seed)  # whatever this worker (or a tracker) ran before
                report = run_search(
                    config,
                    folder,
                    progress=plan.progress,
                    measure_batch=64 if plan.tune.measure else None,
                    listeners=listeners,
                    dense_scores=self.dense_scores,
                )
                result = self._result(report)
                plan.hooks.trial_searched(trial, report, result)
        except optuna.TrialPruned:
            macs, cost = (None, None) if reporter is None else (reporter.macs, reporter.cost)
            trial.set_user_attr("result", {"macs": macs, "cost": cost, **self._target_fields(cost)})
            self._constrain(trial, cost)
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", failure_reason(exc))
            raise
        trial.set_user_attr("result", result)
        self._constrain(trial, result["cost"])
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # only a resume needs them
        if plan.tune.pareto:
            return result["val_top1"], result["cost"]
        return result["val_top1"]

    def _result(self, report: SearchReport) -> dict[str, Any]:
        """What the study records of a finished search (``tune.json`` is built from it)."""
        metrics = report.metrics
        pruned, dense = metrics.pruned, metrics.dense
        latency = metrics.latency or {}
        cost = pruned.macs if self.plan.cost.unit == "MACs" else latency["predicted_ms"] / 1e3
        return {
            "val_top1": pruned.val_top1,
            "test_top1": pruned.top1,
            "macs": pruned.macs,
            "cost": cost,
            "measured_ms": latency.get("measured_ms"),
            "measured_iqr_ms": latency.get("measured_iqr_ms"),
            "params": pruned.params,
            "macs_ratio": metrics.macs_ratio,
            "speedup": metrics.speedup,
            "dense_val_top1": dense.val_top1,
            "dense_test_top1": dense.top1,
            "dense_macs": dense.macs,
            "dense_params": dense.params,
            "dense_cost": self.plan.dense_cost,
            **self._target_fields(cost),
        }

    def _target_fields(self, cost: float | None) -> dict[str, Any]:
        target, tolerance = self.plan.target, self.plan.tune.tolerance
        if target is None or cost is None:
            return {"target_error": None, "feasible": None}
        error = cost / target - 1
        return {"target_error": error, "feasible": abs(error) <= tolerance}


def follow(plan: StudyPlan) -> None:
    """Ranks other than 0 under torchrun: run the searches rank 0 announces."""
    dense_scores: dict[str, Scores] = {}
    while (payload := broadcast(None)) is not None:
        folder, params = payload
        fresh_rngs(plan.config.train.seed)
        with contextlib.suppress(Exception):  # rank 0 records the failure
            run_search(
                with_params(plan.config, params, plan.dense_cost),
                folder,
                progress=False,
                measure_batch=64 if plan.tune.measure else None,
                dense_scores=dense_scores,
            )


def failure_reason(exc: BaseException) -> str:
    """An exception as the one line a failed trial records."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
