"""The unit vocabulary and structural constraints, free of torch.

``config`` validates YAML against these names, and the CLI's quick commands (``spaces``,
``--help``, argument errors, the plan ``search`` prints first) go through ``config``: keeping
them here, not in :mod:`automl_hiap.space` (which needs torch), lets those commands answer in
a fraction of a second. ``space`` re-exports every name, so ``from automl_hiap.space import
Unit`` keeps working.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Unit(str, Enum):
    ATTN_BLOCK = "attn_block"
    HEAD = "head"
    FFN_BLOCK = "ffn_block"
    QK_DIM = "qk_dim"
    V_DIM = "v_dim"
    NEURON = "neuron"
    ATTN_IN = "attn_in"
    MLP_IN = "mlp_in"

    def __str__(self) -> str:
        return self.value


# the BlockKeep field that holds each unit's keep values
UNIT_FIELD = {
    Unit.ATTN_BLOCK: "attn",
    Unit.HEAD: "head",
    Unit.FFN_BLOCK: "ffn",
    Unit.QK_DIM: "qk",
    Unit.V_DIM: "v",
    Unit.NEURON: "neuron",
    Unit.ATTN_IN: "attn_in",
    Unit.MLP_IN: "mlp_in",
}
MACRO_UNITS = (Unit.ATTN_BLOCK, Unit.HEAD, Unit.FFN_BLOCK)
MICRO_UNITS = (Unit.QK_DIM, Unit.V_DIM, Unit.NEURON, Unit.ATTN_IN, Unit.MLP_IN)
ALL_UNITS = MACRO_UNITS + MICRO_UNITS
Rounding = Literal["down", "up", "nearest"]


class Constraints(BaseModel):
    """Structural limits that keep every subnet valid and hardware-friendly (the YAML's
    ``space.constraints``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    min_heads: Annotated[int, Field(ge=1)] = 1
    min_head_dims: Annotated[int, Field(ge=1)] = 1
    min_neuron_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    round_to: Annotated[int, Field(ge=1)] = 1
