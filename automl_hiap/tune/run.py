"""The entry point: resolve a command's tune settings, open the study, run its trials, report.

Settings are checked before any compute (the tuned ranges, the pruner against the mode, the
storage against ``--workers``, a tuned budget against the smallest subnet). The model, space,
cost model (MACs or a device's latency) and target come from
:func:`automl_hiap.plan.resolve`, like a plain search's. A command started again resumes the
study: its file is checked first (:mod:`~automl_hiap.tune.integrity`), lost trials are retried
(:func:`~automl_hiap.tune.storage.sweep`), then the study is filled up to ``tune.trials``; the
results are written even when a worker stopped early. A space without weights trains its dense
model once per study, before any trial (:mod:`~automl_hiap.tune.dense`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from automl_hiap import plugins
from automl_hiap.budget import Budget
from automl_hiap.config import SearchConfig, TuneConfig
from automl_hiap.cost_model import subnet_total
from automl_hiap.distributed import init_distributed, is_distributed, is_main_process
from automl_hiap.errors import ConfigError, UserError
from automl_hiap.plan import effective_config, resolve
from automl_hiap.subnet import Subnet
from automl_hiap.tune.dense import dense_folder, study_dense
from automl_hiap.tune.integrity import check_study_file
from automl_hiap.tune.objective import broadcast
from automl_hiap.tune.params import check_budget_floor, check_params
from automl_hiap.tune.results import (
    TuneReport,
    choose_best,
    copy_best,
    pareto_front,
    trial_rows,
    write_results,
)
from automl_hiap.tune.storage import (
    default_storage,
    display_storage,
    is_sqlite,
    open_storage,
    sweep,
    taken,
)
from automl_hiap.tune.study import StudyPlan, TuneHooks, default_study_name, open_study
from automl_hiap.tune.workers import run_workers, work


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
            f"{head}budget: the budget mode of tune needs a budget (--budget 0.5), or use --pareto"
        )

    run = resolve(config, check_budget=False)
    space, target = run.space, run.target
    dense_cost = subnet_total(run.cost, space, Subnet.dense(space))
    check_budget_floor(settings, strategy_cls, space, run.cost, dense_cost, source)

    storage_spec = settings.storage or default_storage(out, settings.workers)
    if settings.workers > 1 and is_sqlite(storage_spec):
        raise ConfigError(
            f"--workers {settings.workers}: the study in {storage_spec} is SQLite, which locks "
            "under concurrent writers; use --workers 1, a .journal file or a PostgreSQL URL"
        )
    init_distributed()  # under torchrun: join the group before rank 0 broadcasts
    if is_distributed() and settings.workers > 1:
        raise UserError("--workers: under torchrun run one tune worker per torchrun job")
    plan = StudyPlan(
        config=config.model_copy(update={"tune": settings}),
        tune=settings,
        out=out,
        storage=storage_spec,
        study=settings.study or default_study_name(config, settings.pareto),
        space=space,
        dense_macs=run.dense.macs,
        cost=run.cost,
        dense_cost=dense_cost,
        target=target,
        hooks=hooks or TuneHooks(),
        progress=progress and settings.workers == 1,
    )
    dense_at = dense_folder(plan.config, out)
    opened = _open(plan) if is_main_process() else None  # before any compute
    if dense_at is not None:  # every rank: the dense model all trials start from, trained once
        plan = replace(plan, config=study_dense(plan.config, run.model, dense_at, progress))
    if opened is None:
        work(plan, None, 0)
        return None
    study, notes = opened
    with plan.hooks.study(study, plan.config):
        remaining = settings.trials - taken(study.get_trials(deepcopy=False))
        problem = None
        if remaining > 0 and settings.workers > 1:
            problems = run_workers(plan, remaining)
            if problems:
                problem = f"--workers: {'; '.join(problems)}; run the same command again to resume"
        elif remaining > 0:
            try:
                work(plan, None, 0)
            except UserError as exc:  # e.g. repeated failures: still write what the study holds
                problem = str(exc)
        else:
            broadcast(None)
        report = _report(plan, study, notes)
        plan.hooks.study_finished(report)
        if problem is not None:
            raise UserError(problem)
    return report


def _open(plan: StudyPlan) -> tuple[optuna.Study, list[str]]:
    """The checked study file opened, the study loaded or made, lost trials queued again."""
    notes = check_study_file(plan.storage, plan.out)  # a damaged study stops here, untouched
    storage = open_storage(plan.storage)
    study = open_study(plan, storage)
    notes += sweep(study, storage)
    for note in notes:
        print(note, flush=True)
    return study, notes


def _report(plan: StudyPlan, study: optuna.Study, notes: list[str]) -> TuneReport:
    """What the study holds now, written to ``plan.out`` with the best trial's model."""
    params = list(plan.tune.params)
    rows = trial_rows(study.get_trials(deepcopy=False), params)
    best, why = choose_best(rows, plan.tune.pareto, plan.target, plan.tune.tolerance)
    dense: dict[str, Any] = next((r["_dense"] for r in rows if r["_dense"]["macs"] is not None), {})
    report = TuneReport(
        out=plan.out,
        study=plan.study,
        storage=display_storage(plan.storage),
        pareto=plan.tune.pareto,
        target=plan.target,
        tolerance=plan.tune.tolerance,
        params=params,
        rows=rows,
        front=[r["trial"] for r in pareto_front(rows)],
        best=best,
        dense=dense or {"macs": plan.dense_macs, "cost": plan.dense_cost},
        notes=[*notes, *why],
        unit=plan.cost.unit,
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    if best is not None:
        note = copy_best(best, plan.out)
        if note:
            report.notes.append(note)
    write_results(report)
    return report
