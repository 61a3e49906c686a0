"""Every registered strategy passes the packaged conformance suite (``automl_hiap.testing``):
declarations, requirement errors, subnet validates and meets the budget, seed-deterministic,
masked == exported, and the core's fine-tune phase on the sliced model. Each strategy brings
its own fast ``smoke_params``; one whose optional package is missing is skipped with its
install command."""

from __future__ import annotations

import pytest

from automl_hiap import plugins, testing
from automl_hiap.errors import UserError
from automl_hiap.strategy import SearchContext, SearchResult, Strategy, StrategyParams
from automl_hiap.subnet import Subnet

CASES = [
    (name, check) for name, cls in plugins.available().items() for check in testing.checks_for(cls)
]


@pytest.mark.parametrize(("name", "check"), CASES)
def test_conformance(name: str, check: str) -> None:
    testing.run_check(plugins.available()[name], check)


def test_every_strategy_with_a_fine_tune_phase_is_checked_on_it() -> None:
    tuned = {name for name, check in CASES if check == "fine_tuned_model_is_the_exported_subnet"}
    assert tuned >= {"magnitude", "sero", "gohsp", "vtp", "nni"}


class Dense(Strategy[StrategyParams]):
    """Keeps everything: ignores the budget, which the suite must catch."""

    name = "dense_for_tests"
    description = "a test double that ignores the budget"

    def search(self, context: SearchContext) -> SearchResult:
        dense = Subnet.from_keep(context.space, context.space.dense_keep())
        return SearchResult(dense, context.model)


def test_a_strategy_that_ignores_the_budget_fails_with_a_clear_message() -> None:
    with pytest.raises(AssertionError, match=r"'dense_for_tests': its subnet has \d+ MACs, above"):
        testing.check_strategy(Dense)


def test_requirements_are_checked_before_search() -> None:
    class Never(Dense):
        name = "never_for_tests"
        needs_trainer = True

        def search(self, context: SearchContext) -> SearchResult:
            raise AssertionError("search ran although a requirement is missing")

    with pytest.raises(UserError, match=r"'never_for_tests' trains; it needs training data"):
        Never().run(testing.tiny_context(trainer=False))
