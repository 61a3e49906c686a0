"""The processes that run trials: this one, spawned local workers, torchrun's other ranks.

* ``trials`` counts the whole study, not each worker: a study holds N trials. Local
  ``--workers K`` split the remaining trials exactly, so K processes never overshoot; workers
  on other machines stop when the study holds N (workers that check at the same instant may
  overshoot by one each).
* Three failures in a row with the same reason stop the worker: the cause is the setup, not
  the sampled values.
* Each worker prints one line per finished trial (Optuna's own logging is quietened).
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from automl_hiap.budget import format_macs
from automl_hiap.distributed import is_main_process
from automl_hiap.errors import UserError
from automl_hiap.tune.objective import Objective, broadcast, follow
from automl_hiap.tune.results import format_value
from automl_hiap.tune.storage import open_storage, taken
from automl_hiap.tune.study import StudyPlan, make_pruner, make_sampler


def work(plan: StudyPlan, quota: int | None, worker: int) -> None:
    """Run trials until ``quota`` ran here or the study holds ``tune.trials``."""
    if not is_main_process():
        follow(plan)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed here
    storage = open_storage(plan.storage)
    existing = len(optuna.load_study(study_name=plan.study, storage=storage).trials)
    study = optuna.load_study(
        study_name=plan.study,
        storage=storage,
        sampler=make_sampler(plan, existing, worker),
        pruner=make_pruner(plan.tune),
    )
    objective = Objective(plan, worker)
    last: list[FrozenTrial] = []

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        last.append(trial)
        print(trial_line(trial), flush=True)
        plan.hooks.trial_finished(trial)

    ran, repeats, reason = 0, 0, None
    try:
        while quota is None or ran < quota:
            if taken(study.get_trials(deepcopy=False)) >= plan.tune.trials:
                break
            study.optimize(
                objective, n_trials=1, catch=(Exception,), callbacks=[finished], gc_after_trial=True
            )
            ran += 1
            trial = last[-1]
            failed = trial.user_attrs.get("fail_reason") if trial.state == TrialState.FAIL else None
            repeats = repeats + 1 if failed is not None and failed == reason else int(bool(failed))
            reason = failed
            if repeats >= 3:
                raise UserError(f"tune: three trials in a row failed with: {reason}")
    finally:
        broadcast(None)


def _worker_main(plan: StudyPlan, quota: int, worker: int, threads: int) -> None:
    """Entry point of a spawned local worker."""
    torch.set_num_threads(threads)
    if torch.cuda.is_available():  # workers take this machine's GPUs in turn (train.device auto)
        torch.cuda.set_device(worker % torch.cuda.device_count())
    try:
        work(plan, quota, worker)
    except UserError as exc:
        print(f"automl_hiap: error: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(2)


def run_workers(plan: StudyPlan, remaining: int) -> list[str]:
    """Split ``remaining`` trials over ``tune.workers`` spawned processes; return problems."""
    workers = min(plan.tune.workers, remaining)
    quotas = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(plan, quota, i, threads), daemon=False)
        for i, quota in enumerate(quotas)
    ]
    for process in processes:
        process.start()
    problems = []
    try:
        for i, process in enumerate(processes):
            process.join()
            if process.exitcode:
                problems.append(f"worker {i} exited with code {process.exitcode}")
    except KeyboardInterrupt:
        for process in processes:
            process.join()
        raise
    return problems


def trial_line(trial: FrozenTrial) -> str:
    """The line printed when a trial ends."""
    result = trial.user_attrs.get("result") or {}
    head = f"trial {trial.number:3d} {trial.state.name:8s}"
    if trial.state == TrialState.FAIL:
        return f"{head} {trial.user_attrs.get('fail_reason', '')}"
    parts = []
    if trial.state == TrialState.PRUNED and trial.values:  # pruning: single objective only
        parts.append(f"val top-1 {trial.values[0]:.2%} (last epoch)")
    elif result.get("val_top1") is not None:
        parts.append(f"val top-1 {result['val_top1']:.2%}")
    if result.get("macs") is not None:
        parts.append(f"MACs {format_macs(result['macs'])}")
    if result.get("measured_ms") is not None:  # a latency budget: its cost is predicted seconds
        predicted, measured = result["cost"] * 1e3, result["measured_ms"]
        parts.append(f"{predicted:.3g} ms predicted, {measured:.3g} measured")
    if result.get("target_error") is not None:
        parts.append(f"{result['target_error']:+.1%} vs target")
    params = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    return f"{head} {'  '.join(parts)}  [{params}]"
