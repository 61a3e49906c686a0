"""The NNI baselines: the adapter maps NNI's row masks to the right units, the repair only
rounds NNI's decision, the real pruners run (when nni is installed), and without nni the
strategy is listed as unavailable with its install command."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import automl_hiap as ah
from automl_hiap import plugins
from automl_hiap.cli import main
from automl_hiap.errors import UserError
from automl_hiap.space import Constraints
from automl_hiap.strategies.nni_pruners import INSTALL, NNIStrategy, masks_to_keep, repair
from automl_hiap.strategy import SearchContext

from .conftest import tiny_spec


def tiny_space(units: list[ah.Unit] | None = None, round_to: int = 1) -> ah.SearchSpace:
    model = tiny_spec(depth=2, embed_dim=32, num_heads=2).create()
    return ah.SearchSpace.from_model(model, units or list(ah.Unit), Constraints(round_to=round_to))


def row_mask(rows: int, columns: int, dropped: list[int]) -> torch.Tensor:
    mask = torch.ones(rows, columns)
    mask[dropped] = 0
    return mask


def test_adapter_maps_qkv_and_fc1_rows_to_units() -> None:
    space = tiny_space()  # 2 heads x 16 dims, 64 neurons, width 32
    masks = {
        # q row of (head 0, dim 3), k row of (head 1, dim 5), v row of (head 1, dim 0)
        "blocks.0.attn.qkv": {"weight": row_mask(96, 32, [3, 32 + 16 + 5, 64 + 16 + 0])},
        "blocks.1.mlp.fc1": {"weight": row_mask(64, 32, [7, 8])},
    }
    first, second = masks_to_keep(space, masks)
    assert first.qk is not None and first.v is not None and first.neuron is not None
    # a q/k dim needs both its q and its k row
    assert first.qk[0, 3] == 0 and first.qk[1, 5] == 0 and first.qk.sum() == 32 - 2
    assert first.v[1, 0] == 0 and first.v.sum() == 32 - 1
    assert first.neuron.all()  # blocks.0.mlp.fc1 not masked: every neuron kept
    assert second.neuron is not None and second.neuron[[7, 8]].sum() == 0
    assert second.neuron.sum() == 62 and second.qk is not None and second.qk.all()
    # a family the space does not search is kept whole, whatever NNI masked
    only_neurons = masks_to_keep(tiny_space([ah.Unit.NEURON]), masks)
    assert only_neurons[0].qk is None and only_neurons[0].v is None


def test_repair_removes_nni_pruned_units_first_and_rounds() -> None:
    space = tiny_space(round_to=4)
    masks = {"blocks.0.mlp.fc1": {"weight": row_mask(64, 32, list(range(0, 64, 2)))}}
    keeps = masks_to_keep(space, masks)
    pruned_macs = float(ah.expected_macs(space, keeps))
    subnet = repair(space, keeps, pruned_macs + 1.0)
    assert subnet.problems(space) == []
    neurons = subnet.layers[0].neurons
    assert len(neurons) % 4 == 0 and all(n % 2 == 1 for n in neurons)  # only NNI's survivors
    assert ah.subnet_cost(space, subnet).macs <= pruned_macs + 1.0


@pytest.mark.skipif(importlib.util.find_spec("nni") is None, reason=f"nni absent: {INSTALL}")
def test_real_l1_pruner_removes_the_smallest_rows_within_the_budget() -> None:
    torch.manual_seed(0)
    spec = tiny_spec(depth=2, embed_dim=32, num_heads=2)
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model, [ah.Unit.NEURON])
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[:10] *= 1e-3  # ten rows with tiny L1 norms
    target = 0.9 * ah.dense_cost(space).macs
    result = NNIStrategy().search(SearchContext(model, spec, space, target))
    kept = set(result.subnet.layers[1].neurons)
    assert not kept & set(range(10))
    macs = ah.subnet_cost(space, result.subnet).macs
    assert 0.97 * target <= macs <= target
    assert 0 < result.metrics["nni_sparse_ratio"] < 1


def test_without_nni_the_strategy_is_listed_with_its_install_command(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        plugins.importlib.util, "find_spec", lambda name: None if name == "nni" else real(name)
    )
    assert main(["strategies"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("nni "))
    assert f"(needs: {INSTALL})" in line
    with pytest.raises(UserError, match=r"'nni' needs an optional package: pip install"):
        plugins.get("nni")
