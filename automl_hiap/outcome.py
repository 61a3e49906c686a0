"""What a search produced, as typed, frozen objects; their JSON is the output's ``metrics.json``.

Everything downstream of a search (the CLI summary, the tuner's objective, MLflow metrics and
registry tags, the benchmarks) reads these fields; the JSON layout is the user-facing contract
and stays as it is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from automl_hiap.atomic import write_json
from automl_hiap.subnet import Subnet

DRIFT_WARNING = 0.1  # dense measured vs predicted: beyond this the summary says so


@dataclass(frozen=True)
class ModelMetrics:
    """One model (dense or pruned) as the search measured it."""

    top1: float  # on the test split
    val_top1: float  # on the held-out val split (what selection may look at)
    macs: int
    params: int
    images_per_s: float | None  # median over repeats; None when the measurement was skipped
    images_per_s_iqr: list[float] | None = None  # [low, high]: interquartile range of repeats


@dataclass(frozen=True)
class SearchMetrics:
    """Dense vs pruned, and how the search got there (``metrics.json``)."""

    strategy: str
    params_config: dict[str, Any]
    budget: str | None
    target_macs: float | None
    dense: ModelMetrics
    pruned: ModelMetrics
    macs_ratio: float
    speedup: float | None
    measure_batch: int | None
    search_seconds: float
    strategy_metrics: dict[str, float] = field(default_factory=dict)
    structure: list[dict[str, Any]] = field(default_factory=list)
    speedup_iqr: list[float] | None = None  # [low, high] of the repeat-by-repeat ratios
    measure_repeats: int | None = None
    load_average: float | None = None  # 1-minute load average when it was measured
    latency: dict[str, Any] | None = None  # a latency budget: predicted vs measured ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def latency_lines(self) -> list[str]:
        """A latency budget's line of the summary: the exported model's predicted latency
        next to its measured one (with the spread of the measurement)."""
        return [] if self.latency is None else self.latency_lines_of(self.latency)

    @staticmethod
    def latency_lines_of(t: dict[str, Any]) -> list[str]:
        """The line of :meth:`latency_lines` from a ``latency`` record."""
        line = (
            f"latency at batch {t['batch']}, {t['threads']} threads: target {t['target_ms']:.3g} ms"
        )
        line += f", predicted {t['predicted_ms']:.3g} ms"
        if t.get("measured_ms") is not None:
            low, high = t["measured_iqr_ms"]
            line += f", measured {t['measured_ms']:.3g} ms (IQR {low:.3g}–{high:.3g})"
        lines = [line]
        if t.get("dense_measured_ms") is not None:  # the machine's drift since profiling
            drift = t["dense_measured_ms"] / t["dense_predicted_ms"] - 1
            lines[0] += (
                f"; dense in the same run: predicted {t['dense_predicted_ms']:.3g} ms, "
                f"measured {t['dense_measured_ms']:.3g} ms"
            )
            if abs(drift) > DRIFT_WARNING:
                lines.append(
                    f"note: the dense model ran {abs(drift):.0%} "
                    f"{'slower' if drift > 0 else 'faster'} than the latency table predicts: "
                    "the machine's speed changed since it was profiled (a shared or throttled "
                    "machine), so every measured figure is off by about as much; profile it "
                    "again when it is quiet (automl_hiap profile)"
                )
        return lines

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchMetrics:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["dense"] = ModelMetrics(**data["dense"])
        values["pruned"] = ModelMetrics(**data["pruned"])
        return cls(**values)

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json(), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> SearchMetrics:
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class SearchReport:
    """A finished search: its output folder, decision and metrics."""

    out: Path
    subnet: Subnet
    metrics: SearchMetrics
