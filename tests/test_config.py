"""Search-space files: bundled spaces load; each bad input is one line: file, key, expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from automl_hiap.budget import parse_budget
from automl_hiap.cli import main
from automl_hiap.config import bundled_spaces, load_config, resolve_space_path
from automl_hiap.errors import ConfigError
from automl_hiap.space import Unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


GOOD = """
model: {name: vit_tiny_patch16_224, kwargs: {img_size: 16, patch_size: 4, depth: 2}}
data: {format: synthetic, image_size: 16}
"""


def test_bundled_spaces_resolve_by_bare_name_and_load() -> None:
    assert {
        "deit_tiny.yaml",
        "deit_small.yaml",
        "deit_base.yaml",
        "vit_tiny6_cifar10.yaml",
        "test_vit.yaml",
    } <= set(bundled_spaces())
    config = load_config("deit_small.yaml")
    assert config.model.name == "deit_small_patch16_224"
    assert config.space.constraints.round_to == 8
    assert Unit.NEURON in config.space.units


def test_cifar_space_finds_the_reference_checkpoint(shared_data: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOML_HIAP_DATA", str(shared_data))
    config = load_config("vit_tiny6_cifar10.yaml")
    assert Path(config.model.checkpoint).is_file()
    assert config.data.image_size == 32


def test_a_path_wins_over_a_bundled_name(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "test_vit.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    assert resolve_space_path("test_vit.yaml") == Path("test_vit.yaml")
    assert load_config("test_vit.yaml").model.kwargs == {
        "img_size": 16,
        "patch_size": 4,
        "depth": 2,
    }


def test_overrides_set_nested_keys_with_yaml_types(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, GOOD),
        ["train.batch_size=7", "space.units=[head, neuron]", "budget=2.3G", "model.kwargs.depth=3"],
    )
    assert config.train.batch_size == 7
    assert config.space.units == (Unit.HEAD, Unit.NEURON)
    assert config.budget is not None and config.budget.absolute and config.budget.value == 2.3e9
    assert config.model.kwargs["depth"] == 3


def test_configs_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(ValidationError, match="frozen"):
        config.train.lr = 1.0  # type: ignore[misc]


def test_env_expansion_with_defaults(tmp_path: Path, monkeypatch) -> None:
    checkpoint = tmp_path / "w.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setenv("MY_WEIGHTS", str(tmp_path))
    config = load_config(
        write(tmp_path, GOOD),
        ["model.checkpoint=${MY_WEIGHTS}/w.safetensors", "data.root=${NOT_SET_ANYWHERE:-/data/x}"],
    )
    assert config.model.checkpoint == str(checkpoint)
    assert config.data.root == "/data/x"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (
            GOOD + "extra: 1\n",
            [],
            r"space\.yaml: extra: unknown key \(expected one of: model, data",
        ),
        (GOOD, ["train.batch_size=many"], r"train\.batch_size: .*integer.*got 'many'"),
        (
            GOOD,
            ["space.constraints.min_neuron_fraction=1.5"],
            r"min_neuron_fraction: .*less than or equal to 1",
        ),
        (
            GOOD,
            ["model.checkpoint=/nowhere/w.safetensors"],
            r"model\.checkpoint: expected an existing checkpoint file, got '/nowhere/w\.safet",
        ),
        (
            GOOD,
            ["model.name=not_a_vit"],
            r"model\.name: expected a timm model name, got unknown model 'not_a_vit'",
        ),
        (GOOD, ["space.units=[head, heads]"], r"space\.units\.1: .*'head'"),
        (GOOD, ["budget=-1"], r"budget: .*positive"),
        ("model: {name: [unclosed\n", [], r"space\.yaml: line \d+: malformed YAML"),
        ("- a\n- b\n", [], r"expected a mapping at the top level"),
        ("data: {format: synthetic}\n", [], r"model: missing required key"),
    ],
)
def test_bad_input_gives_one_clear_line(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write(tmp_path, text), overrides)
    assert str(info.value).count("\n") == 0
    assert str(tmp_path / "space.yaml") in str(info.value)


def test_cli_prints_one_error_line_without_traceback(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, GOOD)
    assert main(["inspect", "--space", str(path), "--set", "model.checkpoint=/missing.pt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("automl_hiap: error: ") and "model.checkpoint" in err


@pytest.mark.parametrize(
    ("text", "value", "absolute"),
    [
        ("0.5", 0.5, False),
        ("2.3G", 2.3e9, True),
        ("87.1M", 87.1e6, True),
        ("450000000 MACs", 4.5e8, True),
        ("1", 1.0, False),
    ],
)
def test_budget_parsing(text: str, value: float, absolute: bool) -> None:
    budget = parse_budget(float(text) if text[-1].isdigit() else text)
    assert budget.absolute is absolute and budget.value == pytest.approx(value)


def test_budget_larger_than_dense_is_rejected() -> None:
    with pytest.raises(ValueError, match="larger than the dense model"):
        parse_budget("5G").target_macs(4.6e9)
    assert parse_budget(0.5).target_macs(4e9) == 2e9
