"""HiAP's gates: one learnable logit per searched unit, sampled with Gumbel-Sigmoid.

The sampler and schedules of HiAP (Li, Durrant, Markovic, Leontidis, arXiv 2603.12222): a
gate with logit α is drawn as ``σ((α + s·ε) / τ)``, ε logistic noise, τ annealed
exponentially (the paper's schedule), s a noise scale that decays linearly (our addition), and
used straight-through (forward 0/1, backward the relaxed gradient). Why each choice is made:
``strategies.hiap`` and docs/strategies.md.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from automl_hiap.errors import UserError
from automl_hiap.space import MACRO_UNITS, MICRO_UNITS, UNIT_FIELD, BlockKeep, SearchSpace


def temperature(step: int, total: int, start: float, end: float) -> float:
    """Exponential annealing: ``start`` at the first step, ``end`` at the last."""
    if total <= 1:
        return end
    return start * (end / start) ** (step / (total - 1))


def noise_scale(step: int, total: int, noise_end: float) -> float:
    """Linear decay of the sampling noise: 1 at the first step, 0 from ``noise_end`` of the
    search on (the rest trains the hardened structure)."""
    progress = step / max(total - 1, 1)
    return max(0.0, 1.0 - progress / noise_end)


def gumbel_sigmoid(
    logits: Tensor, tau: float, generator: torch.Generator | None = None, scale: float = 1.0
) -> Tensor:
    """σ((α + s·logistic noise) / τ): a relaxed Bernoulli(σ(α/s)) sample, differentiable in α
    (s = 1: the paper's sampler; s = 0: the deterministic gate σ(α/τ))."""
    where = logits.device if generator is None else generator.device  # a host generator: moved
    u = torch.rand(logits.shape, generator=generator, device=where, dtype=logits.dtype)
    u = u.to(logits.device, non_blocking=True).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((logits + scale * (torch.log(u) - torch.log1p(-u))) / tau)


def straight_through(soft: Tensor) -> Tensor:
    """Forward 1[soft > 0.5], backward the gradient of ``soft``."""
    return (soft > 0.5).to(soft.dtype) + soft - soft.detach()


class Gates(nn.Module):
    """One logit per searched unit, stacked over layers: ``logits[field]`` is (L, *shape)."""

    def __init__(self, space: SearchSpace, init: float) -> None:
        super().__init__()
        shapes = {(s.num_heads, s.head_dim, s.mlp_hidden, s.embed_dim) for s in space.layers}
        if len(shapes) != 1:
            raise UserError("hiap: gates need every block of the model to have the same shape")
        template = space.layers[0]
        sizes = BlockKeep().filled(template)
        self.space = space
        self.fields = [UNIT_FIELD[u] for u in (*MACRO_UNITS, *MICRO_UNITS) if space.searches(u)]
        self.logits = nn.ParameterDict(
            {
                name: nn.Parameter(torch.full((space.depth, *getattr(sizes, name).shape), init))
                for name in self.fields
            }
        )

    def _layers(self, values: dict[str, Tensor]) -> list[BlockKeep]:
        return [
            BlockKeep(**{name: values[name][i] for name in self.fields})
            for i in range(self.space.depth)
        ]

    def probabilities(self, scale: float = 1.0) -> list[BlockKeep]:
        """σ(α/s): each unit's keep-probability under noise scale s (differentiable); at s = 0
        the hardened decision."""
        if scale <= 0:
            return self.hardened()
        return self._layers({n: torch.sigmoid(a / scale) for n, a in self.logits.items()})

    def hardened(self) -> list[BlockKeep]:
        """The deterministic decision: keep ⇔ α > 0."""
        return self._layers({n: (a.detach() > 0).float() for n, a in self.logits.items()})

    def sample(
        self, tau: float, generator: torch.Generator, hard: bool, scale: float = 1.0
    ) -> list[BlockKeep]:
        """One Gumbel-Sigmoid draw per gate (straight-through 0/1 when ``hard``)."""
        values = {}
        for name, logits in self.logits.items():
            soft = gumbel_sigmoid(logits, tau, generator, scale)
            values[name] = straight_through(soft) if hard else soft
        return self._layers(values)
