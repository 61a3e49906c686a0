"""The command line: `spaces` and `inspect`."""

from __future__ import annotations

import subprocess
import sys

from automl_hiap.cli import main


def test_spaces_lists_bundled_files(capsys) -> None:
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert "deit_small.yaml" in out and "test_vit.yaml" in out


def test_inspect_prints_dense_cost_units_and_layers(capsys) -> None:
    assert main(["inspect", "--space", "deit_small.yaml"]) == 0
    out = capsys.readouterr().out
    assert "4.599G MACs" in out and "22.05 M params" in out
    assert out.count("6 x 64") == 12
    neuron_line = next(line for line in out.splitlines() if line.startswith("neuron"))
    assert "18432" in neuron_line and "60.6%" in neuron_line


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "automl_hiap.cli", "inspect", "--space", "test_vit.yaml"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "vit_tiny_patch16_224" in result.stdout
