"""The Optuna outer loop: tune a strategy's params so its exported model lands on the budget.

Each trial is one search (:func:`automl_hiap.search.run_search`) into ``OUT/trials/<n>/`` with
the sampled values merged into ``strategy.params``; the YAML's ``tune.params`` names the fields
and their ranges. In **budget** mode the study maximizes val top-1 with the exported MACs held
within ``tune.tolerance`` of the target; in **pareto** mode it trades val top-1 against MACs
and returns the non-dominated front. Results: ``trials.csv``, ``tune.json``, ``pareto.png`` and
the best trial's exported model in ``OUT``.

Modules, in the order a command meets them:

* :mod:`~automl_hiap.tune.run`: :func:`run_tune`, the entry point.
* :mod:`~automl_hiap.tune.params`: the tuned ranges, checked against the strategy's Params.
* :mod:`~automl_hiap.tune.integrity`: a damaged or emptied study file refused before opening.
* :mod:`~automl_hiap.tune.storage`: the study's storage; lost trials found and retried.
* :mod:`~automl_hiap.tune.dense`: a space without weights trains its dense model once per study.
* :mod:`~automl_hiap.tune.study`: the shared plan, tracker seams, the study, sampler, pruner.
* :mod:`~automl_hiap.tune.workers`: the processes that run trials.
* :mod:`~automl_hiap.tune.objective`: one trial, and its result record.
* :mod:`~automl_hiap.tune.results`: the trials table, the front, the best trial, the files.
* :mod:`~automl_hiap.tune.tracking`: a study in MLflow (imported only where one is tracked).
"""

from automl_hiap.tune.objective import EpochReporter, failure_reason
from automl_hiap.tune.params import BUDGET_PARAM, check_params, with_params
from automl_hiap.tune.results import TuneReport, choose_best, pareto_front, summary
from automl_hiap.tune.run import run_tune
from automl_hiap.tune.storage import default_storage, open_storage
from automl_hiap.tune.study import StudyPlan, TuneHooks, default_study_name, make_sampler

__all__ = [
    "BUDGET_PARAM",
    "EpochReporter",
    "StudyPlan",
    "TuneHooks",
    "TuneReport",
    "check_params",
    "choose_best",
    "default_storage",
    "default_study_name",
    "failure_reason",
    "make_sampler",
    "open_storage",
    "pareto_front",
    "run_tune",
    "summary",
    "with_params",
]
