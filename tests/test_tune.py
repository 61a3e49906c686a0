"""The Optuna outer loop on the tiny test space: budget, workers, resume, failures, Pareto,
PostgreSQL."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.config import TuneConfig, load_config
from automl_hiap.cost import dense_cost, subnet_cost
from automl_hiap.subnet import random_subnet
from automl_hiap.trainer import EpochEnd
from automl_hiap.tune import EpochReporter, make_sampler, pareto_front, run_tune

from .conftest import LR_RANGE, tiny_spec


def _sets(overrides: list[str]) -> list[str]:
    return [arg for value in overrides for arg in ("--set", value)]


def _study(out: Path, name: str | None = None) -> optuna.Study:
    journal = out / "study.journal"
    storage: str | optuna.storages.BaseStorage = f"sqlite:///{out / 'study.db'}"
    if journal.exists():
        backend = optuna.storages.journal.JournalFileBackend(str(journal))
        storage = optuna.storages.JournalStorage(backend)
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name or names[0], storage=storage)


def test_tune_lands_on_the_budget_and_search_resumes_it(tmp_path: Path, fast, capsys) -> None:
    out = tmp_path / "tune"
    args = ["--space", "test_vit.yaml", "--budget", "0.5", "--out", str(out), "--no-progress"]
    assert main(["tune", *args, "--trials", "3", *_sets(fast)]) == 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and "from the target" in printed

    summary = json.loads((out / "tune.json").read_text())
    rows = summary["trials"]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    config = load_config("test_vit.yaml", fast)
    space = ah.SearchSpace.from_model(tiny_spec().create(), config.space.units)
    target = 0.5 * dense_cost(space).macs
    best = max((r for r in rows if r["feasible"]), key=lambda r: r["val_top1"])
    assert summary["best_trial"] == best["trial"]
    # the exported model handed back is the best trial's, within ±3 % of the requested MACs
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["pruned"]["macs"] / target - 1) <= 0.03
    assert metrics["pruned"]["val_top1"] == best["val_top1"]
    model = ah.load(out / "model")
    assert model.subnet == ah.Subnet.load(out / "trials" / str(best["trial"]) / "subnet.json")
    assert sum(p.numel() for p in model.parameters()) == metrics["pruned"]["params"]
    assert (out / "pareto.png").stat().st_size > 0
    assert (out / "trials.csv").read_text().count("\n") == 4
    # selection used the val split, and the pruner heard every fine-tuning epoch
    study = _study(out)
    assert all(t.value == t.user_attrs["result"]["val_top1"] for t in study.trials)
    assert all(list(t.intermediate_values) == [1] for t in study.trials)
    assert all(len(t.constraints) == 1 for t in study.trials)

    # `search` with a tune: section is the same loop: it resumes the study up to 4 trials
    assert main(["search", *args, *_sets([*fast, "tune.trials=4"])]) == 0
    assert [t.state for t in _study(out).trials] == [optuna.trial.TrialState.COMPLETE] * 4


def test_three_workers_share_one_journal(tmp_path: Path, fast) -> None:
    out = tmp_path / "tune"
    config = load_config("test_vit.yaml", [*fast, "tune.workers=3", "tune.trials=6"])
    report = run_tune(config, out, progress=False)
    assert report is not None and (out / "study.journal").is_file()

    trials = _study(out).trials
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none extra
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 3 and all(workers.count(w) == 2 for w in workers)
    for trial in trials:  # each folder holds exactly its own trial's search
        metrics = json.loads((out / "trials" / str(trial.number) / "metrics.json").read_text())
        assert metrics["params_config"]["finetune_lr"] == trial.params["finetune_lr"]
    assert sorted(p.name for p in (out / "trials").iterdir()) == [str(n) for n in range(6)]
    assert len({t.params["finetune_lr"] for t in trials}) == 6


# The child tunes and SIGKILLs itself in the second fine-tuning epoch of trial 1.
KILLED_TUNE = textwrap.dedent(
    """
    import os, signal, sys
    from automl_hiap import trainer
    from automl_hiap.config import load_config
    from automl_hiap.tune import run_tune

    original = trainer.Trainer._train_epoch

    def train_epoch(self, model, optimizer, scheduler, hooks, extra, epoch, steps, total, phase):
        if self.checkpoint_dir.parent.name == "1" and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, model, optimizer, scheduler, hooks, extra, epoch, steps, total, phase)

    trainer.Trainer._train_epoch = train_epoch
    run_tune(load_config("test_vit.yaml", sys.argv[2:]), sys.argv[1], progress=False)
    """
)


def test_a_killed_study_resumes_the_killed_trial(tmp_path: Path, fast) -> None:
    overrides = [*fast, "strategy.params.finetune_epochs=2", "tune.trials=3"]
    script, out = tmp_path / "killed.py", tmp_path / "tune"
    script.write_text(KILLED_TUNE)
    killed = subprocess.run([sys.executable, str(script), str(out), *overrides], timeout=300)
    assert killed.returncode == -9
    states = [t.state.name for t in _study(out).trials]
    assert states == ["COMPLETE", "RUNNING"]
    assert (out / "trials" / "1" / "checkpoints" / "magnitude_finetune.pt").is_file()

    report = run_tune(load_config("test_vit.yaml", overrides), out, progress=False)
    assert report is not None
    rows = {r["trial"]: r for r in report.rows}
    assert [rows[n]["state"] for n in range(4)] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "died during the trial" in rows[1]["reason"] and rows[1]["retried_as"] == 2
    assert rows[2]["retry_of"] == 1 and rows[2]["params"] == rows[1]["params"]
    # the retry ran in the killed trial's folder (resuming its checkpoints), then cleaned up
    assert rows[2]["out"].endswith(str(out.resolve() / "trials" / "1"))
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "3"]
    assert not (out / "trials" / "1" / "checkpoints").exists()
    metrics = json.loads((out / "trials" / "1" / "metrics.json").read_text())
    assert metrics["params_config"]["finetune_lr"] == rows[1]["params"]["finetune_lr"]


def test_a_diverging_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, fast) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    # the user queued a first point whose learning rate makes the loss NaN
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name="s", direction="maximize"
    )
    study.enqueue_trial({"finetune_lr": 1.0e30})
    config = load_config(
        "test_vit.yaml",
        [*fast, "tune.trials=3", "tune.study=s", LR_RANGE.replace("1.0e-2", "1.0e30")],
    )
    report = run_tune(config, out, progress=False)
    assert report is not None and len(report.rows) == 3
    first = report.rows[0]
    assert first["state"] == "FAIL" and first["params"]["finetune_lr"] == 1.0e30
    assert first["reason"].startswith("TrainingDiverged:") and "loss became" in first["reason"]
    assert all(r["state"] in ("COMPLETE", "FAIL") for r in report.rows)


def test_pareto_mode_returns_the_non_dominated_set(tmp_path: Path, fast) -> None:
    out = tmp_path / "tune"
    overrides = [
        *fast,
        "tune.pareto=true",
        "tune.trials=5",
        "tune.sampler=random",
        "strategy.params.finetune_epochs=0",
        "tune.params.budget={low: 0.3, high: 0.9}",
    ]
    report = run_tune(load_config("test_vit.yaml", overrides), out, progress=False)
    assert report is not None
    done = [r for r in report.rows if r["state"] == "COMPLETE"]
    assert len(done) == 5 and len({r["macs"] for r in done}) == 5  # the budget was tuned

    def dominates(a: dict, b: dict) -> bool:
        better = a["val_top1"] > b["val_top1"] or a["macs"] < b["macs"]
        return a["val_top1"] >= b["val_top1"] and a["macs"] <= b["macs"] and better

    front = [r for r in done if r["trial"] in report.front]
    assert front and sorted(front, key=lambda r: r["macs"]) == pareto_front(report.rows)
    assert not any(dominates(o, r) for r in front for o in done)
    assert all(any(dominates(f, r) for f in front) for r in done if r not in front)
    study = _study(out)
    assert len(study.directions) == 2
    assert sorted(t.number for t in study.best_trials) == sorted(report.front)


def test_epoch_reports_continue_across_phases_and_prune(tiny) -> None:
    _, _, space = tiny
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(0.6))
    trial = study.ask()
    reporter = EpochReporter(trial, space)
    candidate = random_subnet(space, torch.Generator().manual_seed(0))
    reporter(EpochEnd("dense", 1, 2, {"val_top1": 0.1}, None))  # same in every trial: skipped
    reporter(EpochEnd("explore", 1, 2, {"val_top1": 0.7}, candidate))
    reporter(EpochEnd("explore", 2, 2, {"val_top1": 0.8}, None))
    with pytest.raises(optuna.TrialPruned):
        reporter(EpochEnd("finetune", 1, 3, {"val_top1": 0.5}, None))
    assert study.trials[0].intermediate_values == {1: 0.7, 2: 0.8, 3: 0.5}
    assert reporter.macs == reporter.cost == subnet_cost(space, candidate).macs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["tune.params.lambda={low: 0.1, high: 1.0}"],
            "test_vit.yaml: tune.params.lambda: strategy 'magnitude' has no parameter lambda; "
            "expected one of criterion, normalize, tradeoff, calibration_images, batch_size, "
            "finetune_epochs, finetune_lr",
        ),
        (
            ["tune.params.finetune_epochs={low: 1, high: 3}"],
            "tune.params.finetune_epochs: a float range does not fit the field's type int; "
            "add int: true",
        ),
        (
            ["tune.params.finetune_lr={low: 0.0, high: 1.0}"],
            "tune.params.finetune_lr: 0.0 is not allowed: Input should be greater than 0",
        ),
        (
            ["tune.params.finetune_lr={low: 1.0, high: 0.1}"],
            "tune.params.finetune_lr: expected low < high",
        ),
        (
            ["tune.params.finetune_epochs={choices: [1, {a: 2}]}"],
            "tune.params.finetune_epochs.choices: expected numbers, strings, booleans or null",
        ),
        (["tune.pruner=median", "tune.pareto=true"], "tune.pruner: median: multi-objective"),
        (["tune.params.budget={low: 0.3, high: 0.9}"], "the budget is tuned only with pareto"),
        (["tune.workers=2", "tune.storage=x.db"], "x.db is SQLite, which locks"),
        (["tune.storage=x.txt"], "--storage x.txt: expected a database URL"),
    ],
)
def test_bad_tune_settings_fail_with_one_line(
    tmp_path: Path, capsys, overrides: list[str], message: str
) -> None:
    sets = _sets([LR_RANGE, *overrides])
    code = main(["tune", "--space", "test_vit.yaml", "--out", str(tmp_path), *sets])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


def test_tune_without_a_tune_section_says_what_to_add(tmp_path: Path, capsys) -> None:
    assert main(["tune", "--space", "test_vit.yaml", "--out", str(tmp_path)]) == 2
    assert "test_vit.yaml: tune: missing section" in capsys.readouterr().err


# ----------------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on a free port (skips where none can be started)."""
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install 'automl_hiap[postgres]'")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb") or "").resolve().parent))
    bindir = next((Path(c) for c in candidates if (Path(c) / "pg_ctl").is_file()), None)
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl); .ci/run installs them")
    run_as: list[str] = []
    root = tempfile.mkdtemp(prefix="automl_hiap_pg_")
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = Path(root) / "data", _free_port()
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
    initdb = [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "tuner", "--auth=trust"]
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    start = [*pg_ctl, "-o", options, "-l", f"{root}/log", "-w", "-t", "60", "start"]
    for command in (initdb, start):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"cannot start PostgreSQL: {(done.stderr or done.stdout).strip()[-200:]}")
    try:
        yield f"postgresql+psycopg2://tuner@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_commands_share_a_study_in_postgresql(tmp_path: Path, fast, postgres_url: str) -> None:
    out = tmp_path / "tune"
    settings = [*fast, f"tune.storage={postgres_url}", "tune.study=pg"]
    report = run_tune(load_config("test_vit.yaml", [*settings, "tune.trials=2"]), out / "a")
    assert report is not None and report.storage == postgres_url
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    # another command (another machine, in real use) continues the same study
    report = run_tune(load_config("test_vit.yaml", [*settings, "tune.trials=3"]), out / "b")
    assert report is not None and [r["state"] for r in report.rows] == ["COMPLETE"] * 3
    assert sorted(p.name for p in (out / "b" / "trials").iterdir()) == ["2"]
    # the best trial's model is copied even when another command (same machine) ran it
    assert report.best is not None
    best_folder = Path(report.best["out"].partition(":")[2])
    assert (out / "b" / "subnet.json").read_text() == (best_folder / "subnet.json").read_text()
    assert not (out / "a" / "study.db").exists() and not (out / "b" / "study.db").exists()


def test_studies_for_other_budgets_start_from_other_points() -> None:
    tune = TuneConfig(sampler="random", seed=0, params={"lr": {"low": 1e-4, "high": 1e-2}})

    def first_value(study_name: str) -> float:
        plan = SimpleNamespace(tune=tune, study=study_name)
        study = optuna.create_study(sampler=make_sampler(plan, existing=0, worker=0))  # type: ignore[arg-type]
        return study.ask().suggest_float("lr", 1e-4, 1e-2)

    assert first_value("vit-hiap-0.5") == first_value("vit-hiap-0.5")  # still reproducible
    assert first_value("vit-hiap-0.5") != first_value("vit-hiap-0.67")
