"""HiAP's mechanisms: gate sampling, schedule, cost split, feasibility, gradients, search."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import automl_hiap as ah
from automl_hiap import importance
from automl_hiap.config import load_config
from automl_hiap.data import build_datasets
from automl_hiap.selection import select_to_budget
from automl_hiap.space import ALL_UNITS, BlockKeep, Constraints, Unit
from automl_hiap.strategies.hiap import (
    HiAPParams,
    HiAPSearch,
    HiAPStrategy,
    cost_split,
    feasibility_penalty,
)
from automl_hiap.strategies.hiap_gates import Gates, gumbel_sigmoid, noise_scale, temperature
from automl_hiap.strategies.hiap_repair import gate_ranking, repair_scores
from automl_hiap.strategy import SearchContext
from automl_hiap.subnet import Subnet
from automl_hiap.trainer import Trainer

from .conftest import tiny_spec

HIAP_UNITS = [Unit.ATTN_BLOCK, Unit.HEAD, Unit.FFN_BLOCK, Unit.V_DIM, Unit.NEURON]


def small_space(units=ALL_UNITS) -> tuple[torch.nn.Module, ah.SearchSpace]:
    torch.manual_seed(0)
    model = tiny_spec(depth=2, embed_dim=48, num_heads=3).create()
    space = ah.SearchSpace.from_model(
        model, units, constraints=Constraints(min_heads=1, min_head_dims=4, round_to=2)
    )
    return model, space


@pytest.mark.parametrize("tau", [2.0, 1.0, 0.5, 0.1])
def test_probability_of_an_open_gate_is_sigmoid_of_its_logit_at_every_temperature(
    tau: float,
) -> None:
    logits = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    draws = 40_000
    generator = torch.Generator().manual_seed(0)
    samples = gumbel_sigmoid(logits.expand(draws, -1), tau, generator)
    empirical = (samples > 0.5).float().mean(0)
    # 4 standard errors of a Bernoulli mean over 40k draws is <= 0.01
    assert torch.allclose(empirical, torch.sigmoid(logits), atol=0.01)


def test_annealed_noise_keeps_a_gate_with_probability_sigmoid_of_logit_over_scale() -> None:
    logits = torch.tensor([-2.0, -0.5, 0.3, 1.0, 3.0])
    generator = torch.Generator().manual_seed(0)
    samples = gumbel_sigmoid(logits.expand(40_000, -1), 1.0, generator, scale=0.4)
    assert torch.allclose((samples > 0.5).float().mean(0), torch.sigmoid(logits / 0.4), atol=0.01)
    deterministic = gumbel_sigmoid(logits.expand(100, -1), 1.0, generator, scale=0.0)
    assert torch.equal(deterministic > 0.5, (logits > 0).expand(100, -1))


def test_noise_decays_linearly_to_zero_at_noise_end() -> None:
    assert noise_scale(0, 101, 0.5) == 1.0
    assert noise_scale(25, 101, 0.5) == pytest.approx(0.5)
    assert noise_scale(50, 101, 0.5) == 0.0
    assert noise_scale(100, 101, 0.5) == 0.0
    assert noise_scale(100, 101, 2.0) == pytest.approx(0.5)  # > 1: noise to the end


def test_repair_ranks_every_unit_hardening_dropped_below_every_unit_it_kept() -> None:
    _, space = small_space(HIAP_UNITS)
    gates = Gates(space, init=0.0)
    with torch.no_grad():
        for logits in gates.logits.values():
            logits.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(3))
    hard, probs = gates.hardened(), gates.probabilities()
    scores = repair_scores(space, hard, gate_ranking(space, probs))
    n, d = space.tokens, space.layers[0].embed_dim
    # per MAC saved, a neuron's score is its rank key: h + p (micro under macro)
    keys = torch.stack([s.neuron / (2 * n * d) for s in scores])
    kept = (
        torch.stack([h.effective(sh).neuron for h, sh in zip(hard, space.layers, strict=True)]) > 0
    )
    assert kept.any() and (~kept).any()
    assert keys[kept].min() > keys[~kept].max()


def test_a_taylor_repair_of_an_undecided_search_is_the_taylor_selection() -> None:
    """Gates that decided nothing (all open) leave the whole budget to the repair: with
    ``repair: taylor`` the subnet is the core's Taylor selection of the same weights."""
    model, space = small_space(HIAP_UNITS)
    target = 0.5 * ah.dense_cost(space).macs
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    batches = list(zip(images.split(8), torch.arange(32).remainder(10).split(8), strict=True))
    hooks = HiAPSearch(model, space, HiAPParams(), target, seed=0, device="cpu")  # type: ignore[arg-type]
    try:
        model.eval()
        repaired, changed = hooks.harden(batches)
        gates_only, _ = hooks.harden(repair="gates")
    finally:
        hooks.close()
    scores = importance.importance(model, space, "taylor", batches, normalize="none")
    expected = select_to_budget(space, scores, target, strict=False)
    assert changed > 0
    assert repaired == expected
    assert gates_only != expected  # the criterion decided, not the gates


def test_settling_at_noise_end_trains_the_repaired_subnet_for_the_rest_of_the_search() -> None:
    """With ``repair_at: noise_end`` the repair runs when the noise reaches 0 and the gates are
    set to its subnet, so the hardened gates from then on are the subnet to export."""
    model, space = small_space(HIAP_UNITS)
    target = 0.5 * ah.dense_cost(space).macs
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    batches = list(zip(images.split(8), torch.arange(32).remainder(10).split(8), strict=True))
    params = HiAPParams(repair_at="noise_end", noise_end=0.5)
    hooks = HiAPSearch(model, space, params, target, 0, "cpu", batches=batches)  # type: ignore[arg-type]
    try:
        model.eval()
        expected, _ = hooks.harden()  # undecided gates: the whole budget is the repair's
        hooks.on_step_start(3, 10)  # noise 1 − 3/4.5 > 0: nothing settles yet
        assert hooks.settled is None
        hooks.on_step_start(5, 10)  # noise 0
        settled = Subnet.from_keep(space, hooks.gates.hardened())
        _, repaired = hooks.harden()
    finally:
        hooks.close()
    assert hooks.settled is not None and hooks.settled > 0
    assert settled == expected
    assert repaired < hooks.settled  # at the end only the cost's last fit to the target


def test_temperature_anneals_exponentially_between_its_end_points() -> None:
    assert temperature(0, 100, 2.0, 0.5) == pytest.approx(2.0)
    assert temperature(99, 100, 2.0, 0.5) == pytest.approx(0.5)
    assert temperature(33, 100, 2.0, 0.5) == pytest.approx(2.0 * 0.25 ** (33 / 99))
    middle = temperature(49.5, 100, 2.0, 0.5)  # type: ignore[arg-type]
    assert middle == pytest.approx(1.0)  # geometric, not linear (1.25)


def test_expected_cost_at_saturated_logits_equals_the_cost_of_the_hardened_subnet() -> None:
    _, space = small_space()
    gates = Gates(space, init=0.0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for logits in gates.logits.values():
            logits.copy_(torch.where(torch.rand(logits.shape, generator=generator) < 0.3, -30, 30))
    with torch.no_grad():
        macro, micro = cost_split(space, gates.probabilities())
    subnet = ah.Subnet.from_keep(space, gates.hardened())
    exact = ah.subnet_cost(space, subnet).macs - space.fixed_macs
    assert float(macro + micro) == pytest.approx(exact, rel=1e-6)
    assert float(ah.expected_macs(space, gates.probabilities())) == pytest.approx(
        exact + space.fixed_macs, rel=1e-6
    )


def test_macro_cost_is_what_stays_when_every_micro_unit_is_closed() -> None:
    _, space = small_space(HIAP_UNITS)
    dense = space.dense_keep()
    macro, micro = cost_split(space, dense)
    shape, n = space.layers[0], space.tokens
    per_head_qk = 2 * n * shape.embed_dim * shape.head_dim + n * n * shape.head_dim  # C1 − V rows
    assert float(macro) == space.depth * shape.num_heads * per_head_qk
    total = float(ah.expected_macs(space, dense)) - space.fixed_macs
    assert float(macro + micro) == pytest.approx(total)


def test_closing_a_macro_gate_removes_its_micro_units_cost_and_output() -> None:
    model, space = small_space(HIAP_UNITS)
    model.eval()
    keeps = [BlockKeep().filled(s) for s in space.layers]
    x = torch.randn(2, 3, 16, 16)

    def run(keeps: list[BlockKeep]) -> tuple[float, torch.Tensor]:
        with torch.no_grad(), ah.Masks(model, space, keeps):
            return float(sum(cost_split(space, keeps))), model(x)

    keeps[0].head[1] = 0.0
    cost_closed, out_closed = run(keeps)
    keeps[0].v[1] = torch.rand(space.layers[0].head_dim)  # micro gates under the closed head
    cost_other, out_other = run(keeps)
    assert cost_closed == pytest.approx(cost_other)
    assert torch.allclose(out_closed, out_other)
    keeps[0].ffn.fill_(0.0)
    cost_no_ffn, out_no_ffn = run(keeps)
    keeps[0].neuron.uniform_()
    assert run(keeps)[0] == pytest.approx(cost_no_ffn)
    assert torch.allclose(run(keeps)[1], out_no_ffn)
    assert cost_no_ffn < cost_other


def test_feasibility_penalty_is_zero_when_satisfied_and_positive_when_not() -> None:
    _, space = small_space()
    keeps = [BlockKeep().filled(s) for s in space.layers]
    assert float(feasibility_penalty(space, keeps)) == 0.0
    keeps[0].head.zero_()  # no head left in a kept branch
    assert float(feasibility_penalty(space, keeps)) > 0.0
    keeps[0].attn.zero_()  # ...but a removed branch needs no head
    assert float(feasibility_penalty(space, keeps)) == 0.0
    keeps[1].v[0, 1:] = 0.0  # 1 v dim left in a kept head, 4 needed
    assert float(feasibility_penalty(space, keeps)) > 0.0
    keeps[1].v[0, :4] = 1.0
    assert float(feasibility_penalty(space, keeps)) == 0.0
    keeps[1].neuron.zero_()  # no neuron in a kept FFN block
    assert float(feasibility_penalty(space, keeps)) > 0.0
    keeps[1].ffn.zero_()
    assert float(feasibility_penalty(space, keeps)) == 0.0


def test_gradients_reach_every_logit_family() -> None:
    model, space = small_space()
    hooks = HiAPSearch(model, space, HiAPParams(gate_init=0.5), None, seed=0, device="cpu")  # type: ignore[arg-type]
    model.train()
    hooks.on_step_start(0, 10)
    logits = model(torch.randn(4, 3, 16, 16))
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4)) + hooks.extra_loss(
        logits, torch.arange(4)
    )
    loss.backward()
    hooks.close()
    assert set(hooks.gates.logits) == {"attn", "head", "ffn", "qk", "v", "neuron"} | {
        "attn_in",
        "mlp_in",
    }
    for name, param in hooks.gates.logits.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@functools.cache
def tiny_data():
    return build_datasets(load_config("test_vit.yaml").data, seed=0)


@functools.cache
def pretrained_tiny() -> dict[str, torch.Tensor]:
    config = load_config("test_vit.yaml")
    torch.manual_seed(0)
    model = tiny_spec().create()
    data = tiny_data()
    Trainer(config.train, data.train, device="cpu").fit(model, 4, phase="dense")
    return {k: v.clone() for k, v in model.state_dict().items()}


def search(target_ratio: float | None, **params: float) -> tuple[SearchContext, ah.SearchResult]:
    config = load_config("test_vit.yaml")
    model = tiny_spec().create()
    model.load_state_dict(pretrained_tiny())
    space = ah.SearchSpace.from_model(model, config.space.units, config.space.constraints)
    data = tiny_data()
    trainer = Trainer(config.train, data.train, data.val, device="cpu")
    target = None if target_ratio is None else target_ratio * ah.dense_cost(space).macs
    ctx = SearchContext(model, tiny_spec(), space, target, seed=0, trainer=trainer)
    settings = {"epochs": 8, "gate_lr": 0.1, "gate_init": 2.0} | params
    return ctx, HiAPStrategy(HiAPParams(**settings)).search(ctx)  # type: ignore[arg-type]


def test_a_higher_lambda_prunes_more() -> None:
    macs = []
    for lam in (0.05, 20.0):
        ctx, result = search(None, lambda_macro=lam)
        macs.append(ah.subnet_cost(ctx.space, result.subnet).macs)
        assert result.metrics["lambda_macro"] == lam  # λ-only mode: λ is not adapted
    assert macs[1] < 0.8 * macs[0]


def test_micro_ratio_weighs_the_micro_cost() -> None:
    neurons = []
    for ratio in (0.0, 1.0):
        _, result = search(None, lambda_macro=4.0, micro_ratio=ratio)
        neurons.append(result.metrics["kept_neurons"])
        assert result.metrics["lambda_micro"] == 4.0 * ratio
    assert neurons[1] < 0.8 * neurons[0]  # no micro cost: neurons go only with their branch


@pytest.mark.parametrize("ratio", [0.7, 0.5])
def test_budget_mode_lands_within_three_percent_of_the_target(ratio: float) -> None:
    ctx, result = search(ratio)
    assert ctx.target is not None
    macs = ah.subnet_cost(ctx.space, result.subnet).macs
    assert abs(macs / ctx.target - 1) <= 0.03
    assert result.subnet.problems(ctx.space) == []
    # the controller itself converged: the hardened gates were on target before any repair,
    # which only mended round_to and the last percent (under 8 % of the 264 searched units)
    hardened = result.metrics["hardened_macs"] * ah.dense_cost(ctx.space).macs
    assert abs(hardened / ctx.target - 1) <= 0.035
    assert result.metrics["repaired_units"] <= 20


def test_exported_model_equals_the_hardened_gated_model() -> None:
    ctx, result = search(None, lambda_macro=4.0, tolerance=0.5)
    model, space = ctx.model, ctx.space
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad(), ah.Masks(model, space, result.subnet.to_keep(space)):
        gated = model(x)
    exported = ah.slice_subnet(model, result.subnet, ctx.spec).eval()
    with torch.no_grad():
        assert (exported(x) - gated).abs().max() <= 1e-4
    assert ah.subnet_cost(space, result.subnet).macs < ah.dense_cost(space).macs


def test_hooks_state_round_trips_for_exact_resume() -> None:
    model, space = small_space()
    params = HiAPParams()
    first = HiAPSearch(model, space, params, 1e6, seed=0, device="cpu")  # type: ignore[arg-type]
    with torch.no_grad():
        first.gates.logits["v"].uniform_(-1, 1)
    first.integral, first.multiplier, first.step = 2.5, 3.0, 17
    state = first.state_dict()
    first.close()
    second = HiAPSearch(model, space, params, 1e6, seed=0, device="cpu")  # type: ignore[arg-type]
    second.load_state_dict(state)
    second.close()
    assert torch.equal(second.gates.logits["v"], first.gates.logits["v"])
    assert (second.integral, second.multiplier, second.step) == (2.5, 3.0, 17)
    assert math.isclose(second.hardened_macs(), first.hardened_macs())


def test_the_controller_integral_stays_bounded_when_the_target_cannot_be_met() -> None:
    model, space = small_space()
    params = HiAPParams(max_multiplier=50.0)
    hooks = HiAPSearch(model, space, params, 1.0, seed=0, device="cpu")  # 1 MAC: unreachable
    try:
        for step in range(2000):
            hooks.on_step_end(step)
    finally:
        hooks.close()
    assert hooks.integral == pytest.approx(50.0)
    assert math.isfinite(hooks.multiplier)


def test_the_task_loss_alone_reaches_every_logit_family() -> None:
    """The gates act in the forward pass: cross-entropy by itself moves every family (the cost
    loss would reach them even if the gates were cut off from the forward)."""
    model, space = small_space()
    hooks = HiAPSearch(model, space, HiAPParams(gate_init=3.0), None, seed=0, device="cpu")  # type: ignore[arg-type]
    model.train()
    for step in range(4):  # a few draws: one may close a whole branch (its units then get none)
        hooks.on_step_start(step, 10)
        logits = model(torch.randn(4, 3, 16, 16))
        torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    hooks.close()
    for name, param in hooks.gates.logits.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_a_planted_useless_head_and_ffn_branch_are_closed_first() -> None:
    """Layer 0's head 0 and layer 1's FFN branch are made to add nothing; the task gradient
    protects the other units, so these end with the lowest logits of their kind."""
    config = load_config("test_vit.yaml")
    model = tiny_spec().create()
    model.load_state_dict(pretrained_tiny())
    with torch.no_grad():
        attn, mlp = model.blocks[0].attn, model.blocks[1].mlp
        attn.proj.weight[:, : attn.head_dim].zero_()  # head 0's v dims feed nothing
        mlp.fc2.weight.zero_()
        mlp.fc2.bias.zero_()
    space = ah.SearchSpace.from_model(model, config.space.units, config.space.constraints)
    data = tiny_data()
    trainer = Trainer(config.train, data.train, data.val, device="cpu")
    params = HiAPParams(epochs=6, gate_lr=0.1, gate_init=2.0)
    target = 0.7 * ah.dense_cost(space).macs
    hooks = HiAPSearch(model, space, params, target, seed=0, device="cpu")
    try:
        trainer.fit(model, params.epochs, phase="hiap_search", hooks=hooks)
    finally:
        hooks.close()
    gates = hooks.gates.logits
    assert gates["ffn"][1] < gates["ffn"][0]
    assert gates["head"][0, 0] < gates["head"][0, 1]
