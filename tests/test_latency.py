"""Latency budgets and honest speed figures: parsing, the latency model, its refusals, the
selection trading per millisecond, HiAP's differentiable expected latency, and measurement
with repeats and spreads. Tables are synthetic, so the logic is tested deterministically."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from automl_hiap.budget import Latency, parse_budget
from automl_hiap.cost_model import MACS, total_cost
from automl_hiap.errors import UserError
from automl_hiap.latency import LatencyModel, latency_target, load_table
from automl_hiap.latency_table import BlockTable, DeviceKey, LatencyTable, profile
from automl_hiap.measure import Measurement, Spread, measure
from automl_hiap.selection import cheapest, select_to_budget
from automl_hiap.space import BlockKeep, Constraints, SearchSpace, Unit
from automl_hiap.subnet import Subnet
from automl_hiap.testing import TINY
from strategies.hiap import cost_split

UNITS = [Unit.ATTN_BLOCK, Unit.HEAD, Unit.FFN_BLOCK, Unit.V_DIM, Unit.NEURON]
FFN = (0, 24, 48, 72, 96)
SLOW_FFN_MS = (0.0, 5.0, 2.0, 3.0, 4.0)  # 24 neurons are slower than 48 (a bad kernel tile)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    with torch.device("meta"):
        model = TINY.create()
    return SearchSpace.from_model(model, UNITS, Constraints(round_to=2, min_head_dims=2))


def synthetic_table(space: SearchSpace, ffn_ms: tuple[float, ...] = SLOW_FFN_MS) -> LatencyTable:
    shape = space.layers[0]
    heads, v = (0, 1, 2, 3), (2, 8, 16)
    attn = tuple(((tuple(h * (0.5 + 0.05 * b) for b in v)),) for h in heads)
    block = BlockTable(
        shape=(shape.embed_dim, shape.num_heads, shape.head_dim, shape.mlp_hidden),
        heads=heads,
        qk=(shape.head_dim,),
        v=v,
        attn_ms=attn,
        group_ms=0.1,
        ffn=FFN,
        ffn_ms=ffn_ms,
    )
    key = DeviceKey.here(Latency(), space.tokens)
    return LatencyTable(key, 1.0, (block,), 20.0, (19.0, 21.0), None)


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "value", "absolute", "latency"),
    [
        (0.5, 0.5, False, False),
        ("1", 1.0, False, False),
        ("87.1M", 87.1e6, True, False),
        ("87100000 MACs", 87.1e6, True, False),
        ("2.3G", 2.3e9, True, False),
        ("8ms", 8e-3, True, True),
        ("450us", 450e-6, True, True),
        ("1.5s", 1.5, True, True),
    ],
)
def test_budgets_parse(text: Any, value: float, absolute: bool, latency: bool) -> None:
    budget = parse_budget(text)
    assert budget.value == pytest.approx(value) and budget.absolute is absolute
    assert budget.is_latency is latency


@pytest.mark.parametrize("bare", [1.5, "1.5", 87100000, "87100000"])
def test_a_bare_number_above_one_is_refused_with_the_expected_forms(bare: Any) -> None:
    with pytest.raises(ValueError, match=r"a fraction ≤ 1, or an absolute value like 2\.3G"):
        parse_budget(bare)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0ms", -0.5, True])
def test_non_finite_or_non_positive_budgets_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_budget(bad)


def test_the_yaml_form_names_batch_threads_dtype_and_table() -> None:
    budget = parse_budget(
        {"latency": "8ms", "batch": 64, "threads": 2, "dtype": "bfloat16", "table": "t.json"}
    )
    assert budget.value == pytest.approx(8e-3) and str(budget) == "8ms"
    assert budget.latency == Latency(batch=64, threads=2, dtype="bfloat16", table="t.json")
    for bad, match in [
        ({"latency": "8ms", "batsh": 1}, "unknown key 'batsh'"),
        ({"batch": 1}, "needs latency"),
        ({"latency": 0.5}, "expected a time"),
        ({"latency": "8ms", "threads": 0}, "threads: expected a positive integer"),
        ({"latency": "8ms", "dtype": "int8"}, "dtype: expected one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_budget(bad)


# ---------------------------------------------------------------- the latency model
def test_the_table_round_trips_and_predicts_additively(space: SearchSpace, tmp_path) -> None:
    table = synthetic_table(space)
    table.write(tmp_path / "t.json")
    assert LatencyTable.read(tmp_path / "t.json") == table
    model = LatencyModel(table, space)
    # dense: fixed 1 ms + 3 blocks x (3 heads at v 16: 3 x 1.3 ms + FFN 96: 4 ms)
    assert model.predict(space, Subnet.dense(space)) == pytest.approx((1.0 + 3 * 7.9) / 1e3)
    # 0/1 keep values through the differentiable path agree with the exact counts
    keeps = Subnet.dense(space).to_keep(space)
    assert float(total_cost(model, space, keeps)) == pytest.approx((1.0 + 3 * 7.9) / 1e3)


def test_a_table_from_another_machine_setting_is_refused_naming_it(
    space: SearchSpace, tmp_path
) -> None:
    table = synthetic_table(space)
    other = LatencyTable(
        DeviceKey(**{**table.key.__dict__, "threads": table.key.threads + 3}),
        *(table.fixed_ms, table.blocks, table.dense_ms, table.dense_iqr_ms, None),
    )
    other.write(tmp_path / "edge.json")
    settings = Latency(table=str(tmp_path / "edge.json"))
    with pytest.raises(UserError, match=r"edge\.json: threads: measured with \d+, this run uses"):
        load_table(settings, space, None, 16)
    table.write(tmp_path / "same.json")
    assert load_table(Latency(table=str(tmp_path / "same.json")), space, None, 16) == table
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(UserError, match=r"junk\.json: cannot read it"):
        load_table(Latency(table=str(tmp_path / "junk.json")), space, None, 16)
    older = {**table.to_json(), "format": 2}  # one in-model factor from the dense model alone
    (tmp_path / "old.json").write_text(json.dumps(older))
    with pytest.raises(UserError, match=r"old\.json: .*format 2, expected 3.*profile again"):
        load_table(Latency(table=str(tmp_path / "old.json")), space, None, 16)


def test_a_target_outside_the_reachable_range_is_refused_with_the_range(
    space: SearchSpace,
) -> None:
    table = synthetic_table(space)
    dense = LatencyModel(table, space).predict(space, Subnet.dense(space))
    for wrong in (dense * 1.5, 1e-4):
        with pytest.raises(UserError, match=r"outside what this space reaches .* to 24\.7ms"):
            latency_target(parse_budget(f"{wrong * 1e3}ms"), space, table)
    cost, target = latency_target(parse_budget(f"{dense * 0.7 * 1e3}ms"), space, table)
    assert target == pytest.approx(dense * 0.7) and cost.unit == "s"


def test_the_selection_trades_per_millisecond_and_avoids_a_slow_width() -> None:
    with torch.device("meta"):
        model = TINY.create()
    widths_only = SearchSpace.from_model(model, [Unit.NEURON], Constraints(round_to=2))
    scores = [BlockKeep(neuron=torch.linspace(0.01, 1, 96)) for _ in range(widths_only.depth)]
    latency = LatencyModel(synthetic_table(widths_only), widths_only)
    dense = latency.predict(widths_only, Subnet.dense(widths_only))
    subnet = select_to_budget(widths_only, scores, 0.8 * dense, cost=latency)
    assert latency.predict(widths_only, subnet) <= 0.8 * dense
    kept = [len(layer.neurons) for layer in subnet.layers]
    assert all(w >= 48 for w in kept), kept  # nothing narrower than 48 is faster
    # the same scores to a similar cut of MACs: the MACs greedy does go below 48
    dense_macs = float(total_cost(MACS, widths_only, widths_only.dense_keep()))
    by_macs = select_to_budget(widths_only, scores, 0.7 * dense_macs)
    assert any(len(layer.neurons) < 48 for layer in by_macs.layers)


def test_a_flat_stretch_of_the_table_does_not_keep_a_branch_alive() -> None:
    """A measured table is noisy: 48 and 72 neurons timed alike. The greedy must step over the
    flat stretch, not stop at 72 for good and never reach the branch's removal."""
    with torch.device("meta"):
        model = TINY.create()
    units = [Unit.FFN_BLOCK, Unit.NEURON]
    widths = SearchSpace.from_model(model, units, Constraints(round_to=2))
    latency = LatencyModel(synthetic_table(widths, (0.0, 3.0, 3.0, 3.0, 4.0)), widths)
    fastest = cheapest(widths, latency)
    assert all(not layer.has_mlp for layer in fastest.layers)  # every FFN branch removed
    scores = [
        BlockKeep(neuron=torch.linspace(0.01, 1, 96), ffn=torch.tensor(50.0))
        for _ in range(widths.depth)
    ]
    dense = latency.predict(widths, Subnet.dense(widths))
    subnet = select_to_budget(widths, scores, 0.6 * dense, cost=latency)  # needs FFNs gone
    assert latency.predict(widths, subnet) <= 0.6 * dense


def test_hiap_expected_latency_is_differentiable_in_the_keep_probabilities(
    space: SearchSpace,
) -> None:
    fast_ffn = (0.0, 1.0, 2.0, 3.0, 4.0)  # linear in width: d ms / d neuron = 1/24
    latency = LatencyModel(synthetic_table(space, fast_ffn), space)
    neuron = torch.full((space.depth, 96), 0.7, requires_grad=True)
    head = torch.full((space.depth, 3), 0.9, requires_grad=True)
    keeps = [BlockKeep(head=head[i], neuron=neuron[i]) for i in range(space.depth)]
    macro, micro = cost_split(space, keeps, latency)
    (macro + micro).backward()
    assert neuron.grad is not None and head.grad is not None
    assert torch.allclose(neuron.grad, torch.full_like(neuron, 1 / 24 / 1e3))
    assert (head.grad > 0).all()  # fewer heads: less time
    expected = float(total_cost(latency, space, keeps))
    assert expected == pytest.approx(float(macro + micro) + 1e-3)  # + the fixed part


# ---------------------------------------------------------------- measurement
def test_a_spread_is_the_median_and_interquartile_range() -> None:
    spread = Spread.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (spread.median, spread.low, spread.high, spread.repeats) == (3.0, 2.0, 4.0, 5)
    assert Spread.of([2.0]).low == 2.0


def test_a_speedup_is_paired_repeat_by_repeat() -> None:
    # the machine slows down 3x in the middle: paired ratios stay 2, unpaired medians do not
    timed = Measurement({"dense": (2.0, 6.0, 2.0), "pruned": (1.0, 3.0, 1.0)}, 4, None)
    assert timed.speedup("pruned", "dense") == Spread(2.0, 2.0, 2.0, 3)
    assert timed.images_per_s("pruned").median == pytest.approx(4.0)
    assert timed.latency_ms("dense").median == pytest.approx(2000.0)


def test_measure_interleaves_repeats_after_warm_up() -> None:
    calls: list[str] = []

    class Recorder(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name, self.linear = name, torch.nn.Linear(1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.name)
            return x

    timed = measure({"a": Recorder("a"), "b": Recorder("b")}, 2, 1, repeats=4, min_seconds=0.0)
    assert {len(v) for v in timed.seconds.values()} == {4}
    timed_part = calls[6:]  # after 2 warm-ups and 1 calibration pass each
    assert timed_part == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating order


def test_a_profile_of_a_tiny_vit_fills_its_grid(space: SearchSpace) -> None:
    torch.manual_seed(0)
    model = TINY.create()
    table = profile(model, space, Latency(batch=1, threads=1), 16, 2, 1, min_seconds=0.0)
    block = table.blocks[0]
    assert block.heads == (0, 1, 2, 3) and block.ffn[0] == 0 and len(block.ffn) > 2
    assert all(ms > 0 for plane in block.attn_ms[1:] for row in plane for ms in row)
    assert table.fixed_ms > 0 and table.dense_ms > table.fixed_ms
    assert table.key.threads == 1 and table.key.tokens == space.tokens
    # the branches, timed alone, are scaled by a factor fitted on three whole models (least
    # squares through the origin): the dense one and a narrow and a wide random subnet
    (dense_alone, dense_ms), *subnets = table.calibration
    assert dense_ms == table.dense_ms and len(subnets) == 2
    assert all(alone > 0 and alone != dense_alone for alone, _ in subnets)  # other shapes
    fit = table.calibration
    slope = sum(a * (m - table.fixed_ms) for a, m in fit) / sum(a * a for a, _ in fit)
    assert table.in_model == pytest.approx(slope)
    dense = LatencyModel(table, space).predict(space, Subnet.dense(space))
    assert dense * 1e3 == pytest.approx(table.fixed_ms + slope * dense_alone)
    assert LatencyTable.from_json(table.to_json()) == table


def test_registry_tags_carry_the_spread_of_the_speedup() -> None:
    from automl_hiap.tracking.registry import budget_alias, version_tags

    metrics = SimpleNamespace(
        strategy="magnitude",
        budget="8ms",
        pruned=SimpleNamespace(top1=0.5, macs=10, params=5),
        macs_ratio=0.5,
        speedup=1.3,
        speedup_iqr=[1.25, 1.36],
        measure_repeats=7,
        load_average=3.0,
        latency=None,
    )
    config = SimpleNamespace(
        model=SimpleNamespace(name="m"), data=SimpleNamespace(format="synthetic", root=None)
    )
    tags = version_tags(SimpleNamespace(metrics=metrics), config)  # type: ignore[arg-type]
    assert tags["speedup"] == "1.3000" and tags["speedup_iqr"] == "1.2500-1.3600"
    assert tags["speedup_repeats"] == "7"
    assert budget_alias(parse_budget("8ms")) == "latency-8ms"


def test_the_summary_says_when_the_machine_drifted_since_profiling() -> None:
    from automl_hiap.outcome import SearchMetrics

    record = {
        "batch": 1,
        "threads": 1,
        "target_ms": 5.0,
        "predicted_ms": 4.9,
        "measured_ms": 6.3,
        "measured_iqr_ms": [6.2, 6.4],
        "dense_predicted_ms": 10.0,
        "dense_measured_ms": 13.0,
    }
    first, note = SearchMetrics.latency_lines_of(record)
    assert "dense in the same run: predicted 10 ms, measured 13 ms" in first
    assert "ran 30% slower than the latency table predicts" in note and "profile" in note
    steady = SearchMetrics.latency_lines_of({**record, "dense_measured_ms": 10.4})
    assert len(steady) == 1  # within 10 %: no note
