"""Human-readable summaries of spaces and subnets for the CLI."""

from __future__ import annotations

from automl_hiap.budget import format_macs
from automl_hiap.config import SearchConfig
from automl_hiap.cost import block_macs, prunable_share
from automl_hiap.plan import resolve
from automl_hiap.space import ALL_UNITS, MACRO_UNITS, BlockKeep, SearchSpace, Unit


def _unit_count(space: SearchSpace, unit: Unit) -> int:
    per_layer = {
        Unit.ATTN_BLOCK: lambda s: 1,
        Unit.HEAD: lambda s: s.num_heads,
        Unit.FFN_BLOCK: lambda s: 1,
        Unit.QK_DIM: lambda s: s.num_heads * s.head_dim,
        Unit.V_DIM: lambda s: s.num_heads * s.head_dim,
        Unit.NEURON: lambda s: s.mlp_hidden,
        Unit.ATTN_IN: lambda s: s.embed_dim,
        Unit.MLP_IN: lambda s: s.embed_dim,
    }[unit]
    return sum(per_layer(shape) for shape in space.layers)


def describe_space(config: SearchConfig) -> str:
    plan = resolve(config, meta=True, check_budget=False)  # shapes only: no weights read
    spec, space, dense = plan.spec, plan.space, plan.dense
    c = config.space.constraints
    lines = [
        f"model      {spec.name} {spec.kwargs or ''}".rstrip(),
        f"tokens     {space.tokens}   layers {space.depth}",
        f"dense      {format_macs(dense.macs)} MACs   {dense.params / 1e6:.2f} M params",
        f"fixed      {format_macs(space.fixed_macs)} MACs, {space.fixed_params / 1e6:.3f} M "
        "params outside the blocks (patch embedding or stem, pool, head: never pruned)",
        f"budget     {config.budget if config.budget is not None else '(none)'}",
        f"strategy   {config.strategy.name}",
        f"constraints min_heads={c.min_heads} min_head_dims={c.min_head_dims} "
        f"min_neuron_fraction={c.min_neuron_fraction} round_to={c.round_to}",
        "",
        "unit        level  searched      units  share of dense MACs",
    ]
    for unit in ALL_UNITS:
        level = "macro" if unit in MACRO_UNITS else "micro"
        searched = "yes" if space.searches(unit) else "no"
        count, share = _unit_count(space, unit), prunable_share(space, unit)
        lines.append(f"{unit.value:11s} {level:6s} {searched:8s} {count:10d}  {share:6.1%}")
    lines += ["", "layer  heads x dim  ffn hidden  MACs      share"]
    for i, shape in enumerate(space.layers):
        per_layer = float(block_macs(shape, space.tokens, BlockKeep().filled(shape)))
        lines.append(
            f"{i:5d}  {shape.num_heads:5d} x {shape.head_dim:<4d} {shape.mlp_hidden:10d}  "
            f"{format_macs(per_layer):8s}  {per_layer / dense.macs:5.1%}"
        )
    return "\n".join(lines)
