"""The Optuna outer loop: tune a strategy's params so its exported model lands on the budget.

Each trial is one search (:func:`automl_hiap.search.run_search`) into ``OUT/trials/<n>/`` with
the sampled values merged into ``strategy.params``; the YAML's ``tune.params`` names the fields
and their ranges. Two modes:

* **budget** (single objective): maximize the exported model's top-1 on the held-out val split
  (never the test split) subject to ``|MACs / target - 1| <= tolerance``, set as an Optuna
  constraint on each trial (``Trial.set_constraint``; Optuna 5 deprecates ``constraints_func``)
  so TPE and NSGA-II learn from infeasible trials instead of discarding them. Intermediate val top-1
  after every epoch of the strategy's phases goes to the pruner (the dense phase is skipped: it
  is the same in every trial).
* **pareto**: two objectives, val top-1 up and MACs down; the result is the non-dominated
  front. Optuna cannot prune multi-objective studies, so no trial stops early.

Results (:mod:`automl_hiap.tune_results`): ``trials.csv``, ``tune.json``, ``pareto.png`` and the
best trial's exported model in ``OUT``. :class:`TuneHooks` are the seams a tracker plugs into
(:mod:`automl_hiap.tune_tracking` logs a study to MLflow); this module never imports one.

Choices, where Optuna leaves them to the user:

* ``trials`` counts the whole study, not each worker: a study holds N trials (a killed trial
  and its retry count once). Local ``--workers K`` split the remaining trials exactly, so K
  processes never overshoot; workers on other machines stop when the study holds N (workers
  that check at the same instant may overshoot by one each).
* Storage: a SQLite file in ``OUT`` by default, a journal file (``.journal``) for ``--workers``
  > 1 (SQLite locks under concurrent writers), or any SQLAlchemy URL (PostgreSQL, MySQL) for
  workers on several machines.
* Dead workers: every trial records its worker (``host:pid``). A command started again (a
  resume) fails each running trial whose worker on this machine is gone, with the reason, and
  queues it again with the same params and the same folder, so the retry resumes from the
  trial's training checkpoints (a Ctrl-C'd trial is retried the same way). On database URLs
  Optuna's heartbeat (60 s, 3 min grace) does the same for workers lost on other machines.
  Checking process ids rather than relying on the heartbeat alone keeps the journal and SQLite
  stores (which have no heartbeat) resumable, and makes a resume immediate.
* A trial that raises (an exception, a NaN loss) is recorded as failed with the reason
  (user attr ``fail_reason``) and the study goes on; three failures in a row with the same
  reason stop the worker (the cause is the setup, not the sampled values).
* Sampler seeds mix ``tune.seed`` with the number of trials already in the study and the worker
  index, so a resumed or parallel worker does not replay another's random start-up points.
  TPE's random start-up lasts ``startup_trials`` (default: a third of the trials, 2 to 10).
  A pruned trial counts as feasible unless the strategy reported a candidate subnet: it was
  stopped for its accuracy, and calling it infeasible would steer the sampler for a reason it
  never observed.
* Under ``torchrun`` only rank 0 talks to Optuna: it samples, broadcasts the params to the other
  ranks, and records the result. Pruning is off there, because the trainer calls epoch
  listeners on rank 0 only and a rank that stopped alone would leave the others waiting.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import socket
import sys
import types
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
import optuna
import torch
import torch.distributed as dist
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from automl_hiap import plugins
from automl_hiap.budget import Budget, format_macs
from automl_hiap.config import SearchConfig, TuneConfig, TuneRange
from automl_hiap.cost import subnet_cost
from automl_hiap.errors import ConfigError, UserError
from automl_hiap.outcome import SearchReport
from automl_hiap.plan import effective_config, resolve
from automl_hiap.search import Scores, run_search
from automl_hiap.space import SearchSpace
from automl_hiap.strategy import Strategy
from automl_hiap.trainer import (
    EpochEnd,
    EpochListener,
    init_distributed,
    is_distributed,
    is_main_process,
)
from automl_hiap.tune_results import (
    TuneReport,
    choose_best,
    copy_best,
    format_value,
    pareto_front,
    trial_rows,
    write_results,
)

BUDGET_PARAM = "budget"  # tunes the MACs fraction itself (Pareto mode only)
HEARTBEAT_S, GRACE_S = 60, 180
UNCLAIMED_S = 120  # a live worker names itself on a trial within milliseconds of starting it


class TuneHooks:
    """Seams for trackers (e.g. MLflow parent/child runs); every method is a no-op.

    :meth:`study` and :meth:`study_finished` run in the process that called :func:`run_tune`;
    the trial methods run where the trial runs (with ``workers`` > 1 the object is pickled into
    each worker process). Whatever ends a trial early (``optuna.TrialPruned``, an error, an
    interrupt) passes through :meth:`trial`, so a tracker sees how the trial ended.
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
class _Plan:
    """Everything a worker needs (picklable: spawned workers receive it)."""

    config: SearchConfig  # strategy name, budget and resolved tune folded in
    tune: TuneConfig  # pruner and seed resolved
    out: Path
    storage: str
    study: str
    space: SearchSpace
    dense_macs: float
    target: float | None
    hooks: TuneHooks
    progress: bool


# ----------------------------------------------------------------------------- validation


def _kinds(annotation: Any) -> set[Any]:
    """The plain types a field accepts (``Optional``, ``Annotated`` and unions unwrapped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return set().union(*(_kinds(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return {Literal}
    return set() if annotation is type(None) else {annotation}


def check_params(
    strategy: type[Strategy], tune: TuneConfig, fixed: dict[str, Any], source: str = ""
) -> None:
    """Every tuned field exists on the strategy's Params and its range fits the field's type
    and constraints (endpoints and choices are validated like ``strategy.params``)."""
    head = f"{source}: " if source else ""
    fields = strategy.Params.model_fields
    for name, spec in tune.params.items():
        key = f"{head}tune.params.{name}"
        if name == BUDGET_PARAM and name not in fields:
            _check_budget_range(spec, key, tune.pareto)
            continue
        if name not in fields:
            known = ", ".join(fields) or "(none)"
            raise ConfigError(
                f"{key}: strategy {strategy.name!r} has no parameter {name}; expected one of "
                f"{known} (or {BUDGET_PARAM}, with pareto)"
            )
        kinds = _kinds(fields[name].annotation)
        if spec.choices is None:
            wanted = {int, float} if spec.integer else {float}
            if not kinds & wanted and Any not in kinds:
                shown = "/".join(sorted(getattr(k, "__name__", str(k)) for k in kinds))
                what = "an integer range" if spec.integer else "a float range"
                hint = "; add int: true" if int in kinds and not spec.integer else ""
                raise ConfigError(
                    f"{key}: {what} does not fit the field's type {shown}{hint} "
                    "(or give choices: [...])"
                )
            values: list[Any] = [spec.low, spec.high]
            if spec.integer:
                values = [int(v) for v in values]
        else:
            bad = [
                c for c in spec.choices if not isinstance(c, (bool, int, float, str, type(None)))
            ]
            if bad:
                raise ConfigError(
                    f"{key}.choices: expected numbers, strings, booleans or null, got {bad[0]!r}"
                )
            values = list(spec.choices)
        for value in values:
            try:
                strategy.Params.model_validate({**fixed, name: value})
            except ValidationError as exc:
                for error in exc.errors():
                    if error["loc"][:1] == (name,):
                        message = error["msg"].removeprefix("Value error, ")
                        raise ConfigError(f"{key}: {value!r} is not allowed: {message}") from None


def _check_budget_range(spec: TuneRange, key: str, pareto: bool) -> None:
    if not pareto:
        raise ConfigError(
            f"{key}: the budget is tuned only with pareto (a single objective targets --budget)"
        )
    values = spec.choices if spec.choices is not None else [spec.low, spec.high]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(
                f"{key}: expected fractions of the dense MACs in (0, 1], got {value!r}"
            )
    if spec.integer:
        raise ConfigError(f"{key}: expected a float range of fractions, not int: true")


def with_params(config: SearchConfig, params: dict[str, Any]) -> SearchConfig:
    """``config`` with sampled values merged into ``strategy.params`` (and the budget)."""
    values = dict(params)
    update: dict[str, Any] = {}
    if BUDGET_PARAM in values and BUDGET_PARAM not in _strategy_fields(config):
        update["budget"] = Budget(float(values.pop(BUDGET_PARAM)), absolute=False)
    strategy = config.strategy.model_copy(update={"params": {**config.strategy.params, **values}})
    return config.model_copy(update={"strategy": strategy, **update})


def _strategy_fields(config: SearchConfig) -> dict[str, Any]:
    return plugins.get(config.strategy.name).Params.model_fields


# ----------------------------------------------------------------------------- storage


def _display(spec: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", spec)


def default_storage(out: Path, workers: int) -> str:
    """The study file in ``out``: an existing one, else SQLite (journal for several workers)."""
    journal, sqlite = out / "study.journal", out / "study.db"
    for existing in (journal, sqlite):
        if existing.exists():
            return str(existing)
    return str(journal if workers > 1 else sqlite)


def _is_sqlite(spec: str) -> bool:
    return spec.startswith("sqlite:") or Path(spec).suffix in (".db", ".sqlite", ".sqlite3")


def open_storage(spec: str) -> BaseStorage:
    """A database URL (RDBStorage, with heartbeats unless SQLite), a ``.db`` SQLite file, or a
    ``.journal`` file shared by local processes."""
    if "://" not in spec:
        path = Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".journal", ".log"):
            return JournalStorage(JournalFileBackend(str(path)))
        if not _is_sqlite(spec):
            raise UserError(
                f"--storage {spec}: expected a database URL (sqlite:///study.db, "
                "postgresql://user@host/db) or a file ending in .db (SQLite) or .journal"
            )
        spec = f"sqlite:///{path.resolve()}"
    try:
        if spec.startswith("sqlite"):
            return RDBStorage(spec)
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                spec,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=_retry_lost,
            )
    except ModuleNotFoundError as exc:
        raise UserError(
            f"--storage {_display(spec)}: the database driver {exc.name} is not installed "
            "(PostgreSQL: pip install 'automl_hiap[postgres]')"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"--storage {_display(spec)}: cannot open the study database "
            f"({type(exc).__name__}: {_display(first)})"
        ) from None


def _retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue a failed trial again: same params, same folder (its checkpoints resume it)."""
    folder = trial.user_attrs.get("folder", trial.number)
    study.enqueue_trial(
        dict(trial.params),
        user_attrs={"retry_of": trial.number, "folder": folder, "retry_reason": reason},
    )


def _retry_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    _retry(study, trial, f"no heartbeat for {GRACE_S} s (worker lost)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(study: optuna.Study, storage: BaseStorage) -> list[str]:
    """Fail and requeue the trials whose worker on this machine is gone; return notes."""
    host, now, notes = socket.gethostname(), datetime.now(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    for trial in trials:
        worker = trial.user_attrs.get("worker")
        if trial.state == TrialState.RUNNING:
            if worker is None:
                started = trial.datetime_start or now
                lost = (now - started).total_seconds() > UNCLAIMED_S
            else:
                worker_host, _, pid = str(worker).rpartition(":")
                lost = worker_host == host and not _alive(int(pid))
            if not lost:
                continue
            reason = f"worker {worker or '(unknown)'} died during the trial"
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
                if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # another process got there first
                continue
        elif (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get("interrupted")
            and trial.number not in retried
        ):
            reason = "interrupted"
        else:
            continue
        _retry(study, trial, reason)
        notes.append(f"trial {trial.number}: {reason}; queued again to resume")
    return notes


def _taken(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards ``tune.trials``: started or finished, a retried one once."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(t.state != TrialState.WAITING and t.number not in retried for t in trials)


# ----------------------------------------------------------------------------- study


def default_study_name(config: SearchConfig, pareto: bool) -> str:
    budget = "any" if config.budget is None else str(config.budget)
    return f"{config.model.name}-{config.strategy.name}-{budget}" + ("-pareto" if pareto else "")


def _setup_record(plan: _Plan) -> dict[str, Any]:
    """What a resumed study must share with this command (a mismatch is an error)."""
    return {
        "model": plan.config.model.name,
        "strategy": plan.config.strategy.name,
        "pareto": plan.tune.pareto,
        "target_macs": plan.target,
        "tolerance": plan.tune.tolerance,
    }


def _open_study(plan: _Plan, storage: BaseStorage) -> optuna.Study:
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
            f"--study {plan.study}: the study in {_display(plan.storage)} was made with other "
            f"settings ({changes}); resume it with the same ones or choose another --study"
        )
    return study


def _sampler(plan: _Plan, existing: int, worker: int) -> optuna.samplers.BaseSampler:
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


def _pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _broadcast(payload: Any) -> Any:
    """Rank 0's payload on every rank (identity outside torchrun)."""
    if not is_distributed():
        return payload
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _suggest(trial: optuna.Trial, name: str, spec: TuneRange) -> Any:
    if spec.choices is not None:
        return trial.suggest_categorical(name, spec.choices)
    assert spec.low is not None and spec.high is not None
    if spec.integer:
        step = int(spec.step or 1)
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


class _Reporter:
    """Epoch listener: intermediate val top-1 to Optuna, pruning on its verdict."""

    def __init__(self, trial: optuna.Trial, space: SearchSpace) -> None:
        self.trial, self.space = trial, space
        self.phase, self.offset, self.next_offset = "", 0, 0
        self.macs: float | None = None

    def __call__(self, event: EpochEnd) -> None:
        if event.phase == "dense" or "val_top1" not in event.metrics:
            return
        if event.phase != self.phase:  # steps continue across phases
            self.phase, self.offset = event.phase, self.next_offset
        self.next_offset = self.offset + event.epochs
        if event.candidate is not None:
            self.macs = subnet_cost(self.space, event.candidate).macs
        step, value = self.offset + event.epoch, event.metrics["val_top1"]
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val top-1 {value:.2%} at step {step}")


class _Objective:
    """One trial on rank 0: sample, broadcast, search, record."""

    def __init__(self, plan: _Plan, worker: int) -> None:
        self.plan, self.worker = plan, worker
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.dense_scores: dict[str, Scores] = {}  # the dense model is scored once per process

    def _constrain(self, trial: optuna.Trial, macs: float | None) -> None:
        """Feasible when <= 0; a trial without MACs (pruned, no candidate) has none."""
        plan = self.plan
        if not plan.tune.pareto and plan.target is not None and macs is not None:
            trial.set_constraint("macs", abs(macs / plan.target - 1) - plan.tune.tolerance)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        plan = self.plan
        trial.set_user_attr("worker", self.identity)
        folder_number = trial.user_attrs.get("folder", trial.number)
        folder = plan.out / "trials" / str(folder_number)
        trial.set_user_attr("folder", folder_number)
        if "retry_of" not in trial.user_attrs:  # stale files of a deleted study must not resume
            shutil.rmtree(folder, ignore_errors=True)
        trial.set_user_attr("out", f"{socket.gethostname()}:{folder.resolve()}")
        params = {name: _suggest(trial, name, spec) for name, spec in plan.tune.params.items()}
        _broadcast((str(folder), params))
        reporter = None
        try:
            config = with_params(plan.config, params)
            with plan.hooks.trial(trial, folder, config) as extra:
                listeners = list(extra)  # trackers first: they log the epoch a pruner stops
                if not plan.tune.pareto and not is_distributed():
                    reporter = _Reporter(trial, plan.space)
                    listeners.append(reporter)
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
            macs = None if reporter is None else reporter.macs
            trial.set_user_attr("result", {"macs": macs, **self._target_fields(macs)})
            self._constrain(trial, macs)
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
        self._constrain(trial, result["macs"])
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # only a resume needs them
        if plan.tune.pareto:
            return result["val_top1"], result["macs"]
        return result["val_top1"]

    def _result(self, report: SearchReport) -> dict[str, Any]:
        """What the study records of a finished search (``tune.json`` is built from it)."""
        metrics = report.metrics
        pruned, dense = metrics.pruned, metrics.dense
        return {
            "val_top1": pruned.val_top1,
            "test_top1": pruned.top1,
            "macs": pruned.macs,
            "params": pruned.params,
            "macs_ratio": metrics.macs_ratio,
            "speedup": metrics.speedup,
            "dense_val_top1": dense.val_top1,
            "dense_test_top1": dense.top1,
            "dense_macs": dense.macs,
            "dense_params": dense.params,
            **self._target_fields(pruned.macs),
        }

    def _target_fields(self, macs: float | None) -> dict[str, Any]:
        target, tolerance = self.plan.target, self.plan.tune.tolerance
        if target is None or macs is None:
            return {"target_error": None, "feasible": None}
        error = macs / target - 1
        return {"target_error": error, "feasible": abs(error) <= tolerance}


def failure_reason(exc: BaseException) -> str:
    """An exception as the one line a failed trial records."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _trial_line(trial: FrozenTrial) -> str:
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
    if result.get("target_error") is not None:
        parts.append(f"{result['target_error']:+.1%} vs target")
    params = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    return f"{head} {'  '.join(parts)}  [{params}]"


# ----------------------------------------------------------------------------- workers


def _work(plan: _Plan, quota: int | None, worker: int) -> None:
    """Run trials until ``quota`` ran here or the study holds ``tune.trials``."""
    if not is_main_process():
        _follow(plan)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed here
    storage = open_storage(plan.storage)
    existing = len(optuna.load_study(study_name=plan.study, storage=storage).trials)
    study = optuna.load_study(
        study_name=plan.study,
        storage=storage,
        sampler=_sampler(plan, existing, worker),
        pruner=_pruner(plan.tune),
    )
    objective = _Objective(plan, worker)
    last: list[FrozenTrial] = []

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        last.append(trial)
        print(_trial_line(trial), flush=True)
        plan.hooks.trial_finished(trial)

    ran, repeats, reason = 0, 0, None
    try:
        while quota is None or ran < quota:
            if _taken(study.get_trials(deepcopy=False)) >= plan.tune.trials:
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
        _broadcast(None)


def _follow(plan: _Plan) -> None:
    """Ranks other than 0 under torchrun: run the searches rank 0 announces."""
    dense_scores: dict[str, Scores] = {}
    while (payload := _broadcast(None)) is not None:
        folder, params = payload
        with contextlib.suppress(Exception):  # rank 0 records the failure
            run_search(
                with_params(plan.config, params),
                folder,
                progress=False,
                measure_batch=64 if plan.tune.measure else None,
                dense_scores=dense_scores,
            )


def _worker_main(plan: _Plan, quota: int, worker: int, threads: int) -> None:
    """Entry point of a spawned local worker."""
    torch.set_num_threads(threads)
    try:
        _work(plan, quota, worker)
    except UserError as exc:
        print(f"automl_hiap: error: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(2)


def _run_workers(plan: _Plan, remaining: int) -> list[str]:
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


def _report(plan: _Plan, study: optuna.Study, notes: list[str]) -> TuneReport:
    params = list(plan.tune.params)
    rows = trial_rows(study.get_trials(deepcopy=False), params)
    best, why = choose_best(rows, plan.tune.pareto, plan.target, plan.tune.tolerance)
    dense: dict[str, Any] = next((r["_dense"] for r in rows if r["_dense"]["macs"] is not None), {})
    report = TuneReport(
        out=plan.out,
        study=plan.study,
        storage=_display(plan.storage),
        pareto=plan.tune.pareto,
        target_macs=plan.target,
        tolerance=plan.tune.tolerance,
        params=params,
        rows=rows,
        front=[r["trial"] for r in pareto_front(rows)],
        best=best,
        dense=dense or {"macs": plan.dense_macs},
        notes=[*notes, *why],
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    if best is not None:
        note = copy_best(best, plan.out)
        if note:
            report.notes.append(note)
    write_results(report)
    return report


# ----------------------------------------------------------------------------- entry point


def run_tune(
    config: SearchConfig,
    out: str | Path,
    *,
    strategy_name: str | None = None,
    budget: Budget | None = None,
    tune: TuneConfig | None = None,
    source: str = "",
    hooks: TuneHooks | None = None,
    progress: bool = True,
) -> TuneReport | None:
    """Run (or resume) the study of ``config.tune`` (or ``tune``) and write its results.

    ``source`` names the space file in error messages. Returns None on torchrun ranks other
    than 0 (they only train).
    """
    out = Path(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed instead
    settings = tune if tune is not None else config.tune
    head = f"{source}: " if source else ""
    if settings is None:
        raise ConfigError(f"{head}tune: missing section (e.g. tune: {{params: {{lr: ...}}}})")
    config = effective_config(config, strategy_name, budget).model_copy(update={"tune": settings})
    strategy = config.strategy
    strategy_cls = plugins.get(strategy.name)

    pruner = settings.pruner or ("none" if settings.pareto else "median")
    if settings.pareto and pruner != "none":
        raise ConfigError(
            f"{head}tune.pruner: {pruner}: multi-objective studies cannot prune (Optuna); "
            "expected none with pareto"
        )
    seed = settings.seed if settings.seed is not None else config.train.seed
    settings = settings.model_copy(update={"pruner": pruner, "seed": seed})
    check_params(strategy_cls, settings, dict(strategy.params), source)
    if not settings.pareto and config.budget is None:
        raise UserError(
            "budget: the budget mode of tune needs a budget (--budget 0.5), or use --pareto"
        )

    run = resolve(config, check_budget=False)
    space, dense, target = run.space, run.dense.macs, run.target_macs

    storage_spec = settings.storage or default_storage(out, settings.workers)
    if settings.workers > 1 and _is_sqlite(storage_spec):
        raise ConfigError(
            f"--workers {settings.workers}: the study in {storage_spec} is SQLite, which locks "
            "under concurrent writers; use --workers 1, a .journal file or a PostgreSQL URL"
        )
    init_distributed()  # under torchrun: join the group before rank 0 broadcasts
    if is_distributed() and settings.workers > 1:
        raise UserError("--workers: under torchrun run one tune worker per torchrun job")
    plan = _Plan(
        config=config.model_copy(update={"tune": settings}),
        tune=settings,
        out=out,
        storage=storage_spec,
        study=settings.study or default_study_name(config, settings.pareto),
        space=space,
        dense_macs=dense,
        target=target,
        hooks=hooks or TuneHooks(),
        progress=progress and settings.workers == 1,
    )
    if not is_main_process():
        _work(plan, None, 0)
        return None

    storage = open_storage(storage_spec)
    study = _open_study(plan, storage)
    notes = _sweep(study, storage)
    for note in notes:
        print(note, flush=True)
    with plan.hooks.study(study, plan.config):
        remaining = settings.trials - _taken(study.get_trials(deepcopy=False))
        problem = None
        if remaining > 0 and settings.workers > 1:
            problems = _run_workers(plan, remaining)
            if problems:
                problem = f"--workers: {'; '.join(problems)}; run the same command again to resume"
        elif remaining > 0:
            try:
                _work(plan, None, 0)
            except UserError as exc:  # e.g. repeated failures: still write what the study holds
                problem = str(exc)
        else:
            _broadcast(None)
        report = _report(plan, study, notes)
        plan.hooks.study_finished(report)
        if problem is not None:
            raise UserError(problem)
    return report
