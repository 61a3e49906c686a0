"""HiAP's repair scores: how the core's greedy selection fixes a hardened subnet that breaks
the space's constraints or misses the budget (``strategies.hiap`` says when and why)."""

from __future__ import annotations

from dataclasses import replace

import torch

from automl_hiap.cost import unit_macs
from automl_hiap.space import MICRO_UNITS, UNIT_FIELD, BlockKeep, SearchSpace, Unit
from automl_hiap.subnet import Subnet


def gate_ranking(space: SearchSpace, probs: list[BlockKeep]) -> list[BlockKeep]:
    """The gates' own ranking for a repair: each unit's effective keep-probability (σ(α),
    micro under macro) times its dense MACs, so its ratio to the MACs saved is σ(α)."""
    ranking = []
    for shape, p in zip(space.layers, probs, strict=True):
        e = p.map(lambda t: t.detach().double().cpu()).effective(shape)
        priced = {
            UNIT_FIELD[u]: getattr(e, UNIT_FIELD[u]) * unit_macs(shape, space.tokens, u)
            for u in (Unit.HEAD, *MICRO_UNITS)
        }
        ranking.append(BlockKeep(attn=torch.zeros(()), ffn=torch.zeros(()), **priced))
    return ranking


def repair_scores(
    space: SearchSpace, hard: list[BlockKeep], ranking: list[BlockKeep]
) -> list[BlockKeep]:
    """Scores for the core's selection that rank units as hardening decided, then by
    ``ranking`` (per-unit scores whose ratio to the MACs a unit saves orders it: the gates'
    :func:`gate_ranking`, or a criterion of ``automl_hiap.importance``). Every unit the
    hardening kept (h = 1, micro under macro) gets a bonus of B × its MACs, with B above
    every ratio of the ranking, so each unit it dropped goes before any unit it kept."""
    rank_fields = [UNIT_FIELD[u] for u in (Unit.HEAD, *MICRO_UNITS)]
    bound = 0.0
    for shape, r in zip(space.layers, ranking, strict=True):
        for u, name in zip((Unit.HEAD, *MICRO_UNITS), rank_fields, strict=True):
            value = getattr(r, name)
            if value is not None and value.numel():
                bound = max(bound, float(value.max()) / unit_macs(shape, space.tokens, u))
    bonus = 1.0 + bound
    scores: list[BlockKeep] = []
    for shape, h, r in zip(space.layers, hard, ranking, strict=True):
        eh = h.map(lambda t: t.detach().double().cpu()).effective(shape)
        filled = r.filled(shape, like=torch.zeros((), dtype=torch.float64))
        values = {
            name: getattr(filled, name).double().cpu()
            + bonus * getattr(eh, name) * unit_macs(shape, space.tokens, u)
            for u, name in zip((Unit.HEAD, *MICRO_UNITS), rank_fields, strict=True)
        }
        scores.append(replace(filled, **values))
    return scores


def differences(space: SearchSpace, a: Subnet, b: Subnet) -> int:
    """Units kept by exactly one of two subnets."""
    ka, kb = a.to_keep(space), b.to_keep(space)
    return sum(
        int((getattr(x, n) != getattr(y, n)).sum())
        for x, y in zip(ka, kb, strict=True)
        for n in ("attn", "head", "ffn", "qk", "v", "neuron", "attn_in", "mlp_in")
    )
