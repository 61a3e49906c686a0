"""Strategies are found through the entry-point group; duplicates raise, broken plugins warn."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from automl_hiap import plugins, testing
from automl_hiap.cli import main
from automl_hiap.errors import UserError
from automl_hiap.strategy import SearchContext, SearchResult, Strategy


class Dummy(Strategy):
    name = "dummy_for_tests"
    description = "a test double"

    def search(self, context: SearchContext) -> SearchResult:  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(autouse=True)
def clean_plugins(monkeypatch):
    plugins.discover()
    monkeypatch.setattr(plugins, "_strategies", dict(plugins._strategies))
    monkeypatch.setattr(plugins, "_discovered", True)


def test_builtin_strategies_come_from_the_entry_point_group() -> None:
    plugins.discover(force=True)
    names = {ep.name for ep in plugins.entry_points(group=plugins.ENTRY_POINT_GROUP)}
    assert "magnitude" in names
    assert set(plugins.available()) >= names


def test_duplicate_name_raises() -> None:
    plugins.add(Dummy)
    plugins.add(Dummy)  # the same class again is harmless

    class Impostor(Dummy):
        pass

    with pytest.raises(plugins.DuplicateStrategyError, match="dummy_for_tests"):
        plugins.add(Impostor)


def test_broken_plugin_warns_and_the_rest_still_load(monkeypatch) -> None:
    broken = EntryPoint("broken", "no_such_module_anywhere:Thing", plugins.ENTRY_POINT_GROUP)
    misnamed = EntryPoint("other_name", f"{__name__}:Dummy", plugins.ENTRY_POINT_GROUP)
    good = EntryPoint("dummy_for_tests", f"{__name__}:Dummy", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [broken, misnamed, good])
    plugins._strategies.clear()
    with pytest.warns(RuntimeWarning) as warned:
        plugins.discover(force=True)
    messages = " ".join(str(w.message) for w in warned)
    assert "'broken'" in messages and "failed to load" in messages
    assert "'other_name'" in messages and "must match" in messages
    assert list(plugins.available()) == ["dummy_for_tests"]


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"unknown strategy 'nope' \(available: .*magnitude"):
        plugins.get("nope")


def test_cli_lists_strategies_with_descriptions(capsys) -> None:
    assert main(["strategies"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("magnitude"))
    assert "baseline" in line


PLUGIN = "automl_hiap_example_plugin"
PLUGIN_SOURCE = """
    \"\"\"A strategy that lives outside automl_hiap: seeded random unit scores, greedy to the
    budget, with the core's fine-tune phase.\"\"\"

    from typing import Annotated

    import torch
    from pydantic import Field

    from automl_hiap.selection import select_to_budget
    from automl_hiap.space import Unit
    from automl_hiap.strategy import FineTune, SearchContext, SearchResult, Strategy, StrategyParams


    class RandomParams(StrategyParams):
        finetune_epochs: Annotated[int, Field(ge=0)] = 0
        finetune_lr: Annotated[float, Field(gt=0)] | None = None


    class RandomStrategy(Strategy[RandomParams]):
        name = "random_plugin"
        description = "example plugin: random unit scores, greedy to the budget"
        requires_units = (Unit.V_DIM, Unit.NEURON)
        fine_tune = FineTune(phase="random_finetune")

        def search(self, context: SearchContext) -> SearchResult:
            generator = torch.Generator().manual_seed(context.seed)
            scores = [
                keep.map(lambda t: torch.rand(t.shape, generator=generator, dtype=torch.float64))
                for keep in context.space.dense_keep()
            ]
            subnet = select_to_budget(context.space, scores, self.target(context))
            return SearchResult(subnet=subnet, model=context.model)
"""


def test_a_plugin_registered_through_the_entry_point_group_passes_the_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module and its dist-info outside the package, found by entry-point discovery, and
    checked by the packaged conformance suite with one call."""
    (tmp_path / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = tmp_path / f"{PLUGIN}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{plugins.ENTRY_POINT_GROUP}]\nrandom_plugin = {PLUGIN}:RandomStrategy\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugins.discover(force=True)
        cls = plugins.get("random_plugin")
        assert cls.__module__ == PLUGIN and cls.Params.__name__ == "RandomParams"
        assert "magnitude" in plugins.available()  # the built-ins still load beside it
        assert "fine_tuned_model_is_the_exported_subnet" in testing.checks_for(cls)
        testing.check_strategy(cls)
    finally:
        sys.modules.pop(PLUGIN, None)
        testing.clear_cache()
