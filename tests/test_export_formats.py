"""`automl_hiap export`: ONNX, TorchScript and one-file safetensors match the eager model, and a
mismatching export is refused before anything is written."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import automl_hiap as ah
from automl_hiap import export_formats
from automl_hiap.cli import main
from automl_hiap.errors import UserError
from automl_hiap.subnet import random_subnet

RUNNERS = {
    "onnx": export_formats._read_onnx,
    "torchscript": export_formats._read_torchscript,
    "safetensors": ah.load,
}


@pytest.fixture
def pruned(tiny) -> torch.nn.Module:
    spec, model, space = tiny
    subnet = random_subnet(space, torch.Generator().manual_seed(5))
    heads = [h for layer in subnet.layers for h in layer.heads]
    assert len({(len(h.qk), len(h.v)) for h in heads}) > 1  # uneven head widths
    assert any(not layer.neurons for layer in subnet.layers)  # a removed FFN branch
    return ah.slice_subnet(model, subnet, spec).eval()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_matches_the_eager_model(tmp_path: Path, pruned: torch.nn.Module, fmt: str) -> None:
    out = tmp_path / f"pruned{export_formats.FORMATS[fmt]}"
    diff = export_formats.export_to(pruned, fmt, out)
    assert out.is_file() and 0.0 <= diff <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left

    run = RUNNERS[fmt](out)
    images = torch.randn(5, 3, 16, 16)  # a batch size neither the trace nor the check used
    with torch.no_grad():
        got, expected = run(images), pruned(images)
    assert got.shape == expected.shape == (5, 10)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=0)


def test_cli_export_writes_beside_the_model(tmp_path: Path, pruned, capsys) -> None:
    ah.save(pruned, tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--format", "torchscript"]) == 0
    assert (tmp_path / "model" / "exports" / "model.pt").is_file()
    assert "torchscript" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore")  # the stand-in writer's tracer warnings
def test_a_mismatching_export_is_refused_and_not_written(
    tmp_path: Path, pruned, monkeypatch
) -> None:
    def wrong_writer(model, example, path) -> None:  # exports slightly different weights
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.head.bias.add_(1e-3)
        traced = torch.jit.trace(other, example)
        torch.jit.save(traced, str(path))

    monkeypatch.setitem(export_formats.WRITERS, "torchscript", wrong_writer)
    out = tmp_path / "model.pt"
    with pytest.raises(UserError, match=r"differ from the eager model's by 0\.001"):
        export_formats.export_to(pruned, "torchscript", out)
    assert list(tmp_path.iterdir()) == []


def test_a_plain_safetensors_file_is_not_a_model(tmp_path: Path, pruned) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="no automl_hiap architecture in its metadata"):
        ah.load(path)
