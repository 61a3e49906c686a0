"""A tune in MLflow: one parent run per study, a nested child per trial, the best registered."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from automl_hiap.cli import main
from automl_hiap.config import load_config
from automl_hiap.tracking import Tracker, use_store
from automl_hiap.tune import run_tune
from automl_hiap.tune.tracking import TrackingHooks

from .conftest import LR_RANGE

EPOCH_METRIC = "magnitude_finetune/val_top1"  # the magnitude strategy's fine-tuning phase


def _runs(uri: str, query: str) -> pd.DataFrame:
    with use_store(uri):
        found = mlflow.search_runs(experiment_names=["automl_hiap"], filter_string=query)
    assert isinstance(found, pd.DataFrame)
    return found


def _parent_and_children(uri: str) -> tuple[pd.Series, pd.DataFrame]:
    parents = _runs(uri, "tags.`automl_hiap.kind` = 'study'")
    assert len(parents) == 1, list(parents["tags.mlflow.runName"])
    parent = parents.iloc[0]
    children = _runs(uri, f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    order = children["tags.automl_hiap.trial"].astype(int).sort_values().index
    return parent, children.loc[order].reset_index(drop=True)


def test_a_tune_logs_a_parent_a_child_per_trial_and_registers_the_best(
    tmp_path: Path, fast: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "tune"
    sets = [arg for value in fast for arg in ("--set", value)]
    common = ["--space", "test_vit.yaml", "--budget", "0.5", "--out", str(out), "--no-progress"]
    common += ["--tracking-uri", uri, "--register", "tuned", *sets]
    assert main(["tune", *common, "--trials", "3"]) == 0
    assert "registered model tuned version 1" in capsys.readouterr().out

    summary = json.loads((out / "tune.json").read_text())
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{out / 'study.db'}")
    parent, children = _parent_and_children(uri)
    assert parent["status"] == "FINISHED" and parent["tags.mlflow.runName"] == summary["study"]
    assert parent["params.tune.trials"] == "3" and parent["params.budget"] == "0.5"
    assert not any(key.startswith("params.tune.storage") for key in parent.index)
    assert parent["tags.automl_hiap.best_trial"] == str(summary["best_trial"])
    assert parent["metrics.trials_complete"] == 3
    assert parent["metrics.best_val_top1"] == pytest.approx(study.best_value)
    client = MlflowClient(uri)
    artifacts = {a.path for a in client.list_artifacts(parent["run_id"])}
    assert {"pareto.png", "trials.csv", "tune.json"} <= artifacts

    # one child per trial: its sampled params, resolved config, epoch metrics and outcome
    assert list(children["tags.mlflow.runName"]) == ["trial-0", "trial-1", "trial-2"]
    assert list(children["status"]) == ["FINISHED"] * 3
    for trial, row in zip(study.trials, children.to_dict("records"), strict=True):
        assert float(row["params.finetune_lr"]) == trial.params["finetune_lr"]
        assert float(row["params.strategy.params.finetune_lr"]) == trial.params["finetune_lr"]
        assert row["metrics.val_top1"] == pytest.approx(trial.value)
        error = trial.user_attrs["result"]["target_error"]
        assert row["metrics.target_error"] == pytest.approx(error)
        history = client.get_metric_history(row["run_id"], EPOCH_METRIC)
        assert [(m.step, m.value) for m in history] == [(1, trial.intermediate_values[1])]
        assert row["tags.automl_hiap.model_uri"].startswith("models:/")
    assert not any(c.startswith("params.tune.") for c in children.columns)  # storage: secret

    # only the trial the tune handed back is registered, from its child run
    version = client.get_model_version_by_alias("tuned", "champion")
    best = children.loc[summary["best_trial"]]
    assert version.run_id == best["run_id"] and set(version.aliases) == {"champion", "macs-50"}
    best_file = out / "trials" / str(summary["best_trial"]) / "metrics.json"
    assert float(version.tags["top1"]) == json.loads(best_file.read_text())["pruned"]["top1"]
    assert len(client.search_model_versions("name = 'tuned'")) == 1

    # the finished study run again, by `search` (a tune: section makes it the same loop):
    # the same parent and children, and the best's version is reused, not registered again
    assert main(["search", *common, "--set", "tune.trials=3"]) == 0
    assert "registered model tuned version 1" in capsys.readouterr().out
    again, children_again = _parent_and_children(uri)
    assert again["run_id"] == parent["run_id"] and len(children_again) == 3
    assert len(client.search_model_versions("name = 'tuned'")) == 1


@pytest.mark.filterwarnings("ignore:Fixed parameter finetune_lr")
def test_pruned_and_failed_trials_end_their_runs_so(
    tmp_path: Path, fast: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name="s", direction="maximize"
    )
    study.enqueue_trial({"finetune_lr": 1.0e30})  # trial 0: the loss becomes NaN
    real_should_prune = optuna.trial.Trial.should_prune
    monkeypatch.setattr(  # trial 1 is stopped after its first epoch
        optuna.trial.Trial,
        "should_prune",
        lambda self: self.number == 1 or real_should_prune(self),
    )
    config = load_config("test_vit.yaml", [*fast, "tune.trials=3", "tune.study=s"])
    hooks = TrackingHooks(Tracker(uri))
    report = run_tune(config, out, progress=False, hooks=hooks)
    assert report is not None
    assert [r["state"] for r in report.rows] == ["FAIL", "PRUNED", "COMPLETE"]

    parent, children = _parent_and_children(uri)
    assert parent["run_id"] == hooks.study_run_id and parent["status"] == "FINISHED"
    assert list(children["status"]) == ["FAILED", "KILLED", "FINISHED"]
    assert children["tags.automl_hiap.fail_reason"][0] == report.rows[0]["reason"]
    assert report.rows[0]["reason"].startswith("TrainingDiverged:")
    assert list(children["tags.automl_hiap.pruned"].fillna("")) == ["", "true", ""]
    # the pruned trial's epoch (the one the pruner judged) was logged before it stopped
    history = MlflowClient(uri).get_metric_history(children["run_id"][1], EPOCH_METRIC)
    assert [m.step for m in history] == [1]
    assert pd.isna(children["metrics.val_top1"][1]) and not pd.isna(children["metrics.val_top1"][2])
    assert parent["metrics.trials_failed"] == 1 and parent["metrics.trials_pruned"] == 1


def test_a_run_left_running_by_a_killed_worker_is_ended_on_resume(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config("test_vit.yaml", [LR_RANGE])
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    hooks = TrackingHooks(Tracker(uri))
    with hooks.study(study, config):
        trial = study.ask()
        trial.suggest_float("finetune_lr", 1e-4, 1e-2, log=True)
        killed = hooks.trial(trial, tmp_path / "0", config)
        killed.__enter__()  # ... and the worker dies in the trial: the run is never ended
    _, child = _parent_and_children(uri)
    assert list(child["status"]) == ["RUNNING"]
    # the tune's resume fails the trial with its reason; opening the study ends the run
    trial.set_user_attr("fail_reason", "worker h:1 died during the trial")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    with TrackingHooks(Tracker(uri)).study(study, config):
        pass
    parent, child = _parent_and_children(uri)
    assert parent["run_id"] == hooks.study_run_id  # found again by name and study key
    assert list(child["status"]) == ["FAILED"]
    assert child["tags.automl_hiap.fail_reason"][0] == "worker h:1 died during the trial"

    # another study with the same name (another output folder) gets its own parent run
    other = optuna.create_study(storage=f"sqlite:///{tmp_path / 'other.db'}", study_name="s")
    with TrackingHooks(Tracker(uri)).study(other, config):
        pass
    assert len(_runs(uri, "tags.`automl_hiap.kind` = 'study'")) == 2


def test_worker_processes_log_their_trials_under_one_parent_and_pareto_registers_the_best(
    tmp_path: Path, fast: list[str]
) -> None:
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "tune"
    overrides = [
        *fast,
        "tune.pareto=true",
        "tune.workers=2",
        "tune.trials=2",
        "tune.sampler=random",
        "tune.params.budget={low: 0.3, high: 0.9}",
        "budget=null",  # no target: the best is the front's most accurate member
    ]
    hooks = TrackingHooks(Tracker(uri, register="front"))
    report = run_tune(load_config("test_vit.yaml", overrides), out, progress=False, hooks=hooks)
    assert report is not None and report.best is not None

    parent, children = _parent_and_children(uri)
    assert parent["run_id"] == hooks.study_run_id
    assert list(children["status"]) == ["FINISHED"] * 2
    study = optuna.load_study(
        study_name=report.study,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))
        ),
    )
    workers = {t.number: t.user_attrs["worker"] for t in study.trials}
    assert len(set(workers.values())) == 2  # two processes, one parent
    client = MlflowClient(uri)
    for row in children.to_dict("records"):
        assert [m.step for m in client.get_metric_history(row["run_id"], EPOCH_METRIC)] == [1]
        assert row["metrics.macs"] == report.rows[int(row["tags.automl_hiap.trial"])]["macs"]
    # Pareto: the registered model is the front's most accurate member
    front = [r for r in report.rows if r["trial"] in report.front]
    assert report.best["val_top1"] == max(r["val_top1"] for r in front)
    assert hooks.registered is not None and "champion" in hooks.registered.aliases
    assert hooks.registered.run_id == children["run_id"][report.best["trial"]]
