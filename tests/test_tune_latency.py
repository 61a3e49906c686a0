"""``tune`` with a latency budget: the constraint, the Pareto front and the tuned budget count
the device's predicted latency, not MACs; the measured latency is recorded beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.config import load_config
from automl_hiap.latency import LatencyModel
from automl_hiap.latency_table import LatencyTable
from automl_hiap.selection import cheapest
from automl_hiap.subnet import Subnet

from .conftest import tiny_spec


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's table for the test space, profiled once through the CLI (tiny grid)."""
    path = tmp_path_factory.mktemp("latency") / "table.json"
    args = ["profile", "--space", "test_vit.yaml", "--out", str(path), "--threads", "1"]
    assert main([*args, "--points", "2", "--repeats", "1"]) == 0
    return path


def _model(table: Path) -> tuple[ah.SearchSpace, LatencyModel]:
    space = ah.SearchSpace.from_model(
        tiny_spec().create(), load_config("test_vit.yaml").space.units
    )
    return space, LatencyModel(LatencyTable.read(table), space)


def _budget(seconds: float, table: Path) -> str:
    return f"budget={{latency: {seconds * 1e3:.6f}ms, threads: 1, table: {table}}}"


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def _predicted(model: LatencyModel, space: ah.SearchSpace, out: Path, row: dict[str, Any]) -> float:
    subnet = Subnet.load(out / "trials" / str(row["trial"]) / "subnet.json")
    return model.predict(space, subnet)


def test_a_latency_budget_is_the_constraint_of_a_tune(tmp_path: Path, fast, table: Path) -> None:
    space, model = _model(table)
    fastest = model.predict(space, cheapest(space, model))
    target = (fastest + model.predict(space, Subnet.dense(space))) / 2
    out = tmp_path / "tune"
    args = ["tune", "--space", "test_vit.yaml", "--out", str(out), "--no-progress"]
    assert main([*args, "--trials", "2", *_sets([*fast, _budget(target, table)])]) == 0

    summary = json.loads((out / "tune.json").read_text())
    assert summary["unit"] == "s" and summary["target"] == pytest.approx(target, rel=1e-5)
    assert summary["target_macs"] is None
    target = summary["target"]  # as the budget's text gave it
    rows = [r for r in summary["trials"] if r["state"] == "COMPLETE"]
    assert len(rows) == 2
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{out / 'study.db'}")
    for row in rows:
        predicted = _predicted(model, space, out, row)
        assert row["cost"] == pytest.approx(predicted)  # the device's prediction, not MACs
        assert row["target_error"] == pytest.approx(predicted / target - 1, rel=1e-4)
        assert row["feasible"] == (abs(predicted / target - 1) <= 0.03)
        assert row["measured_ms"] > 0  # timed on this machine too
        constraints = {  # what the sampler learns feasibility from
            k.rpartition(":")[2]: v
            for k, v in study.trials[row["trial"]].system_attrs.items()
            if k.startswith("constraints")
        }
        assert constraints == {"latency": pytest.approx(abs(predicted / target - 1) - 0.03)}
    metrics = json.loads((out / "metrics.json").read_text())  # the best trial's export
    best = next(r for r in rows if r["trial"] == summary["best_trial"])
    assert metrics["latency"]["predicted_ms"] == pytest.approx(best["cost"] * 1e3)
    dense = model.predict(space, Subnet.dense(space))  # timed beside it: the machine's drift
    assert metrics["latency"]["dense_predicted_ms"] == pytest.approx(dense * 1e3)
    assert metrics["latency"]["dense_measured_ms"] > 0


def test_pareto_trades_top1_against_predicted_latency(tmp_path: Path, fast, table: Path) -> None:
    space, model = _model(table)
    dense = model.predict(space, Subnet.dense(space))
    floor = model.predict(space, cheapest(space, model)) / dense  # the fastest allowed subnet
    out = tmp_path / "pareto"
    shares = f"tune.params.budget={{low: {floor + 0.01:.4f}, high: 0.99}}"
    sets = _sets([*fast, _budget(0.9 * dense, table), shares, "tune.sampler=random"])
    args = ["tune", "--space", "test_vit.yaml", "--out", str(out), "--pareto", "--no-progress"]
    assert main([*args, "--trials", "4", *sets]) == 0

    summary = json.loads((out / "tune.json").read_text())
    rows = [r for r in summary["trials"] if r["state"] == "COMPLETE"]
    assert len(rows) == 4 and len({r["cost"] for r in rows}) > 1  # the budget was tuned
    for row in rows:  # each trial selected to its sampled share of the dense latency
        predicted = _predicted(model, space, out, row)
        assert row["cost"] == pytest.approx(predicted)
        assert predicted <= row["params"]["budget"] * dense * (1 + 1e-6)

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        better = a["val_top1"] > b["val_top1"] or a["cost"] < b["cost"]
        return a["val_top1"] >= b["val_top1"] and a["cost"] <= b["cost"] and better

    front = [r["trial"] for r in rows if not any(dominates(o, r) for o in rows)]
    assert sorted(summary["front"]) == sorted(front)
    best = next(r for r in rows if r["trial"] == summary["best_trial"])
    assert best["cost"] <= 0.9 * dense * 1.03  # the most accurate front member within budget
    within = [r for r in rows if r["trial"] in front and r["cost"] <= 0.9 * dense * 1.03]
    assert best["val_top1"] == max(r["val_top1"] for r in within)


def test_a_tuned_budget_below_the_fastest_subnet_is_refused_before_compute(
    tmp_path: Path, fast, table: Path, capsys
) -> None:
    space, model = _model(table)
    dense = model.predict(space, Subnet.dense(space))
    sets = _sets([*fast, _budget(0.8 * dense, table), "tune.params.budget={low: 0.01, high: 0.9}"])
    args = ["tune", "--space", "test_vit.yaml", "--out", str(tmp_path / "t"), "--pareto"]
    assert main([*args, "--trials", "2", *sets]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tune.params.budget: expected fractions of at least" in err[0]
    assert "predicted latency" in err[0] and "got 0.01" in err[0]
    assert not (tmp_path / "t" / "study.db").exists()  # no study made, nothing trained
