"""GOHSP: Graph and Optimization-based Heterogeneous Structured Pruning (Yin, Uzkent, Shen, Jin,
Yuan; AAAI 2023, arXiv 2301.05345).

**A reconstruction.** The paper body and code are not available; what is sourced (the abstract
and the authors' overview; see docs/strategies.md) is the pipeline: (1) per block, a graph over
the attention heads built from their correlation, a Markov chain over it, and its stationary
distribution as the heads' importance; (2) an optimization stage that imposes head-level and
column-level structured sparsity *softly* — a quadratic term with coefficient ρ pulls the
weights towards the sparse structure, guided by the head ranking; (3) hard pruning and
fine-tuning. Every detail below is this module's choice:

* Head graph: nodes are heads, on a few calibration batches of training images. A head's
  signal is its contribution to the block output, ``O_h · W_projᵀ[h]`` (all heads write into
  the same residual coordinates, unlike their raw outputs). Edge weights come from the
  absolute cosine similarity of these contributions (no self-loops).
* Direction: the paper reads the stationary distribution π as importance (high π kept). What
  the edges measure decides what is central; the default ``edges: dissimilarity`` (1 − |cos|)
  makes heads that differ from the others central, so redundant heads go first, as in CHIP
  (same group: less independent ⇒ less important). ``edges: similarity`` is the PageRank reading
  (heads that agree with the others are central), kept for ablation.
* Markov chain: rows of the weight matrix normalized to probabilities, then PageRank damping
  ``P ← (1 − β)P + β/H`` (β = ``damping``) so the chain is irreducible and aperiodic and π
  unique; π is solved exactly (a linear system), equal to the power-iteration limit.
* Structure and budget: a unit's column score is the energy of its weights (q/k dim: q and k
  rows; v dim: v row and ``proj`` column; neuron: ``fc1`` row and ``fc2`` column), divided by
  the mean energy per weight of its family; a head's score is the sum of its dims' scores
  times H·π_h (its rank-relative importance, mean 1 per layer). The sparse set S is the
  subnet ``select_to_budget`` picks from these scores (importance per MAC, constraints kept):
  heads are removed in π order unless their content outweighs it, columns by norm. Only heads,
  q/k dims, v dims and neurons (and branches, if searched) are pruned; input columns are not.
* Optimization: ADMM (Zhang et al.'s structured-pruning form). Auxiliary Z = Π_S(W + U) and
  scaled dual U start at Π_S(W) and 0; each step adds ρ(W − Z + U) to the gradient of the
  block weights (the quadratic term ρ/2‖W − Z + U‖²); every epoch (``z_updates_per_epoch``)
  Z ← Π_S(W + U), U ← U + W − Z, ρ ← ρ·``rho_growth``. Π_S zeroes the pruned units' rows and
  columns (with their biases, and a removed branch's output bias) and keeps every other entry:
  the usual "keep the largest" projection with the set re-chosen under the MACs budget.
* Hard pruning: S chosen from the final W, then the physical export (which drops the pruned
  weights), then ``finetune_epochs`` of ordinary fine-tuning (fresh optimizer): the core's
  fine-tune phase, ``gohsp_finetune``. ``prune_criterion`` swaps the column energies of this
  last choice for a data-driven criterion of the core (``automl_hiap.importance``: taylor,
  fisher, on ``prune_images`` training images), heads still weighed by H·π_h; the ADMM
  projections stay on energies, which need no data at every update.
* Hyper-parameters are not retrievable; defaults: ρ = 1e-3 growing ×1.3 per update,
  30 ADMM epochs, 100 fine-tuning epochs, 8 calibration batches, β = 0.15.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import DataLoader

from automl_hiap import importance, layout
from automl_hiap.cost import dense_cost, subnet_cost
from automl_hiap.cost_model import MACS, CostModel
from automl_hiap.errors import UserError
from automl_hiap.selection import select_to_budget
from automl_hiap.space import BlockKeep, LayerShape, SearchSpace, Unit
from automl_hiap.strategy import (
    FineTune,
    SearchContext,
    SearchResult,
    Strategy,
    StrategyParams,
    TrainHooks,
)
from automl_hiap.subnet import Subnet

# per layer: layout.TENSORS key -> tensor (absent biases left out)
Weights = list[dict[str, Tensor]]
FAMILIES = {"qk": Unit.QK_DIM, "v": Unit.V_DIM, "neuron": Unit.NEURON}  # the scored columns


class GOHSPParams(StrategyParams):
    """Head ranking, ADMM soft pruning, fine-tuning (see the module docstring)."""

    rank_batches: Annotated[int, Field(ge=1)] = 8
    edges: Literal["dissimilarity", "similarity"] = "dissimilarity"
    damping: Annotated[float, Field(gt=0, lt=1)] = 0.15
    admm_epochs: Annotated[int, Field(ge=0)] = 30
    rho: Annotated[float, Field(gt=0)] = 1e-3
    rho_growth: Annotated[float, Field(ge=1)] = 1.3
    z_updates_per_epoch: Annotated[int, Field(ge=1)] = 1
    admm_lr: Annotated[float, Field(gt=0)] | None = None  # default: train.lr
    finetune_epochs: Annotated[int, Field(ge=0)] = 100
    finetune_lr: Annotated[float, Field(gt=0)] | None = None
    prune_criterion: importance.Criterion = "energy"  # the hard prune's column scores
    prune_images: Annotated[int, Field(ge=1)] = 512  # its calibration images (taylor, ...)


# ---------------------------------------------------------------- stage 1: head ranking
def stationary_distribution(transition: Tensor) -> Tensor:
    """π with π·P = π and Σπ = 1, for a row-stochastic, irreducible P (solved exactly)."""
    p = transition.double()
    n = p.shape[0]
    system = p.T - torch.eye(n, dtype=torch.float64)
    system[-1] = 1.0  # replace one (redundant) balance equation by the normalization
    rhs = torch.zeros(n, dtype=torch.float64)
    rhs[-1] = 1.0
    return torch.linalg.solve(system, rhs)


def transition_matrix(weights: Tensor, damping: float) -> Tensor:
    """Row-normalized edge weights (uniform for a node without edges), PageRank-damped."""
    w = weights.double().clamp(min=0)
    n = w.shape[0]
    rows = w.sum(1, keepdim=True)
    p = torch.where(rows > 0, w / rows.clamp(min=1e-300), torch.full_like(w, 1.0 / n))
    return (1 - damping) * p + damping / n


@torch.no_grad()
def head_contribution_gram(
    model: nn.Module, batches: list[Tensor], device: torch.device
) -> list[Tensor]:
    """Per layer, the Gram matrix ⟨c_h, c_g⟩ of the heads' contributions c_h = O_h·W_projᵀ[h],
    summed over images and tokens (from the Gram of ``proj``'s input; nothing per head is
    materialized)."""
    blocks: Any = model.blocks
    moments: list[Tensor | None] = [None] * len(blocks)

    def hook(index: int) -> Any:
        def collect(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            gram = x.T @ x
            previous = moments[index]
            moments[index] = gram if previous is None else previous + gram

        return collect

    handles = [
        layout.linear(b, "proj").register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)
    ]
    was_training = model.training
    model.eval()
    try:
        for images in batches:
            model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    grams = []
    for i, (block, moment) in enumerate(zip(blocks, moments, strict=True)):
        if moment is None:
            raise ValueError("no calibration batches")
        shape = layout.block_shape(block, i)
        w = _by_v_dim(shape, layout.linear(block, "proj").weight.double(), 1)  # (D, H, d)
        cross = torch.einsum("ehd,egf->hgdf", w, w)  # W_hᵀ W_g
        m = _by_v_dim(shape, _by_v_dim(shape, moment, 0), 2)  # Σ x_h x_gᵀ, (H, d, H, d)
        grams.append(torch.einsum("hgdf,hdgf->hg", cross, m).cpu())
    return grams


def _by_v_dim(shape: LayerShape, tensor: Tensor, dim: int) -> Tensor:
    """Split ``dim`` (indexed like ``proj``'s input) into (head, v dim)."""
    return layout.unit_view(shape, Unit.V_DIM, layout.PROJ_COLUMNS, tensor, dim)


def head_importance(gram: Tensor, edges: str, damping: float) -> Tensor:
    """Stationary distribution of the head graph built from one layer's Gram matrix."""
    norms = gram.diagonal().clamp(min=1e-300).sqrt()
    similarity = (gram / (norms[:, None] * norms[None, :])).abs().clamp(max=1.0)
    weights = similarity if edges == "similarity" else 1.0 - similarity
    weights = weights * (1 - torch.eye(gram.shape[0], dtype=weights.dtype))  # no self-loops
    return stationary_distribution(transition_matrix(weights, damping))


def calibration_batches(trainer: Any, count: int, seed: int) -> list[Tensor]:
    """The first ``count`` shuffled training batches (a fixed, seed-determined sample)."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        trainer.train_data,
        batch_size=trainer.config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=0,
    )
    batches = []
    for images, _ in loader:
        batches.append(images)
        if len(batches) == count:
            break
    return batches


# ---------------------------------------------------------------- stage 2: projection
def block_weights(model: nn.Module) -> Weights:
    """The live parameters of every block, by ``layout.TENSORS`` key."""
    return [layout.block_tensors(block) for block in layout.blocks(model)]


def column_scores(space: SearchSpace, weights: Weights, heads: list[Tensor]) -> list[BlockKeep]:
    """Family-normalized unit energies; a head scores its dims' sum times H·π_h."""
    energies = []
    for shape, w in zip(space.layers, weights, strict=True):
        energy = layout.energy(shape, w, list(FAMILIES.values()))
        energies.append({family: energy[unit] for family, unit in FAMILIES.items()})
    scale = {}  # mean energy per weight of each family
    for family, unit in FAMILIES.items():
        total = sum(float(e[family].sum()) for e in energies)
        count = sum(
            e[family].numel() * layout.weight_count(s, unit)
            for e, s in zip(energies, space.layers, strict=True)
        )
        scale[family] = total / count if total > 0 else 1.0
    scores = [
        BlockKeep(
            attn=torch.zeros((), dtype=torch.float64),
            ffn=torch.zeros((), dtype=torch.float64),
            qk=e["qk"] / scale["qk"],
            v=e["v"] / scale["v"],
            neuron=e["neuron"] / scale["neuron"],
        )
        for e in energies
    ]
    return weigh_heads(scores, heads, space)


def weigh_heads(
    scores: list[BlockKeep], heads: list[Tensor], space: SearchSpace
) -> list[BlockKeep]:
    """Unit scores with each head's replaced by its dims' sum times H·π_h (GOHSP's rule on any
    criterion of ``automl_hiap.importance``)."""
    weighed: list[BlockKeep] = []
    for shape, score, pi in zip(space.layers, scores, heads, strict=True):
        assert score.qk is not None and score.v is not None, "GOHSP scores every head's dims"
        own = score.qk.sum(1) + score.v.sum(1)
        weighed.append(replace(score, head=own * pi.to(own) * shape.num_heads))
    return weighed


def structure_masks(space: SearchSpace, subnet: Subnet) -> Weights:
    """0/1 multipliers of the block tensors that zero exactly the subnet's pruned units."""
    return [
        layout.weight_masks(shape, k.effective(shape))
        for shape, k in zip(space.layers, subnet.to_keep(space, torch.float64), strict=True)
    ]


def select(space: SearchSpace, scores: list[BlockKeep], target: float, cost: CostModel) -> Subnet:
    """The core's greedy selection, an unreachable budget said as the user's error."""
    try:
        return select_to_budget(space, scores, target, cost=cost)
    except ValueError as exc:
        raise UserError(f"budget: {exc}") from None


def project(
    space: SearchSpace,
    weights: Weights,
    heads: list[Tensor],
    target: float,
    cost: CostModel = MACS,
) -> tuple[Weights, Subnet]:
    """Π_S: the budget-feasible structure for ``weights`` and the weights restricted to it."""
    subnet = select(space, column_scores(space, weights, heads), target, cost)
    projected = [
        {key: t.detach() * m[key].to(t) for key, t in w.items()}
        for w, m in zip(weights, structure_masks(space, subnet), strict=True)
    ]
    return projected, subnet


class _ADMM(TrainHooks):
    """ρ(W − Z + U) added to the block gradients; Z, U and ρ updated every few steps."""

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        heads: list[Tensor],
        target: float,
        params: GOHSPParams,
        steps_per_epoch: int,
        cost: CostModel = MACS,
    ) -> None:
        self.space, self.heads, self.target, self.cost = space, heads, target, cost
        self.weights = block_weights(model)
        self.rho, self.growth = params.rho, params.rho_growth
        self.every = max(1, steps_per_epoch // params.z_updates_per_epoch)
        self.z, self.subnet = project(space, self.weights, heads, target, cost)
        self.u = [{key: torch.zeros_like(t) for key, t in w.items()} for w in self.z]

    def on_after_backward(self, step: int) -> None:
        for w, z, u in zip(self.weights, self.z, self.u, strict=True):
            for key, param in w.items():
                pull = self.rho * (param.detach() - z[key] + u[key])
                if param.grad is None:
                    param.grad = pull
                else:
                    param.grad.add_(pull)

    def on_step_end(self, step: int) -> None:
        if (step + 1) % self.every:
            return
        shifted = [
            {key: p.detach() + u[key] for key, p in w.items()}
            for w, u in zip(self.weights, self.u, strict=True)
        ]
        self.z, self.subnet = project(self.space, shifted, self.heads, self.target, self.cost)
        for w, z, u in zip(self.weights, self.z, self.u, strict=True):
            for key, param in w.items():
                u[key] += param.detach() - z[key]
        self.rho *= self.growth

    def metrics(self) -> dict[str, float]:
        """ρ and the relative distance ‖W − Z‖ / ‖W‖ (→ 0 as W takes the sparse structure)."""
        gap = norm = 0.0
        for w, z in zip(self.weights, self.z, strict=True):
            for key, param in w.items():
                gap += float((param.detach() - z[key]).square().sum())
                norm += float(param.detach().square().sum())
        return {"rho": self.rho, "admm_gap": (gap / max(norm, 1e-30)) ** 0.5}

    def candidate(self) -> Subnet:
        return self.subnet

    def state_dict(self) -> dict[str, Any]:
        return {"z": self.z, "u": self.u, "rho": self.rho, "subnet": self.subnet.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.weights[0]["qkv_w"].device
        self.z = [{k: t.to(device) for k, t in layer.items()} for layer in state["z"]]
        self.u = [{k: t.to(device) for k, t in layer.items()} for layer in state["u"]]
        self.rho = float(state["rho"])
        self.subnet = Subnet.from_dict(state["subnet"])


class GOHSPStrategy(Strategy[GOHSPParams]):
    name = "gohsp"
    description = "GOHSP (AAAI'23, reconstructed): Markov-chain head ranking, ADMM soft pruning"
    requires_units = (Unit.HEAD, Unit.QK_DIM, Unit.V_DIM, Unit.NEURON)
    units_error = (
        "space.units: GOHSP prunes head, qk_dim, v_dim and neuron; the space searches none of them"
    )
    needs_trainer = True
    trainer_error = "strategy: GOHSP ranks heads on training data; it needs a trainer"
    fine_tune = FineTune(phase="gohsp_finetune")  # after the hard pruning
    latency_budgets = True  # Π_S selects through the core's cost model
    smoke_params: ClassVar[dict[str, Any]] = {"rank_batches": 2, "admm_epochs": 1}

    def search(self, context: SearchContext) -> SearchResult:
        params, space = self.params, context.space
        target = self.target(context)
        trainer, model = context.trainer, context.model
        model.to(trainer.device)
        batches = calibration_batches(trainer, params.rank_batches, context.seed)
        grams = head_contribution_gram(model, batches, trainer.device)
        heads = [head_importance(g, params.edges, params.damping) for g in grams]
        if params.admm_epochs > 0:
            steps = trainer.steps_per_epoch()
            hooks = _ADMM(model, space, heads, target, params, steps, context.cost)
            trainer.fit(
                model, params.admm_epochs, phase="gohsp_admm", hooks=hooks, lr=params.admm_lr
            )
        if params.prune_criterion == "energy":  # the reconstruction's rule, as in the ADMM
            _, subnet = project(space, block_weights(model), heads, target, context.cost)
        else:  # a data-driven criterion of the core for the final, hard decision
            data = importance.calibration_batches(
                trainer.train_data, params.prune_images, 32, context.seed
            )
            scores = importance.importance(model, space, params.prune_criterion, data, "none")
            columns = [replace(c, attn_in=None, mlp_in=None) for c in scores]  # never pruned
            subnet = select(space, weigh_heads(columns, heads, space), target, context.cost)
        metrics = {"macs_ratio": subnet_cost(space, subnet).macs / dense_cost(space).macs}
        return SearchResult(subnet=subnet, model=model, metrics=metrics)
