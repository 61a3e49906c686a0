"""`automl_hiap search` end to end on the tiny test space, its errors, and resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.config import load_config
from automl_hiap.models import create_model
from automl_hiap.search import reference_key, run_search
from automl_hiap.trainer import Trainer

FAST = ["strategy.params.finetune_epochs=1"]


def test_search_writes_a_smaller_measured_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["search", "--space", "test_vit.yaml", "--budget", "0.5", "--out", str(out)]
    assert main([*args, "--no-progress", "--set", FAST[0]]) == 0
    printed = capsys.readouterr().out
    assert "pruned" in printed and "measured speed-up" in printed
    assert {p.name for p in out.iterdir()} >= {
        "subnet.json",
        "model",
        "metrics.json",
        "structure.png",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["macs_ratio"] <= 0.5
    assert metrics["pruned"]["params"] < metrics["dense"]["params"]
    model = ah.load(out / "model")
    assert sum(p.numel() for p in model.parameters()) == metrics["pruned"]["params"]
    assert ah.Subnet.load(out / "subnet.json") == model.subnet
    assert main(["evaluate", str(out), "--space", "test_vit.yaml"]) == 0
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "data.format=cifar10", "--set", "data.root=/no/such/dir"],
            "data.root: /no/such/dir",
        ),
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--budget", "5G"], "budget: 5G is larger than the dense model"),
        (
            ["--set", "strategy.params.finetune_epoch=1"],
            "strategy.params.finetune_epoch: unknown key",
        ),
    ],
)
def test_bad_runs_fail_with_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    code = main(
        ["search", "--space", "test_vit.yaml", "--out", str(tmp_path), "--no-progress", *args]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


# The child runs a search and SIGKILLs itself during the dense training's second epoch.
KILLED_SEARCH = textwrap.dedent(
    """
    import os, signal, sys
    from automl_hiap import trainer
    from automl_hiap.config import load_config
    from automl_hiap.search import run_search

    original = trainer.Trainer._train_epoch

    def train_epoch(self, model, optimizer, scheduler, hooks, extra, epoch, steps, total, phase):
        if phase == "dense" and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, model, optimizer, scheduler, hooks, extra, epoch, steps, total, phase)

    trainer.Trainer._train_epoch = train_epoch
    config = load_config("test_vit.yaml", sys.argv[2:])
    run_search(config, sys.argv[1], progress=False)
    """
)


def test_a_killed_search_resumes_to_the_same_subnet(tmp_path: Path) -> None:
    overrides = [*FAST, "train.dense_epochs=3"]
    config = load_config("test_vit.yaml", overrides)
    reference = run_search(config, tmp_path / "uninterrupted", progress=False)

    script = tmp_path / "killed.py"
    script.write_text(KILLED_SEARCH)
    out = tmp_path / "resumed"
    killed = subprocess.run([sys.executable, str(script), str(out), *overrides], timeout=300)
    assert killed.returncode == -9 and (out / "checkpoints" / "dense.pt").is_file()
    assert not (out / "subnet.json").exists()
    resumed = run_search(config, out, progress=False)

    assert resumed.subnet == reference.subnet
    a, b = ah.load(tmp_path / "uninterrupted" / "model"), ah.load(out / "model")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_a_shared_cache_scores_the_dense_model_once(tmp_path: Path, monkeypatch) -> None:
    scored_on_test: list[int] = []  # parameter counts of the models scored on the test split
    evaluate = Trainer.evaluate

    def counted(self: Trainer, model: torch.nn.Module, data=None) -> dict[str, float]:
        if data is not None:
            scored_on_test.append(sum(p.numel() for p in model.parameters()))
        return evaluate(self, model, data)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    config = load_config("test_vit.yaml", FAST)
    cache: dict = {}
    first = run_search(
        config, tmp_path / "a", progress=False, measure_batch=None, dense_scores=cache
    )
    dense_params = first.metrics.dense.params
    assert scored_on_test.count(dense_params) == 1 and len(cache) == 1
    scored_on_test.clear()
    again = run_search(
        config, tmp_path / "b", progress=False, measure_batch=None, dense_scores=cache
    )
    assert scored_on_test == [again.metrics.pruned.params]  # only the pruned model
    assert again.metrics.dense == first.metrics.dense

    other_split = load_config("test_vit.yaml", [*FAST, "data.val_fraction=0.2"])
    run_search(other_split, tmp_path / "c", progress=False, measure_batch=None, dense_scores=cache)
    assert len(cache) == 2  # other data: scored anew


def test_the_reference_key_follows_the_weights() -> None:
    config = load_config("test_vit.yaml")
    m = config.model
    model = create_model(m.name, dict(m.kwargs), None, False)
    key = reference_key(model, config)
    assert reference_key(model, config) == key
    with torch.no_grad():
        next(model.parameters())[0].flatten()[0] += 1e-3
    assert reference_key(model, config) != key
