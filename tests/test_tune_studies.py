"""A study is never silently lost (damaged or emptied journal / SQLite files stop the command,
untouched), trials do not depend on what their worker ran before, and a space without weights
trains its dense model once per study."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from automl_hiap import trainer
from automl_hiap.cli import main
from automl_hiap.config import load_config
from automl_hiap.plan import resolve
from automl_hiap.tune import TuneHooks, objective, run_tune
from automl_hiap.tune.dense import study_dense
from automl_hiap.tune.integrity import seal_path

from .conftest import LR_RANGE

SPACE = "test_vit.yaml"


def _tune(out: Path, overrides: list[str], trials: int) -> list[str]:
    sets = [arg for value in overrides for arg in ("--set", value)]
    return ["tune", "--space", SPACE, "--budget", "0.5", "--out", str(out), "--no-progress",
            "--no-tracking", "--trials", str(trials), *sets]  # fmt: skip


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, fast: list[str]) -> dict[str, Path]:
    """Two finished tunes of 2 trials: one in a journal, one in SQLite (copied per test)."""
    root = tmp_path_factory.mktemp("studies")
    made = {}
    for kind in ("journal", "db"):
        out = root / kind
        overrides = [*fast, f"tune.storage={out / f'study.{kind}'}"]
        assert main(_tune(out, overrides, 2)) == 0
        made[kind] = out
    return made


def _copy(studies: dict[str, Path], kind: str, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / kind
    shutil.copytree(studies[kind], out)
    return out, out / f"study.{kind}"


def _refused(out: Path, study: Path, fast: list[str], capsys: pytest.CaptureFixture) -> str:
    """Resume the damaged study: one error line, exit 2, the file and the trials untouched."""
    before = study.read_bytes() if study.exists() else None
    trials = sorted(p.name for p in (out / "trials").iterdir())
    capsys.readouterr()
    code = main(_tune(out, [*fast, f"tune.storage={study}"], 3))
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert (study.read_bytes() if study.exists() else None) == before
    assert sorted(p.name for p in (out / "trials").iterdir()) == trials  # nothing ran
    assert str(study) in captured.err
    return captured.err


def _lines(journal: Path) -> list[bytes]:
    return journal.read_bytes().splitlines(keepends=True)


def test_a_journal_cut_mid_record_is_refused(studies, tmp_path, fast, capsys) -> None:
    out, journal = _copy(studies, "journal", tmp_path)
    lines = _lines(journal)
    keep = sum(map(len, lines[: len(lines) // 2])) + len(lines[len(lines) // 2]) // 2
    journal.write_bytes(journal.read_bytes()[:keep])
    err = _refused(out, journal, fast, capsys)
    assert f"{keep} bytes, but it held" in err and "was cut" in err


def test_a_journal_cut_at_a_record_boundary_is_refused(studies, tmp_path, fast, capsys) -> None:
    out, journal = _copy(studies, "journal", tmp_path)
    lines = _lines(journal)
    journal.write_bytes(b"".join(lines[: len(lines) - 5]))  # the last trial: RUNNING, no values
    trials = optuna.load_study(
        study_name=None,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
    ).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]  # what Optuna would see
    assert "was cut and finished trials would be lost" in _refused(out, journal, fast, capsys)


def test_an_emptied_journal_is_refused(studies, tmp_path, fast, capsys) -> None:
    out, journal = _copy(studies, "journal", tmp_path)
    journal.write_bytes(b"")
    assert "empty, but it held" in _refused(out, journal, fast, capsys)
    seal_path(journal).unlink()  # without its seal: the trials in OUT say a study was there
    assert "empty, but" in _refused(out, journal, fast, capsys)


def test_a_rewritten_or_garbled_journal_is_refused(studies, tmp_path, fast, capsys) -> None:
    out, journal = _copy(studies, "journal", tmp_path)
    lines = _lines(journal)
    garbled = [*lines[:3], b"x" * (len(lines[3]) - 1) + b"\n", *lines[4:]]
    journal.write_bytes(b"".join(garbled))
    assert "record 4 (byte" in _refused(out, journal, fast, capsys)
    line = lines[-1]  # the same length, valid JSON, not what was written there
    at = line.index(b'"worker_id":"') + len(b'"worker_id":"')
    other = line[:at] + (b"0" if line[at : at + 1] != b"0" else b"1") + line[at + 1 :]
    journal.write_bytes(b"".join([*lines[:-1], other]))
    assert "is not the one written there" in _refused(out, journal, fast, capsys)


def test_a_deleted_sealed_journal_is_refused(studies, tmp_path, fast, capsys) -> None:
    out, journal = _copy(studies, "journal", tmp_path)
    journal.unlink()
    assert "missing, but study.journal.seal says" in _refused(out, journal, fast, capsys)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda db: db.write_bytes(b""), "empty, but"),
        (lambda db: db.write_bytes(b"\x8b\x1f garbage " * 300), "not a SQLite database"),
        (lambda db: db.write_bytes(db.read_bytes()[: 4096 * 3]), "damaged SQLite database"),
        (lambda db: _drop(db, "trials"), "without Optuna's tables (trials missing)"),
    ],
    ids=["empty", "garbage", "cut", "no-trials-table"],
)
def test_a_damaged_sqlite_study_is_refused(
    studies, tmp_path, fast, capsys, damage: Callable[[Path], None], message: str
) -> None:
    out, db = _copy(studies, "db", tmp_path)
    damage(db)
    assert message in _refused(out, db, fast, capsys)


def _drop(db: Path, table: str) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute(f"DROP TABLE {table}")
    connection.close()


def test_a_record_cut_by_a_killed_writer_is_removed_and_the_study_resumes(
    studies, tmp_path, fast, capsys
) -> None:
    out, journal = _copy(studies, "journal", tmp_path)
    intact = journal.read_bytes()
    partial = _lines(journal)[-1][:25]  # what a writer killed mid-append leaves past the seal
    journal.write_bytes(intact + partial)
    assert main(_tune(out, [*fast, f"tune.storage={journal}"], 3)) == 0
    printed = capsys.readouterr().out
    assert f"removed an incomplete last record (25 bytes at byte {len(intact)}" in printed
    assert journal.read_bytes().startswith(intact)  # every finished trial kept
    rows = json.loads((out / "tune.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    # without a seal, the same tail cannot be told from a cut: refused
    out, journal = _copy(studies, "journal", tmp_path / "unsealed")
    seal_path(journal).unlink()
    journal.write_bytes(intact + partial)
    assert "no study.journal.seal vouches" in _refused(out, journal, fast, capsys)


def test_a_fresh_out_starts_a_study_and_seals_it(tmp_path, fast) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    (out / "study.journal").write_bytes(b"")  # empty and no trials yet: a fresh start
    report = run_tune(
        load_config(SPACE, [*fast, "tune.trials=1", f"tune.storage={out / 'study.journal'}"]),
        out,
        progress=False,
    )
    assert report is not None and [r["state"] for r in report.rows] == ["COMPLETE"]
    seal = json.loads(seal_path(out / "study.journal").read_text())
    assert seal["bytes"] == (out / "study.journal").stat().st_size


# ----------------------------------------------------------------------------- determinism


class Drawing(TuneHooks):
    """A tracker (or any code) that draws from the global RNGs between trials."""

    def trial_finished(self, trial: optuna.trial.FrozenTrial) -> None:
        random.random(), np.random.rand(), torch.rand(1)


def test_a_trial_does_not_depend_on_what_its_worker_ran_before(tmp_path, fast, monkeypatch) -> None:
    starts: list[tuple[float, float, float]] = []  # each trial's first draw of every RNG
    real_search = objective.run_search

    def run_search(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            state = random.getstate(), np.random.get_state()
            starts.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
            random.setstate(state[0])
            np.random.set_state(state[1])
        return real_search(*args, **kwargs)

    monkeypatch.setattr(objective, "run_search", run_search)
    out = tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name="s", direction="maximize"
    )
    for lr in (1e-3, 5e-3, 1e-3):  # the same params again after a different trial
        study.enqueue_trial({"finetune_lr": lr})
    overrides = [*fast, "data.augment=true", "tune.trials=3", "tune.study=s", "tune.pruner=none"]
    report = run_tune(load_config(SPACE, overrides), out, hooks=Drawing(), progress=False)
    assert report is not None
    assert len(starts) == 3 and len(set(starts)) == 1  # every trial starts from one RNG state
    first, other, again = report.rows
    keys = ("val_top1", "test_top1", "macs")
    assert [first[k] for k in keys] == [again[k] for k in keys]

    def weights(row: dict) -> bytes:
        return (out / "trials" / str(row["trial"]) / "model" / "model.safetensors").read_bytes()

    assert weights(first) == weights(again)
    assert weights(first) != weights(other)  # the params do matter


# ----------------------------------------------------------------------------- dense model


@pytest.fixture
def dense_trainings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The checkpoint folders of every dense training in this process."""
    seen: list[str] = []
    original = trainer.Trainer.fit

    def fit(self, model, epochs, phase, *args, **kwargs):
        if phase == "dense":
            seen.append(str(self.checkpoint_dir))
        return original(self, model, epochs, phase, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    return seen


NO_WEIGHTS = [
    "train.dense_epochs=1",
    "data.train_subset=64",
    "data.augment=false",
    "strategy.params.finetune_epochs=1",
    "tune.measure=false",
    LR_RANGE,
]


def test_a_space_without_weights_trains_its_dense_model_once_per_study(
    tmp_path, dense_trainings
) -> None:
    out = tmp_path / "tune"
    overrides = [*NO_WEIGHTS, "tune.trials=2"]
    report = run_tune(load_config(SPACE, overrides), out, progress=False)
    assert report is not None and [r["state"] for r in report.rows] == ["COMPLETE"] * 2
    assert len(dense_trainings) == 1 and dense_trainings[0].startswith(str(out / "dense"))
    (weights,) = (out / "dense").glob("*/model.safetensors")
    assert not (weights.parent / "checkpoints").exists()
    dense = [json.loads((out / "trials" / str(n) / "metrics.json").read_text())["dense"]
             for n in (0, 1)]  # fmt: skip
    assert dense[0] == dense[1]  # both trials started from the same dense model
    # a resume reuses it too
    overrides[-1] = "tune.trials=3"
    report = run_tune(load_config(SPACE, overrides), out, progress=False)
    assert report is not None and len(report.rows) == 3 and len(dense_trainings) == 1


def test_commands_sharing_an_out_folder_train_the_dense_model_once(
    tmp_path, dense_trainings
) -> None:
    config = load_config(SPACE, NO_WEIGHTS)
    models = [resolve(config).model for _ in range(2)]  # freshly initialized, one per command
    results: list[str | None] = [None, None]

    def command(i: int) -> None:  # two commands at once (flock excludes across threads too)
        found = study_dense(config, models[i], tmp_path / "dense", progress=False)
        results[i] = found.model.checkpoint

    threads = [threading.Thread(target=command, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(dense_trainings) == 1
    assert results[0] == results[1] and results[0] is not None and Path(results[0]).is_file()


def test_a_space_without_weights_or_dense_epochs_fails_before_compute(tmp_path, capsys) -> None:
    sets = ["--set", "train.dense_epochs=0", "--set", LR_RANGE]
    assert main(["tune", "--space", SPACE, "--out", str(tmp_path), "--no-tracking", *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.checkpoint: the model has no weights" in err
    assert not any(tmp_path.iterdir())  # refused before a study was made
