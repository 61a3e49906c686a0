"""HiAP: hierarchical auto-pruning with Gumbel-Sigmoid gates and an analytical MACs loss.

Li, Durrant, Markovic, Leontidis, "Hierarchical Auto-Pruning (HiAP)", arXiv 2603.12222
(2026); our reading of it, the equations we implement and the defaults are in
docs/strategies.md. Every searched unit of the space gets a learnable gate
logit α: macro gates (attention branch, head, FFN branch) and micro gates (v dims, FFN neurons,
and optionally q/k dims and input columns). Gates are sampled with Gumbel-Sigmoid,
``ẑ = σ((α + log u − log(1−u)) / τ)``, τ annealed exponentially from ``tau_start`` to
``tau_end`` over the search. A micro unit's effective keep value is its gate times the macro
gates above it (head × v dim, FFN branch × neuron), as the masks compute it. Weights and gates
train together in one stage on

    task loss (CE, or KD from the dense model when ``train.distill`` is set)
    + μ · λ_macro · (L_macro + r · L_micro) + feasibility penalties,

then gates are hardened (keep ⇔ σ(α) > 0.5, micro under macro), repaired if needed, exported
physically and evaluated with no fine-tuning.

Choices where the paper is silent or inconsistent (each with its reason):

* **λ_micro as a ratio** (``micro_ratio`` r = λ_micro / λ_macro, default 0.5: the paper's best
  2:1). The paper steers the compute level with λ alone, sweeping λ_macro with λ_micro =
  λ_macro / 2. One knob makes that sweep, and a tune over ``lambda_macro``,
  move both pressures together. With an absolute λ_micro a tune over λ_macro cannot reach
  light budgets. Whole FFN branches sit in L_micro (their cost is their neurons'), so a fixed
  λ_micro kept removing them: in our CIFAR runs, very different λ_macro exported about the
  same MACs, with FFN branches gone (bench/results). Macro-only is ``micro_ratio: 0``.
  Micro-only is a space without macro units.

* **Cost ledger.** The paper's constants C1 (per head), C2 (per v dim), C3 (per neuron) charge
  a head's V-projection rows to the head (paper Eq. 5), although export removes them with the
  v dim. We use the core's exact cost model and split it the same way:
  L_macro is the cost that stays when every searched micro unit is closed (a head's q/k path
  and QKᵀ: the paper's C1 without the V rows), L_micro the rest (v dims with their qkv row,
  proj column and AV; neurons with fc1 row and fc2 column: C2, C3). Both are expectations
  under σ(α) (exact: the cost is multilinear and gates are independent) divided by the dense
  blocks' MACs, so L_macro + L_micro is the expected fraction of block MACs kept and the
  hardened model's cost is what the loss was steering.
* **Straight-through forward** (``hard_forward``, default on): the forward uses the hard
  sample 1[ẑ > 0.5] and the backward the gradient of ẑ (the paper mentions a straight-through
  estimator). The network then trains with exactly the 0/1 structures it may be exported
  with, which is what makes "no fine-tuning" hold; soft ẑ is available for comparison. Note
  P(ẑ > 0.5) = σ(α) at every τ, so τ shapes the gradient, not the sampled structures.
* **Noise annealing (beyond the paper)**: the logistic noise is scaled by s, decaying linearly
  from 1 to 0 at ``noise_end`` of the search (0.5). Then P(ẑ > 0.5) = σ(α/s): structures
  concentrate on the hardened one, and the rest of the search trains exactly the subnet that
  will be exported, which is the job a fine-tuning stage would do, inside the one stage. Why:
  with the paper's sampler to the end, gates that the cost and task terms balance sit near
  α = 0 and are kept in about half the steps, so the hardened subnet is one the weights
  rarely saw and its cost is far from the expected cost the loss steered (on our CIFAR bench
  the hardened cost overshot the target while the expected cost was below it).
  ``noise_end`` > 1 keeps noise to the end (s = 1 − 1/noise_end at the last step).
* **Noise draws**: one draw per gate per step, shared by the batch, from a generator seeded by
  (seed, step): data-parallel processes sample the same structure and a resumed run the same
  noise. In eval mode (validation during the search) the gates are hardened, so the per-epoch
  validation top-1 is the accuracy of the subnet that would be exported at that point.
* **Initialisation and optimizer**: α = ``gate_init`` (3.0: keep-prob 0.95, the pretrained
  network starts nearly intact); logits in their own AdamW group with ``gate_lr`` and no
  weight decay (paper: unspecified).
* **Feasibility**: squared hinges on fractions, using the sampled gates so they bite during
  training: min heads per kept attention branch, min dims per kept head (v, and q/k when
  searched), min neurons per kept FFN branch, each deficit divided by its group size and the
  sum weighted by ``feasibility_weight``. Fractions keep the penalty's scale independent of
  the model width.
* **Budget mode (beyond the paper).** With a budget, λ_macro:λ_micro keep their ratio and are
  scaled by a multiplier μ that a controller sets so the exported cost lands on the target. It
  is an equality constraint (a budget is a target: users want the accuracy it affords), so μ
  may turn negative and reopen gates. After every step, gap = MACs/target − 1, where MACs is
  the expected cost of the structures being sampled, under σ(α/s): smooth while there is
  noise, the hardened (exported) cost once s = 0. An integral term I grows by η·gap·max(1,
  |I|): geometric far from zero, so it finds the scale at which the cost gradient competes
  with the task gradient in a few dozen steps whatever that scale, linear near zero, so it can
  change sign; |I| is bounded by ``max_multiplier`` so a long search whose target cannot be
  met does not grow it without end; μ = I + K·gap adds a proportional term (as an augmented
  Lagrangian does) that reacts to an overshoot at once. Why not the hardened cost from the
  start: under Adam the logits of a family move together, so the hardened cost stays dense
  until they cross zero and then drops abruptly (a controller on it alone overshoots); why not
  σ(α) throughout: it can sit on the target with every σ(α) > 0.5 (it multiplies head and dim
  probabilities), i.e. nothing pruned. ``adapt_lambda: false`` gives the paper's fixed-λ mode
  (μ = 1).
* **Hardening and repair**: keep ⇔ α > 0 for every gate, micro under macro. If that subnet
  breaks the space's constraints (round_to, minimum counts), or in budget mode misses the
  target by more than ``tolerance``, it is repaired by the core's greedy selection, to the
  target in budget mode or to the hardened cost otherwise: every unit the hardening dropped
  goes first, then the units it kept in the order of ``repair`` (default: the core's Taylor
  importance of the trained weights; ``gates``: effective keep-probabilities). The repaired
  subnet is the hardened one plus or minus the fewest units that fix it, and the size of the
  repair is reported (``repaired_units``). Why a criterion by default: a repair is needed
  where the gates did not decide, and there their probabilities carry little (near their
  initial value after a short search, and a product along the path ranks by depth).
  ``repair_at: noise_end`` runs that repair when the noise reaches 0 instead and sets the
  gates to its subnet, so the steps left train the structure that will be exported.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from automl_hiap import importance
from automl_hiap.cost_model import MACS, CostModel, total_cost
from automl_hiap.masking import Masks
from automl_hiap.selection import select_to_budget
from automl_hiap.space import (
    MACRO_UNITS,
    MICRO_UNITS,
    UNIT_FIELD,
    BlockKeep,
    SearchSpace,
    Unit,
)
from automl_hiap.strategies.hiap_gates import Gates, noise_scale, temperature
from automl_hiap.strategies.hiap_repair import differences, gate_ranking, repair_scores
from automl_hiap.strategy import (
    SearchContext,
    SearchResult,
    Strategy,
    StrategyParams,
    TrainHooks,
)
from automl_hiap.subnet import Subnet

MACRO_FIELDS = tuple(UNIT_FIELD[u] for u in MACRO_UNITS)  # attn, head, ffn


SETTLED = 3.0  # |α| of the gates a settling repair sets: σ = 0.95, as gate_init's default
Repair = Literal["taylor", "fisher", "energy", "gates"]  # a criterion of importance, or σ(α)


class HiAPParams(StrategyParams):
    """HiAP's search settings (defaults: the paper's where it gives them; docs/strategies.md)."""

    epochs: Annotated[int, Field(ge=1)] = 30
    lambda_macro: Annotated[float, Field(gt=0)] = 1.0  # λ: the compute level (fixed-λ mode)
    micro_ratio: Annotated[float, Field(ge=0)] = 0.5  # λ_micro / λ_macro: the paper's best, 2:1
    tau_start: Annotated[float, Field(gt=0)] = 2.0
    tau_end: Annotated[float, Field(gt=0)] = 0.5
    noise_end: Annotated[float, Field(gt=0)] = 0.5  # > 1: some noise to the end
    gate_lr: Annotated[float, Field(gt=0)] = 0.05
    gate_init: float = 3.0
    hard_forward: bool = True
    feasibility_weight: Annotated[float, Field(ge=0)] = 10.0
    adapt_lambda: bool = True
    dual_lr: Annotated[float, Field(gt=0)] = 0.05
    dual_gain: Annotated[float, Field(ge=0)] = 10.0
    max_multiplier: Annotated[float, Field(gt=0)] = 100.0  # bound on the controller's |I|
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.03
    repair: Repair = "taylor"  # how a repair ranks the units the hardening kept
    repair_images: Annotated[int, Field(ge=1)] = 512  # calibration images (taylor, fisher)
    repair_at: Literal["end", "noise_end"] = "end"  # noise_end: settle, then train that
    lr: Annotated[float, Field(gt=0)] | None = None  # weights' lr (default: train.lr)


def cost_split(
    space: SearchSpace, keeps: list[BlockKeep], cost: CostModel = MACS
) -> tuple[Tensor, Tensor]:
    """(macro, micro) expected block cost (MACs, or a latency model's seconds): macro is what
    remains with every searched micro unit closed (owned by macro gates alone), micro is the
    rest."""
    micro_fields = [UNIT_FIELD[u] for u in MICRO_UNITS if space.searches(u)]
    macro = micro = torch.zeros(())
    for index, keep in enumerate(keeps):
        total = cost.block(space, index, keep)
        closed = replace(
            keep,
            **{
                name: torch.zeros_like(value)
                for name in micro_fields
                if (value := getattr(keep, name)) is not None
            },
        )
        own = cost.block(space, index, closed)
        macro, micro = macro + own, micro + (total - own)
    return macro, micro


def feasibility_penalty(space: SearchSpace, keeps: list[BlockKeep]) -> Tensor:
    """Σ relu(deficit)² over minimum heads, dims per head and neurons per FFN (fractions)."""
    penalty = torch.zeros(())
    for i, (shape, keep) in enumerate(zip(space.layers, keeps, strict=True)):
        k = keep.filled(shape)
        head = k.head * k.attn  # kept heads count only inside a kept branch
        terms = []
        if space.searches(Unit.HEAD):
            need = min(space.min_heads, shape.num_heads) / shape.num_heads
            terms.append(need * k.attn - k.head.mean())
        for name, unit in (("v", Unit.V_DIM), ("qk", Unit.QK_DIM)):
            if space.searches(unit):
                need = space.min_dims(i) / shape.head_dim
                terms.append(need * head - getattr(k, name).mean(-1))
        if space.searches(Unit.NEURON):
            need = space.min_neurons(i) / shape.mlp_hidden
            terms.append(need * k.ffn - k.neuron.mean())
        for deficit in terms:
            penalty = penalty + torch.relu(deficit).square().sum()
    return penalty


def count_kept(space: SearchSpace, keeps: list[BlockKeep]) -> dict[str, float]:
    """Kept units per granularity of 0/1 keep values, micro under macro (progress, tracking)."""
    counts = dict.fromkeys(("kept_attn", "kept_heads", "kept_ffn", "kept_v_dims"), 0.0)
    counts["kept_neurons"] = 0.0
    for shape, keep in zip(space.layers, keeps, strict=True):
        e = keep.effective(shape)
        counts["kept_attn"] += float(e.attn)
        counts["kept_heads"] += float(e.head.sum())
        counts["kept_ffn"] += float(e.ffn)
        counts["kept_v_dims"] += float(e.v.sum())
        counts["kept_neurons"] += float(e.neuron.sum())
    return counts


class HiAPSearch(TrainHooks):
    """The gated model during one search: sampling, loss terms, dual ascent, hardening."""

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        params: HiAPParams,
        target: float | None,
        seed: int,
        device: torch.device,
        cost: CostModel = MACS,
        batches: Any = None,
    ) -> None:
        self.model, self.space, self.params = model, space, params
        self.batches = batches  # calibration data of a data-driven repair
        self.target, self.seed = target, seed
        self.cost = cost  # MACs, or a device's latency: the loss and controller steer it
        self.gates = Gates(space, params.gate_init).to(device)
        self.dense_cost = float(total_cost(cost, space, space.dense_keep()))
        self.dense_block_cost = self.dense_cost - cost.fixed(space)
        self.adaptive = target is not None and params.adapt_lambda
        self.multiplier = 1.0 if not self.adaptive else 0.0
        self.integral, self.gap = 0.0, 0.0
        self.tau, self.noise = params.tau_start, 1.0
        self.settled: int | None = None  # units the settling repair changed, once it ran
        self.step, self.total_steps = 0, 1
        self.sampled: list[BlockKeep] | None = None
        self.masks = Masks(model, space, self.gates.hardened())
        self._pre_hook = model.register_forward_pre_hook(self._set_gates)

    def close(self) -> None:
        """Detach masks and hooks: the model is a plain timm model again."""
        self.masks.remove()
        self._pre_hook.remove()

    def _set_gates(self, module: nn.Module, args: Any) -> None:
        if module.training:
            generator = torch.Generator()  # host draws, moved: one seed, one noise, any device
            generator.manual_seed(self.seed * 1_000_003 + self.step)
            self.sampled = self.gates.sample(
                self.tau, generator, self.params.hard_forward, self.noise
            )
            self.masks.set(self.sampled)
        else:
            self.masks.set(self.gates.hardened())

    # ---------------------------------------------------------------- trainer hooks
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.gates.parameters()), "lr": self.params.gate_lr}]

    def on_step_start(self, step: int, total_steps: int) -> None:
        p = self.params
        self.step, self.total_steps = step, total_steps
        self.tau = temperature(step, total_steps, p.tau_start, p.tau_end)
        self.noise = noise_scale(step, total_steps, p.noise_end)
        if p.repair_at == "noise_end" and self.noise == 0 and self.settled is None:
            self.settle()

    def settle(self) -> None:
        """Repair now and set the gates to the repaired subnet (logits at least ``SETTLED``
        beyond 0), so the steps left train the structure that will be exported."""
        subnet, self.settled = self.harden()
        keep = subnet.to_keep(self.space)
        with torch.no_grad():
            for name, logits in self.gates.logits.items():
                kept = torch.stack([getattr(k, name) for k in keep]).to(logits.device) > 0
                logits.copy_(
                    torch.where(kept, logits.clamp(min=SETTLED), logits.clamp(max=-SETTLED))
                )

    def extra_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        p = self.params
        macro, micro = cost_split(self.space, self.gates.probabilities(), self.cost)
        cost = p.lambda_macro * (macro + p.micro_ratio * micro) / self.dense_block_cost
        assert self.sampled is not None, "the model's forward sets the sampled gates"
        feasibility = feasibility_penalty(self.space, self.sampled)
        return self.multiplier * cost + p.feasibility_weight * feasibility

    def on_step_end(self, step: int) -> None:
        self.step = step + 1
        if self.adaptive:
            assert self.target is not None
            with torch.no_grad():
                keeps = self.gates.probabilities(self.noise)
                macs = float(total_cost(self.cost, self.space, keeps))
            self.gap = macs / self.target - 1.0
            self.integral += self.params.dual_lr * self.gap * max(1.0, abs(self.integral))
            bound = self.params.max_multiplier  # geometric growth must not run away on long runs
            self.integral = min(max(self.integral, -bound), bound)
            self.multiplier = self.integral + self.params.dual_gain * self.gap

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            expected = float(total_cost(self.cost, self.space, self.gates.probabilities()))
        name = "macs" if self.cost.unit == "MACs" else "latency"  # fractions of the dense model
        values = {
            f"expected_{name}": expected / self.dense_cost,
            f"hardened_{name}": self.hardened_macs() / self.dense_cost,
            "tau": self.tau,
            "noise": self.noise,
            "lambda_macro": self.multiplier * self.params.lambda_macro,
            "lambda_micro": self.multiplier * self.params.lambda_macro * self.params.micro_ratio,
            "budget_gap": self.gap,
        }
        return values | count_kept(self.space, self.gates.hardened())

    def candidate(self) -> Subnet:
        return self.harden(repair="gates")[0]  # a per-epoch glimpse: no calibration pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": {n: a.detach().clone() for n, a in self.gates.logits.items()},
            "multiplier": self.multiplier,
            "integral": self.integral,
            "step": self.step,
            "settled": self.settled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["logits"].items():
                self.gates.logits[name].copy_(value)
        self.multiplier, self.step = float(state["multiplier"]), int(state["step"])
        self.integral = float(state["integral"])
        self.settled = state.get("settled")

    # ---------------------------------------------------------------- decisions
    def hardened_macs(self) -> float:
        """The hardened decision's cost (MACs, or seconds under a latency model)."""
        with torch.no_grad():
            return float(total_cost(self.cost, self.space, self.gates.hardened()))

    def harden(self, batches: Any = None, repair: Repair | None = None) -> tuple[Subnet, int]:
        """The exported decision and how many units the repair changed (0: none needed);
        ``batches``: calibration data for a data-driven criterion (default: the search's);
        ``repair`` overrides the params' criterion."""
        batches = self.batches if batches is None else batches
        hard = Subnet.from_keep(self.space, self.gates.hardened())
        macs = self.hardened_macs()
        goal = self.target if self.adaptive and self.target is not None else macs
        off_target = abs(macs / goal - 1) > self.params.tolerance
        if not off_target and not hard.problems(self.space):
            return hard, 0
        criterion = repair or self.params.repair
        if criterion == "gates":
            ranking = gate_ranking(self.space, self.gates.probabilities())
        else:  # the trained weights under the hardened gates (eval mode), as exported
            normalize: importance.Normalize = (
                "family" if criterion in importance.DATA_FREE else "none"
            )
            ranking = importance.importance(self.model, self.space, criterion, batches, normalize)
        scores = repair_scores(self.space, self.gates.hardened(), ranking)
        repaired = select_to_budget(self.space, scores, goal, strict=False, cost=self.cost)
        changed = differences(self.space, hard, repaired)
        return repaired, changed


class HiAPStrategy(Strategy[HiAPParams]):
    name = "hiap"
    description = "HiAP: Gumbel-Sigmoid macro+micro gates, MACs loss, one stage, no fine-tuning"
    needs_budget = False  # λ alone steers it; a budget switches on λ adaptation
    requires_units = (*MACRO_UNITS, *MICRO_UNITS)  # any one
    units_error = "space.units: hiap needs at least one searched unit"
    needs_trainer = True
    latency_budgets = True  # the cost loss and controller take the context's cost model
    trainer_error = "hiap: the search trains weights and gates; it needs training data"
    smoke_params: ClassVar[dict[str, Any]] = {"epochs": 1}

    def search(self, context: SearchContext) -> SearchResult:
        params = self.params
        batches = None
        if params.repair not in ("gates", *importance.DATA_FREE):
            batches = importance.calibration_batches(
                context.trainer.train_data, params.repair_images, 32, context.seed
            )
        hooks = HiAPSearch(
            context.model,
            context.space,
            params,
            context.target,
            context.seed,
            context.trainer.device,
            context.cost,
            batches,
        )
        try:
            fit = context.trainer.fit(
                context.model, params.epochs, phase="hiap_search", hooks=hooks, lr=params.lr
            )
            subnet, repaired = hooks.harden()
            metrics = {k: v for k, v in fit.last_metrics.items() if isinstance(v, float)}
            metrics |= hooks.metrics() | {"repaired_units": float(repaired)}
            if hooks.settled is not None:
                metrics["settled_units"] = float(hooks.settled)
        finally:
            hooks.close()
        context.model.eval()
        return SearchResult(subnet=subnet, model=context.model, metrics=metrics)
