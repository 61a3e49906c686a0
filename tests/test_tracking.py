"""MLflow tracking and registry: runs, nested study/trial runs, registered versions with tags and
aliases, pulling by alias in a fresh process, a real `mlflow server`, and a server that is down."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.exceptions import TrialPruned

import automl_hiap as ah
from automl_hiap import search, tracking
from automl_hiap.cli import main
from automl_hiap.config import load_config
from automl_hiap.cost import subnet_cost
from automl_hiap.outcome import ModelMetrics, SearchMetrics, SearchReport
from automl_hiap.space import SearchSpace
from automl_hiap.subnet import Subnet, random_subnet
from automl_hiap.tracking import Tracker, budget_alias, pyfunc, tracker, use_store
from automl_hiap.trainer import EpochEnd
from tests.conftest import LR_RANGE, UNREACHABLE
from tests.test_disk import _no_compute, _one_line_error, read_only


def _search(out: Path | str, *args: str) -> list[str]:
    return [
        "search", "--space", "test_vit.yaml", "--out", str(out), "--no-progress",
        "--set", "strategy.params.finetune_epochs=1", *args,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A fresh interpreter that refuses to unpickle anything pulls the model by alias, runs it eagerly
# and through mlflow.pyfunc, and reports which automl_hiap modules it needed.
PULL_SCRIPT = textwrap.dedent(
    """
    import pickle, sys

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class RefusingUnpickler(pickle.Unpickler):
        load = refuse

    pickle.load = pickle.loads = refuse
    pickle.Unpickler = RefusingUnpickler

    import mlflow, numpy as np, torch
    import automl_hiap

    uri, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.save(out + "/logits.npy", automl_hiap.load(uri)(images).numpy())
    np.save(out + "/served.npy", mlflow.pyfunc.load_model(uri).predict(images.numpy()))
    print(" ".join(sorted(m for m in sys.modules if m.startswith("automl_hiap"))))
    """
)


def _pull_in_fresh_process(uri: str, tracking_uri: str, scratch: Path, export: Path) -> None:
    """The pulled model's logits (eager and pyfunc) equal the search's own export's."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    threads = str(torch.get_num_threads())
    done = subprocess.run(
        [sys.executable, "-c", PULL_SCRIPT, uri, str(scratch), threads],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = done.stdout.split()
    assert "automl_hiap.model_files" in modules
    assert not {"automl_hiap.search", "automl_hiap.trainer", "automl_hiap.data"} & set(modules)

    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ah.load(export)(images).numpy()
    assert np.array_equal(np.load(scratch / "logits.npy"), expected)
    assert np.array_equal(np.load(scratch / "served.npy"), expected)


# ------------------------------------------------------------------ MLflow's default store
@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One search registered as `tiny` in MLflow's default store (./mlflow.db) of a fresh
    folder."""
    root = tmp_path_factory.mktemp("default_store")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI")
        assert main(_search("run", "--register", "tiny")) == 0
    return root, f"sqlite:///{root / 'mlflow.db'}"


def test_a_search_run_holds_config_epochs_results_and_artifacts(local_store) -> None:
    root, uri = local_store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("automl_hiap")
    assert experiment is not None and experiment.artifact_location.startswith(root.as_uri())
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    saved = json.loads((root / "run" / "mlflow_run.json").read_text())
    assert saved["run_id"] == run.info.run_id

    params = run.data.params
    assert params["strategy.name"] == "magnitude"
    assert params["strategy.params.finetune_epochs"] == "1"
    assert params["budget"] == "0.5" and params["model.name"] == "vit_tiny_patch16_224"
    assert not any(key.startswith("tracking") for key in params)

    history = client.get_metric_history(run.info.run_id, "dense/train_loss")
    assert sorted(m.step for m in history) == [1, 2]  # test_vit.yaml: train.dense_epochs=2
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert run.data.metrics["top1"] == pytest.approx(metrics["pruned"]["top1"])
    assert run.data.metrics["macs"] == metrics["pruned"]["macs"]
    assert run.data.metrics["params"] == metrics["pruned"]["params"]
    assert run.data.metrics["speedup"] == pytest.approx(metrics["speedup"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "structure.png", "subnet.json"} <= artifacts


def test_the_registered_version_carries_tags_and_aliases(local_store) -> None:
    root, uri = local_store
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("tiny", "champion")
    assert set(version.aliases) == {"champion", "macs-50"}
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    tags = version.tags
    assert tags["base_model"] == "vit_tiny_patch16_224" and tags["dataset"] == "synthetic"
    assert tags["strategy"] == "magnitude" and tags["budget"] == "0.5"
    assert float(tags["top1"]) == metrics["pruned"]["top1"]
    assert int(tags["macs"]) == metrics["pruned"]["macs"]
    assert int(tags["params"]) == metrics["pruned"]["params"]


def test_a_fresh_process_pulls_the_champion_with_identical_logits(
    local_store, tmp_path: Path
) -> None:
    root, uri = local_store
    export = root / "run" / "model"
    _pull_in_fresh_process("models:/tiny@champion", uri, tmp_path / "fresh", export)

    deploy = tmp_path / "deploy"
    assert main(["pull", "models:/tiny@champion", "--out", str(deploy), "--tracking-uri", uri]) == 0
    for name in ("arch.json", "model.safetensors"):
        assert (deploy / name).read_bytes() == (export / name).read_bytes()
    run_id = json.loads((root / "run" / "mlflow_run.json").read_text())["run_id"]
    from_run = ah.load(f"runs:/{run_id}/model", tracking_uri=uri)
    assert from_run.subnet == ah.Subnet.load(root / "run" / "subnet.json")


def test_logged_models_name_the_package_as_their_loader_module(local_store) -> None:
    """MLflow loads a model with `import_module(loader_module)._load_pyfunc(data)`: models
    logged before tracking became a package name `automl_hiap.tracking`, as new ones do."""
    _, uri = local_store
    with use_store(uri):
        info = mlflow.models.get_model_info("models:/tiny@champion")
    loader = info.flavors["python_function"]["loader_module"]
    assert loader == "automl_hiap.tracking"
    assert importlib.import_module(loader)._load_pyfunc is pyfunc._load_pyfunc


def test_the_package_re_exports_each_name_from_its_module() -> None:
    assert set(tracking._HOMES) == {*tracking.__all__, "_load_pyfunc"}
    for name in tracking._HOMES:
        value = getattr(tracking, name)
        home = importlib.import_module(f"automl_hiap.tracking.{tracking._HOMES[name]}")
        assert value is getattr(home, name), name
    assert set(tracking.__all__) <= set(dir(tracking))
    with pytest.raises(AttributeError):
        _ = tracking.no_such_name


def test_aliases_follow_the_latest_best_version(local_store) -> None:
    root, uri = local_store
    client = MlflowClient(uri)
    source = client.get_model_version_by_alias("tiny", "champion").source
    config = load_config("test_vit.yaml")
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    subnet = Subnet.load(root / "run" / "subnet.json")
    tracker = Tracker(uri)

    def register(top1: float, budget: str) -> str:
        changed = {**metrics, "budget": budget, "pruned": {**metrics["pruned"], "top1": top1}}
        report = SearchReport(root / "run", subnet, SearchMetrics.from_json(changed))
        return tracker.register(source, report, config, "aliases").version

    first = register(0.5, "0.5")
    register(0.4, "0.5")  # worse: takes nothing
    best = register(0.6, "0.25")  # better, another budget
    tied = register(0.6, "0.25")  # as good and newer: the latest best
    aliases = ("champion", "macs-50", "macs-25")
    holder = {a: client.get_model_version_by_alias("aliases", a).version for a in aliases}
    assert holder == {"champion": tied, "macs-50": first, "macs-25": tied} and best != tied


def test_budget_aliases_are_valid_alias_names() -> None:
    assert budget_alias(ah.parse_budget(0.5)) == "macs-50"
    assert budget_alias(ah.parse_budget(0.333)) == "macs-33p3"
    assert budget_alias(ah.parse_budget("2.3G")) == "macs-2p3G"


# ------------------------------------------------------------------ runs without a search
def test_study_and_trial_runs_nest_and_are_queryable(tmp_path: Path, tiny) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "study")
    config = load_config("test_vit.yaml")
    spec = ah.ModelSpec(config.model.name, dict(config.model.kwargs))
    with torch.device("meta"):
        model = spec.create()
    space = SearchSpace.from_model(model, config.space.units, config.space.constraints)
    candidates = [random_subnet(space, torch.Generator().manual_seed(s)) for s in range(4)]

    with tracker.study_run("study-1", {"trials": 3}) as study:
        for number in range(2):
            with tracker.trial_run(number, {"lambda_macro": 0.5 * (number + 1)}, config) as trial:
                for epoch in (1, 2):
                    metrics = {"train_loss": 1.0 / epoch + number, "val_top1": 0.5}
                    trial(EpochEnd("search", epoch, 2, metrics, candidates[2 * number + epoch - 1]))
                trial.log_metrics({"top1": 0.7 + number / 10})
    with (
        tracker.study_run("study-1", {"trials": 5}) as resumed,  # the same study, resumed
        pytest.raises(TrialPruned),
        tracker.trial_run(2, {"lambda_macro": 9.0}) as pruned,
    ):
        pruned(EpochEnd("search", 1, 2, {"train_loss": 3.0}, None))
        raise TrialPruned()
    assert resumed.id == study.id
    assert MlflowClient(uri).get_run(study.id).data.params["trials"] == "3"

    with use_store(uri):
        children = mlflow.search_runs(
            experiment_names=["study"],
            filter_string=f"tags.mlflow.parentRunId = '{study.id}'",
            order_by=["params.lambda_macro ASC"],
        )
        kind = "tags.`automl_hiap.kind` = 'study'"
        parents = mlflow.search_runs(experiment_names=["study"], filter_string=kind)
    assert list(parents["run_id"]) == [study.id]
    assert list(children["params.lambda_macro"]) == ["0.5", "1.0", "9.0"]
    assert list(children["status"]) == ["FINISHED", "FINISHED", "KILLED"]
    assert list(children["tags.automl_hiap.pruned"].fillna("")) == ["", "", "true"]
    assert list(children["metrics.top1"][:2]) == pytest.approx([0.7, 0.8])
    assert children["params.strategy.name"][0] == "magnitude"  # the trial's resolved config

    client = MlflowClient(uri)
    second = children["run_id"][1]
    losses = sorted(
        (m.step, m.value) for m in client.get_metric_history(second, "search/train_loss")
    )
    assert losses == [(1, 2.0), (2, 1.5)]
    macs = client.get_metric_history(second, "search/hardened_macs")
    assert sorted((m.step, m.value) for m in macs) == [
        (e, subnet_cost(space, candidates[2 + e - 1]).macs) for e in (1, 2)
    ]
    heads = client.get_metric_history(second, "search/kept_heads")
    assert {m.value for m in heads} == {
        sum(len(la.heads) for la in c.layers) for c in candidates[2:]
    }
    for epoch in (1, 2):
        name = f"candidates/search/epoch-{epoch:03d}.json"
        path = client.download_artifacts(second, name, str(tmp_path / "dl"))
        assert Subnet.load(path) == candidates[2 + epoch - 1]


def test_a_search_run_again_in_its_folder_continues_its_run(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = load_config("test_vit.yaml")
    with pytest.raises(RuntimeError), tracker.search_run(config, tmp_path / "out") as first:
        first.log_metrics({"dense/train_loss": 2.0}, step=1)
        raise RuntimeError("killed")
    assert tracker.client.get_run(first.id).info.status == "FAILED"
    with tracker.search_run(config, tmp_path / "out") as again:
        again.log_metrics({"dense/train_loss": 1.0}, step=2)
    assert again.id == first.id
    history = tracker.client.get_metric_history(first.id, "dense/train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert tracker.client.get_run(first.id).info.status == "FINISHED"
    with tracker.search_run(config, tmp_path / "out") as third:
        pass
    assert third.id != first.id  # a finished search is not reopened


class Killed(BaseException):
    """A kill -9: the process stops where it is, and no handler reaches the store after it."""


# every MlflowClient call that changes the store, and the marker file's writes
MUTATING = (
    "create_run", "update_run", "set_terminated", "log_batch", "log_text", "log_dict", "set_tag",
    "log_artifact", "log_artifacts", "create_logged_model", "finalize_logged_model",
    "set_logged_model_tags", "log_outputs", "create_registered_model", "create_model_version",
    "set_registered_model_alias",
)  # fmt: skip


@contextmanager
def killed_at(monkeypatch: pytest.MonkeyPatch, name: str, occurrence: int) -> Iterator[None]:
    """Kill the process (raise :class:`Killed`) instead of the ``occurrence``-th call of
    ``name`` (a store change, the marker's write, or the summary after the run ended), and at
    every store change after it."""
    made: list[str] = []
    dead = False

    def fatal(called: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal dead
            made.append(called)
            dead = dead or (called == name and made.count(called) == occurrence)
            if dead:
                raise Killed(f"{name} #{occurrence}")
            return original(*args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        for change in MUTATING:
            patch.setattr(MlflowClient, change, fatal(change, getattr(MlflowClient, change)))
        patch.setattr(tracker, "write_json", fatal("write_json", tracker.write_json))
        patch.setattr(search, "summary", fatal("summary", search.summary))
        yield
    assert dead, f"no {name} #{occurrence} among {made}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a finished search leaves in its folder (made directly: no training)."""
    from tests.conftest import tiny_spec

    folder = tmp_path_factory.mktemp("finished")
    spec = tiny_spec()
    torch.manual_seed(0)
    model = spec.create().eval()
    space = SearchSpace.from_model(model)
    subnet = random_subnet(space, torch.Generator().manual_seed(1))
    ah.save(ah.slice_subnet(model, subnet, spec), folder / "model")
    subnet.save(folder / "subnet.json")
    cost = subnet_cost(space, subnet)
    SearchMetrics(
        strategy="magnitude",
        params_config={},
        budget="0.5",
        target_macs=None,
        dense=ModelMetrics(0.5, 0.5, 2 * cost.macs, 2 * cost.params, None),
        pruned=ModelMetrics(0.4, 0.4, cost.macs, cost.params, None),
        macs_ratio=0.5,
        speedup=None,
        measure_batch=None,
        search_seconds=1.0,
    ).write(folder / "metrics.json")
    return folder


def _fake_search(finished: Path) -> Any:
    def run_search(config: Any, out: str | Path, *args: Any, **kwargs: Any) -> SearchReport:
        shutil.copytree(finished, out, dirs_exist_ok=True)
        out = Path(out)
        metrics = SearchMetrics.read(out / "metrics.json")
        return SearchReport(out, Subnet.load(out / "subnet.json"), metrics)

    return run_search


def _search_command(uri: str, out: Path, name: str, *extra: str) -> list[str]:
    where = ["--tracking-uri", uri, "--set", f"tracking.experiment={name}", "--register", name]
    return [*_search(out, *where), *extra]


KILL_POINTS = [  # (call, occurrence) in the order an uninterrupted search makes them
    ("write_json", 1),  # the marker with the run's key, before the run exists
    ("create_run", 1),
    ("write_json", 2),  # the marker with the run's id
    ("log_batch", 3),  # the final metrics
    ("create_logged_model", 1),
    ("finalize_logged_model", 1),  # the model's files are logged, it is not READY yet
    ("log_batch", 6),  # the model's URI as a tag
    ("create_model_version", 1),
    ("log_batch", 7),  # the tag saying everything is logged
    ("set_terminated", 1),  # FINISHED
    ("summary", 1),  # after the run ended
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the tests below (each uses its own experiment and model name)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates its tables once
    return uri


@pytest.mark.parametrize(("name", "occurrence"), KILL_POINTS)
def test_a_search_killed_anywhere_is_one_run_with_one_model_and_version(
    tmp_path: Path, monkeypatch, finished, store: str, name: str, occurrence: int
) -> None:
    monkeypatch.setattr(search, "run_search", _fake_search(finished))
    out, model = tmp_path / "run", f"killed-{name}-{occurrence}"
    with killed_at(monkeypatch, name, occurrence), pytest.raises(Killed):
        main(_search_command(store, out, model))
    assert main(_search_command(store, out, model)) == 0  # run again
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(model).experiment_id
    [run] = client.search_runs([experiment])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["automl_hiap.logged"] == "true"
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_id
    assert len(client.get_metric_history(run_id, "top1")) == 1
    models = client.search_logged_models([experiment], f"source_run_id = '{run_id}'")
    assert sum(m.status == "READY" for m in models) == 1
    [version] = client.search_model_versions(f"name = '{model}'")
    assert version.run_id == run_id
    assert client.get_model_version_by_alias(model, "champion").version == version.version


def test_a_finished_search_run_again_is_recognized_unless_its_params_changed(
    tmp_path: Path, monkeypatch, finished, store: str, capsys
) -> None:
    monkeypatch.setattr(search, "run_search", _fake_search(finished))
    uri = store
    out = tmp_path / "run"
    assert main(_search_command(uri, out, "again")) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("again").experiment_id
    [first] = client.search_runs([experiment])
    capsys.readouterr()
    assert main(_search_command(uri, out, "again")) == 0
    assert f"MLflow run {first.info.run_id} at {uri} (logged in full" in capsys.readouterr().out
    [same] = client.search_runs([experiment])
    assert same.info.end_time == first.info.end_time and same.data.metrics == first.data.metrics
    assert main(_search_command(uri, out, "again", "--set", "train.seed=1")) == 0
    assert len(client.search_runs([experiment])) == 2  # another search in the same folder


# ------------------------------------------------------------------ servers
def test_a_down_server_stops_the_search_before_any_compute(tmp_path, monkeypatch, capsys) -> None:
    def no_compute(*args, **kwargs):
        raise AssertionError("the search started")

    monkeypatch.setattr(search, "run_search", no_compute)
    started = time.monotonic()
    dead = f"http://127.0.0.1:{_free_port()}"
    assert main(_search(tmp_path / "run", "--tracking-uri", dead)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"tracking server {dead} is unreachable" in err, err
    assert "offline_fallback" in err and not (tmp_path / "run").exists()
    assert time.monotonic() - started < 60


def _tune(out: Path, *args: str) -> list[str]:
    return ["tune", "--space", "test_vit.yaml", "--out", str(out), "--set", LR_RANGE, *args]


@pytest.mark.parametrize("server", ["unreachable", "mute"])
@pytest.mark.parametrize("command", ["search", "tune"])
def test_a_silent_server_stops_search_and_tune_in_one_line(
    tmp_path: Path, monkeypatch, capsys, mute_server: str, server: str, command: str
) -> None:
    import automl_hiap.tune

    monkeypatch.setattr(search, "run_search", _no_compute)
    monkeypatch.setattr(automl_hiap.tune, "run_tune", _no_compute)
    uri = UNREACHABLE if server == "unreachable" else mute_server
    started = time.monotonic()
    args = (_search if command == "search" else _tune)(tmp_path / "out", "--tracking-uri", uri)
    assert main(args) == 2
    assert time.monotonic() - started <= 15
    _one_line_error(capsys, f"tracking server {uri} is unreachable")
    assert not (tmp_path / "out").exists()


def test_a_read_only_sqlite_store_stops_the_search_in_one_line(
    tmp_path: Path, monkeypatch, capsys, store: str
) -> None:
    monkeypatch.setattr(search, "run_search", _no_compute)
    locked = tmp_path / "locked"
    locked.mkdir()
    existing = Path(store.removeprefix("sqlite:///"))
    for database, made_read_only in ((locked / "mlflow.db", locked), (existing, existing)):
        with read_only(made_read_only):
            started = time.monotonic()
            assert main(_search(tmp_path / "out", "--tracking-uri", f"sqlite:///{database}")) == 2
            assert time.monotonic() - started <= 15
        _one_line_error(capsys, f"sqlite:///{database}: cannot write {made_read_only}")
        assert not (tmp_path / "out").exists()


def test_with_the_fallback_allowed_a_down_server_logs_locally(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{_free_port()}"
    allowed = ["--set", "tracking.offline_fallback=true", "--set", "train.dense_epochs=1"]
    assert main(_search(out, "--tracking-uri", dead, *allowed)) == 0
    local = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    assert f"logging to the local store {local} instead" in capsys.readouterr().err
    client = MlflowClient(local)
    [run] = client.search_runs([client.get_experiment_by_name("automl_hiap").experiment_id])
    assert run.info.status == "FINISHED" and "top1" in run.data.metrics
    assert run.data.tags["automl_hiap.intended_tracking_uri"] == dead


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts in tmp)."""
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = root / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers share the group, stopped together
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                tail = log.read_text()[-500:]
                pytest.skip(f"mlflow server exited with {server.returncode}: {tail}")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("mlflow server did not answer /health within 180 s")
                time.sleep(0.5)
        yield uri, root
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_against_a_real_server_a_search_registers_and_a_fresh_process_pulls_it(
    mlflow_server, tmp_path: Path
) -> None:
    uri, root = mlflow_server
    out = tmp_path / "run"
    args = ["--tracking-uri", uri, "--register", "served", "--set", "train.dense_epochs=1"]
    assert main(_search(out, *args)) == 0
    with use_store(uri):
        runs = mlflow.search_runs(experiment_names=["automl_hiap"])
    assert list(runs["status"]) == ["FINISHED"] and runs["metrics.top1"][0] > 0
    version = MlflowClient(uri).get_model_version_by_alias("served", "champion")
    assert version.tags["base_model"] == "vit_tiny_patch16_224"
    assert any((root / "artifacts").rglob("model.safetensors"))  # stored by the server
    _pull_in_fresh_process("models:/served@champion", uri, tmp_path / "fresh", out / "model")


def test_use_store_restores_the_uri_and_its_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///outer.db")
    with use_store("sqlite:///inner.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///inner.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///outer.db"
    assert mlflow.get_tracking_uri() == "sqlite:///outer.db"
