"""Strategies are found through the entry-point group; duplicates raise, broken plugins warn."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from automl_hiap import registry
from automl_hiap.cli import main
from automl_hiap.errors import UserError
from automl_hiap.strategy import SearchContext, SearchResult, Strategy


class Dummy(Strategy):
    name = "dummy_for_tests"
    description = "a test double"

    def search(self, context: SearchContext) -> SearchResult:  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    registry.discover()
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.setattr(registry, "_discovered", True)


def test_builtin_strategies_come_from_the_entry_point_group() -> None:
    registry.discover(force=True)
    names = {ep.name for ep in registry.entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert "magnitude" in names
    assert set(registry.available()) >= names


def test_duplicate_name_raises() -> None:
    registry.register(Dummy)
    registry.register(Dummy)  # the same class again is harmless

    class Impostor(Dummy):
        pass

    with pytest.raises(registry.DuplicateStrategyError, match="dummy_for_tests"):
        registry.register(Impostor)


def test_broken_plugin_warns_and_the_rest_still_load(monkeypatch) -> None:
    broken = EntryPoint("broken", "no_such_module_anywhere:Thing", registry.ENTRY_POINT_GROUP)
    misnamed = EntryPoint("other_name", f"{__name__}:Dummy", registry.ENTRY_POINT_GROUP)
    good = EntryPoint("dummy_for_tests", f"{__name__}:Dummy", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken, misnamed, good])
    registry._registry.clear()
    with pytest.warns(RuntimeWarning) as warned:
        registry.discover(force=True)
    messages = " ".join(str(w.message) for w in warned)
    assert "'broken'" in messages and "failed to load" in messages
    assert "'other_name'" in messages and "must match" in messages
    assert list(registry.available()) == ["dummy_for_tests"]


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"unknown strategy 'nope' \(available: .*magnitude"):
        registry.get("nope")


def test_cli_lists_strategies_with_descriptions(capsys) -> None:
    assert main(["strategies"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("magnitude"))
    assert "baseline" in line
