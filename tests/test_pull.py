"""`automl_hiap.load` / `pull` on local sources, also with MLflow unimportable (registry URIs:
tests/test_tracking.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.errors import UserError
from automl_hiap.export_formats import export_to
from automl_hiap.subnet import random_subnet
from tests.conftest import UNREACHABLE
from tests.test_disk import _one_line_error


@pytest.fixture
def saved(tmp_path: Path, tiny) -> tuple[Path, torch.nn.Module]:
    spec, model, space = tiny
    pruned = ah.slice_subnet(model, random_subnet(space, torch.Generator().manual_seed(5)), spec)
    return ah.save(pruned.eval(), tmp_path / "search" / "model"), pruned.eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        return torch.equal(a(images), b(images))


def test_load_takes_an_export_a_search_folder_or_one_file(tmp_path: Path, saved) -> None:
    folder, pruned = saved
    export_to(pruned, "safetensors", tmp_path / "one.safetensors")
    for source in (folder, folder.parent, str(folder), tmp_path / "one.safetensors"):
        model = ah.load(source)
        assert model.subnet == pruned.subnet and _same(model, pruned), source


def test_pull_copies_the_two_files(tmp_path: Path, saved, capsys) -> None:
    folder, _ = saved
    assert main(["pull", str(folder.parent), "--out", str(tmp_path / "deploy")]) == 0
    for name in ("arch.json", "model.safetensors"):
        assert (tmp_path / "deploy" / name).read_bytes() == (folder / name).read_bytes()


def test_bad_sources_are_one_line_errors(tmp_path: Path, saved) -> None:
    _, pruned = saved
    with pytest.raises(UserError, match="no such file or folder, and not an MLflow URI"):
        ah.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no arch\.json in it"):
        ah.load(tmp_path / "empty")
    ah.save(pruned, tmp_path / "search" / "other")
    with pytest.raises(UserError, match="several exported models"):
        ah.load(tmp_path / "search")


@pytest.mark.parametrize("server", ["unreachable", "mute"])
def test_pull_from_a_silent_server_fails_in_one_line(
    tmp_path: Path, capsys, mute_server: str, server: str
) -> None:
    uri = UNREACHABLE if server == "unreachable" else mute_server
    out = tmp_path / "deploy"
    started = time.monotonic()
    assert main(["pull", "models:/tiny@champion", "--out", str(out), "--tracking-uri", uri]) == 2
    assert time.monotonic() - started <= 15
    _one_line_error(capsys, f"models:/tiny@champion: tracking server {uri} is unreachable")
    assert not out.exists()


# A fresh interpreter in which any import of mlflow raises (and is recorded, in case something
# swallows the error) loads a folder and a one-file export, exports a folder from the CLI, and
# asks for a missing path; none of that may import MLflow or, for a local source, the tracking
# package at all.
NO_MLFLOW_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    attempts = []

    class NoMlflow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow" or name.startswith("mlflow."):
                attempts.append(name)
                raise ImportError(f"{name}: blocked by the test")
            return None

    sys.meta_path.insert(0, NoMlflow())

    import numpy as np, torch
    import automl_hiap
    from automl_hiap.cli import main
    from automl_hiap.errors import UserError

    folder, one_file, out = sys.argv[1:4]
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.save(out + "/folder.npy", automl_hiap.load(folder)(images).numpy())
        np.save(out + "/file.npy", automl_hiap.load(one_file)(images).numpy())
    tracking = sorted(m for m in sys.modules if m.startswith("automl_hiap.tracking"))
    assert not tracking, f"a local load imported {tracking}"

    export = ["export", folder, "--format", "safetensors", "--out", out + "/cli.safetensors"]
    assert main(export) == 0
    try:
        automl_hiap.load(out + "/missing")
    except UserError as exc:
        assert "not an MLflow URI" in str(exc), exc
    else:
        raise AssertionError("a missing path loaded")
    loaded = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
    assert not attempts and not loaded, (attempts, loaded)
    print("mlflow-free")
    """
)


def test_local_sources_load_without_mlflow(tmp_path: Path, saved) -> None:
    folder, pruned = saved
    one_file = tmp_path / "one.safetensors"
    export_to(pruned, "safetensors", one_file)
    done = subprocess.run(
        [sys.executable, "-c", NO_MLFLOW_SCRIPT, str(folder), str(one_file), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "mlflow-free" in done.stdout, done.stderr[-3000:]
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pruned(images).numpy()
    for name in ("folder.npy", "file.npy"):
        assert np.array_equal(np.load(tmp_path / name), expected), name
    assert ah.load(tmp_path / "cli.safetensors").subnet == pruned.subnet
