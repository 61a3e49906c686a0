"""Strategies are found through the entry-point group; duplicates raise, broken plugins warn."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from automl_hiap import plugins
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
