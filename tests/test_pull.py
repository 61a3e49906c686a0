"""`automl_hiap.load` / `pull` on local sources (registry URIs: tests/test_tracking.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.errors import UserError
from automl_hiap.export_formats import export_to
from automl_hiap.subnet import random_subnet


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
