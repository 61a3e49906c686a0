"""Disk and permissions: atomic writes that follow the umask, and an output folder that cannot
take the files (read-only, a file, a full disk) stopped before any compute in one line."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

import automl_hiap as ah
from automl_hiap import atomic, model_files, search, trainer
from automl_hiap.atomic import WriteError, atomic_path, unwritable, write_json
from automl_hiap.cli import main
from automl_hiap.export_formats import export_to
from automl_hiap.subnet import random_subnet
from automl_hiap.tracking.pull import pull
from tests.conftest import LR_RANGE


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` made read-only: by its mode, and where root ignores modes, by the immutable
    attribute (skips where neither stops a write)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = False
    try:
        if unwritable(path) is None:  # root writes whatever the mode says
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            immutable = done.returncode == 0
            if unwritable(path) is None:
                pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def _no_compute(*args: object, **kwargs: object) -> None:
    raise AssertionError("the command started computing")


def _one_line_error(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("automl_hiap: error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)
    return err


def _search(out: Path, *args: str) -> list[str]:
    return ["search", "--space", "test_vit.yaml", "--out", str(out), "--no-progress", *args]


@pytest.fixture
def pruned(tiny) -> torch.nn.Module:
    spec, model, space = tiny
    return ah.slice_subnet(model, random_subnet(space, torch.Generator().manual_seed(3)), spec)


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, pruned, mask: int, mode: int) -> None:
    previous = os.umask(mask)
    try:
        folder = ah.save(pruned, tmp_path / "model")
        export_to(pruned, "safetensors", tmp_path / "one.safetensors")
        trainer.atomic_save({"step": torch.tensor(1)}, tmp_path / "checkpoints" / "dense.pt")
        pruned.subnet.save(tmp_path / "subnet.json")
        pull(folder, tmp_path / "pulled")
    finally:
        os.umask(previous)
    written = [
        folder / "arch.json",
        folder / "model.safetensors",
        tmp_path / "one.safetensors",
        tmp_path / "checkpoints" / "dense.pt",
        tmp_path / "subnet.json",
        tmp_path / "pulled" / "model.safetensors",
    ]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert modes == {name: oct(mode) for name in modes}
    assert not _litter(tmp_path)


def test_an_interrupted_write_leaves_the_old_file_and_no_litter(
    tmp_path: Path, pruned, monkeypatch
) -> None:
    folder = ah.save(pruned, tmp_path / "model")
    before = (folder / "model.safetensors").read_bytes()

    def half_then_fail(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # a kill: not wrapped, and nothing of the new file stays

    monkeypatch.setattr(model_files, "save_file", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ah.save(pruned, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert not _litter(tmp_path)

    checkpoint = tmp_path / "checkpoints" / "dense.pt"
    trainer.atomic_save({"step": torch.tensor(1)}, checkpoint)
    old = checkpoint.read_bytes()

    def no_space(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.torch, "save", no_space)
    with pytest.raises(WriteError) as caught:
        trainer.atomic_save({"step": torch.tensor(2)}, checkpoint)
    message = str(caught.value)
    assert "\n" not in message and str(checkpoint) in message and "no space left" in message
    assert checkpoint.read_bytes() == old and not _litter(tmp_path)


def test_a_writer_error_without_an_errno_on_a_full_disk_names_the_file(
    tmp_path: Path, monkeypatch
) -> None:
    """torch.save reports a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc:672] ...``; a disk that is then (nearly) full says what happened."""

    def torch_full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(trainer.torch, "save", torch_full)
    full = SimpleNamespace(free=4096)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: full)
    path = tmp_path / "checkpoints" / "search.pt"
    with pytest.raises(WriteError, match=r"search\.pt: cannot write it \(no space left"):
        trainer.atomic_save({}, path)
    assert not path.exists() and not _litter(tmp_path)

    def a_bug(obj, path):
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(trainer.torch, "save", a_bug)
    with pytest.raises(RuntimeError, match="cannot pickle"):  # not a disk problem: not hidden
        trainer.atomic_save({}, path)
    assert not _litter(tmp_path)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (root with tmpfs only; skips elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()[:100]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_fails_in_one_line_and_keeps_the_old_file(small_disk, pruned) -> None:
    pruned.head = torch.nn.Linear(512, 512)  # ~1 MiB of weights on a 1 MiB disk
    with pytest.raises(WriteError, match=r"model\.safetensors: cannot write it \(no space"):
        model_files.save(pruned, small_disk / "model")  # safetensors: SafetensorError
    assert not (small_disk / "model" / "model.safetensors").exists()
    checkpoint = small_disk / "checkpoints" / "dense.pt"
    trainer.atomic_save({"w": torch.zeros(8)}, checkpoint)
    old = checkpoint.read_bytes()
    with pytest.raises(WriteError, match=r"dense\.pt: cannot write it \(no space left"):
        trainer.atomic_save({"w": torch.zeros(512 * 1024)}, checkpoint)  # torch: RuntimeError
    assert checkpoint.read_bytes() == old and not _litter(small_disk)


# ------------------------------------------------------------------ --out checked first
def test_an_out_that_is_a_file_stops_search_tune_and_pull(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(search, "run_search", _no_compute)
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for out in (taken, taken / "below"):
        started = time.monotonic()
        assert main(_search(out, "--no-tracking")) == 2
        _one_line_error(capsys, f"--out {out}", "expected a folder, found a file")
        assert time.monotonic() - started < 5
    tune = ["tune", "--space", "test_vit.yaml", "--out", str(taken), "--set", LR_RANGE]
    assert main([*tune, "--no-tracking"]) == 2
    _one_line_error(capsys, f"--out {taken}", "found a file")
    assert main(["pull", "models:/any@champion", "--out", str(taken)]) == 2
    _one_line_error(capsys, f"--out {taken}", "found a file")


def test_a_read_only_out_stops_before_any_run_is_opened(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(search, "run_search", _no_compute)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        for out in (locked, locked / "run"):
            started = time.monotonic()
            assert main(_search(out, "--tracking-uri", uri)) == 2
            _one_line_error(capsys, f"--out {out}", f"cannot write in {locked}")
            assert time.monotonic() - started < 5
        tune = ["tune", "--space", "test_vit.yaml", "--out", str(locked / "t"), "--set", LR_RANGE]
        assert main([*tune, "--tracking-uri", uri]) == 2
        _one_line_error(capsys, "--out", f"cannot write in {locked}")
        assert main(["pull", str(tmp_path), "--out", str(locked / "p")]) == 2
        _one_line_error(capsys, "--out", f"cannot write in {locked}")
        assert not list(locked.iterdir())
    store = tmp_path / "store" / "mlflow.db"
    if store.exists():  # no run was opened, so none is left RUNNING
        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(experiments) == []


def test_a_full_disk_stops_the_search_before_any_compute(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(search, "run_search", _no_compute)
    full = SimpleNamespace(free=2**20)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: full)
    assert main(_search(tmp_path / "run", "--no-tracking")) == 2
    _one_line_error(capsys, "--out", "1.0 MiB free on its disk, it needs at least 16.0 MiB")
    assert not (tmp_path / "run").exists()


def test_the_space_check_counts_the_model(tmp_path: Path, monkeypatch) -> None:
    """run_search asks for room for a checkpoint and the export once the model is known."""
    from automl_hiap.config import load_config

    roomy = SimpleNamespace(free=40 * 2**20)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: roomy)
    monkeypatch.setattr(search, "BYTES_PER_PARAM", 2**20)  # a model that needs more than 40 MiB
    monkeypatch.setattr("automl_hiap.data.build_datasets", _no_compute)
    with pytest.raises(WriteError, match=r"40\.0 MiB free on its disk, it needs at least"):
        search.run_search(load_config("test_vit.yaml"), tmp_path / "run", progress=False)


def test_a_search_that_ran_out_of_space_resumes_to_the_same_bytes(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    fast = ["--no-tracking", "--no-measure", "--set", "data.train_subset=64"]
    assert main(_search(tmp_path / "clean", *fast)) == 0
    saves = []
    real_save = torch.save

    def full_on_the_second_checkpoint(obj, path):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(trainer.torch, "save", full_on_the_second_checkpoint)
    capsys.readouterr()
    assert main(_search(tmp_path / "full", *fast)) == 2
    _one_line_error(capsys, str(tmp_path / "full" / "checkpoints" / "dense.pt"), "no space left")
    monkeypatch.setattr(trainer.torch, "save", real_save)  # space freed
    assert main(_search(tmp_path / "full", *fast)) == 0
    for name in ("subnet.json", "model/arch.json", "model/model.safetensors"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    assert not _litter(tmp_path)


def test_write_json_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(ZeroDivisionError), atomic_path(path) as temporary:
        temporary.write_text('{"v": ')
        raise ZeroDivisionError
    assert path.read_text() == '{"v": 1}' and not _litter(tmp_path)
