"""The results of a tune: the trials table, the Pareto front, the best trial and its files.

What a tune writes to ``OUT``: ``trials.csv`` and ``tune.json`` (every trial: params, top-1,
MACs, cost, params count, state, failure reason), ``pareto.png``, and the best trial's exported
model (the same files as ``search``). A trial's ``cost`` is in the budget's unit: its MACs, or
for a latency budget its predicted seconds (``measured_ms`` beside it); feasibility, the front
and the best are decided on it. The best trial is the most accurate feasible one (val top-1);
when none is feasible, the one closest to the target (and ``tune.json`` says so). In Pareto mode
it is the most accurate front member within the budget's tolerance (without a budget the most
accurate member; when none is within it, the cheapest).
"""

from __future__ import annotations

import csv
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from automl_hiap.atomic import atomic_path, write_json
from automl_hiap.budget import format_macs

EXPORT_FILES = ("subnet.json", "metrics.json", "structure.png")


@dataclass
class TuneReport:
    """What a study holds: every trial as a row, the front and the trial handed back."""

    out: Path
    study: str
    storage: str  # for display: passwords masked
    pareto: bool
    target: float | None  # in ``unit``
    tolerance: float
    params: list[str]
    rows: list[dict[str, Any]]  # one per trial, by number
    front: list[int]  # trial numbers of the non-dominated set
    best: dict[str, Any] | None
    dense: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unit: str = "MACs"  # of the trials' cost and the target: "MACs" or "s" (a latency budget)

    @property
    def distance(self) -> float | None:
        """The best trial's cost relative to the target, minus one (+0.02: 2 % over)."""
        return None if self.best is None else self.best.get("target_error")

    @property
    def is_latency(self) -> bool:
        return self.unit != "MACs"

    def axis(self, cost: float) -> float:
        """A cost as plotted: M MACs, or ms."""
        return cost / 1e6 if not self.is_latency else cost * 1e3

    @property
    def axis_label(self) -> str:
        return "MACs (M)" if not self.is_latency else "predicted latency (ms)"

    def describe(self, cost: float) -> str:
        return format_macs(cost) if not self.is_latency else f"{cost * 1e3:.4g} ms"


def trial_rows(trials: Sequence[FrozenTrial], params: Sequence[str]) -> list[dict[str, Any]]:
    retried_as = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        result = dict(trial.user_attrs.get("result") or {})
        if trial.state == TrialState.PRUNED and trial.values:
            result["val_top1"] = trial.values[0]  # the last intermediate value
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "params": {k: trial.params.get(k) for k in params},
                "val_top1": result.get("val_top1"),
                "test_top1": result.get("test_top1"),
                "macs": result.get("macs"),
                "cost": result.get("cost", result.get("macs")),  # older studies: MACs only
                "measured_ms": result.get("measured_ms"),
                "macs_ratio": result.get("macs_ratio"),
                "target_error": result.get("target_error"),
                "feasible": result.get("feasible"),
                "params_count": result.get("params"),
                "speedup": result.get("speedup"),
                "seconds": seconds,
                "reason": trial.user_attrs.get("fail_reason"),
                "retry_of": trial.user_attrs.get("retry_of"),
                "retried_as": retried_as.get(trial.number),
                "out": trial.user_attrs.get("out"),
                "_dense": {
                    "macs": result.get("dense_macs"),
                    "cost": result.get("dense_cost", result.get("dense_macs")),
                    "val_top1": result.get("dense_val_top1"),
                    "test_top1": result.get("dense_test_top1"),
                    "params": result.get("dense_params"),
                },
            }
        )
    return rows


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed rows that no other completed row beats on val top-1 and cost together."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["val_top1"] is not None]

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        no_worse = a["val_top1"] >= b["val_top1"] and a["cost"] <= b["cost"]
        return no_worse and (a["val_top1"] > b["val_top1"] or a["cost"] < b["cost"])

    front = [r for r in done if not any(dominates(o, r) for o in done)]
    return sorted(front, key=lambda r: r["cost"])


def choose_best(
    rows: Sequence[dict[str, Any]], pareto: bool, target: float | None, tolerance: float
) -> tuple[dict[str, Any] | None, list[str]]:
    """The trial whose model the tune hands back, and notes on how it was chosen."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["val_top1"] is not None]
    if not done:
        return None, ["no trial completed"]
    if pareto:
        front = pareto_front(done)
        if target is None:
            return max(front, key=lambda r: r["val_top1"]), []
        within = [r for r in front if r["cost"] <= target * (1 + tolerance)]
        if within:
            return max(within, key=lambda r: r["val_top1"]), []
        closest = min(front, key=lambda r: r["cost"])
        return closest, ["no front member is within the budget; the cheapest one is returned"]
    feasible = [r for r in done if r["feasible"]]
    if feasible:
        return max(feasible, key=lambda r: (r["val_top1"], -abs(r["target_error"]))), []
    closest = min(done, key=lambda r: abs(r["target_error"]))
    return closest, [
        f"no trial is within ±{tolerance:.1%} of the target; the closest one is returned"
    ]


MAX_PARAM_PANELS = 3


def pareto_plot(report: TuneReport, path: Path) -> Path:
    """Write :func:`pareto_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(report)
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def pareto_figure(report: TuneReport) -> Any:
    """Left: val top-1 against cost (MACs, or predicted latency; every completed trial, the
    front, the best, the dense model, the target). Right, one panel per tuned param (up to
    three): val top-1 against the sampled value, coloured by cost, so the picture says what the
    trials explored even when every trial exported the same cost and the front is one point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.params)[:MAX_PARAM_PANELS]
    fig, axes = plt.subplots(
        1, 1 + len(names), figsize=(6.4 + 3.6 * len(names), 4.6), squeeze=False
    )
    _front_panel(axes[0][0], report)
    scored = [r for r in report.rows if r["val_top1"] is not None]
    costs = [report.axis(r["cost"]) for r in scored if r["cost"] is not None]
    norm = matplotlib.colors.Normalize(min(costs, default=0), max(costs, default=1))
    mapped = None
    for ax, name in zip(axes[0][1:], names, strict=True):
        mapped = _param_panel(ax, report, scored, name, norm) or mapped
    if mapped is not None:
        label = f"exported model's {report.axis_label}"
        fig.colorbar(mapped, ax=list(axes[0][1:]), label=label, shrink=0.9)
    done = sum(r["state"] == "COMPLETE" for r in report.rows)
    mode = "Pareto front" if report.pareto else "budget mode"
    fig.suptitle(f"{report.study} ({mode}): {len(report.rows)} trials, {done} completed")
    if mapped is None:
        fig.tight_layout()
    return fig


def _front_panel(ax: Any, report: TuneReport) -> None:
    done = [r for r in report.rows if r["state"] == "COMPLETE" and r["val_top1"] is not None]
    front = [r for r in done if r["trial"] in report.front]
    feasible = [r for r in done if r["feasible"] is not False]
    infeasible = [r for r in done if r["feasible"] is False]
    ax.scatter(
        [report.axis(r["cost"]) for r in feasible],
        [100 * r["val_top1"] for r in feasible],
        c="tab:blue",
        alpha=0.6,
        label="trials",
    )
    if infeasible:
        ax.scatter(
            [report.axis(r["cost"]) for r in infeasible],
            [100 * r["val_top1"] for r in infeasible],
            facecolors="none",
            edgecolors="tab:gray",
            label=f"outside ±{report.tolerance:.0%} of target",
        )
    if front:
        ax.step(
            [report.axis(r["cost"]) for r in front],
            [100 * r["val_top1"] for r in front],
            where="post",
            c="tab:red",
            marker="o",
            label="Pareto front",
        )
    if report.best is not None:
        ax.scatter(
            [report.axis(report.best["cost"])],
            [100 * report.best["val_top1"]],
            marker="*",
            s=220,
            c="gold",
            edgecolors="black",
            zorder=5,
            label=f"best (trial {report.best['trial']})",
        )
    dense = report.dense
    if dense.get("cost") is not None and dense.get("val_top1") is not None:
        ax.scatter(
            [report.axis(dense["cost"])],
            [100 * dense["val_top1"]],
            marker="X",
            s=90,
            c="black",
            label="dense",
        )
    if report.target is not None:
        ax.axvline(report.axis(report.target), ls="--", c="tab:green", lw=1, label="target")
    distinct = {r["cost"] for r in done}
    if len(done) > 1 and len(distinct) == 1:
        what = "MACs" if not report.is_latency else "predicted"
        ax.annotate(
            f"all {len(done)} trials exported {report.describe(next(iter(distinct)))} {what}:\n"
            "the panels on the right show what they explored",
            xy=(0.5, 0.03),
            xycoords="axes fraction",
            ha="center",
            fontsize=8,
        )
    ax.set_xlabel(report.axis_label)
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"val top-1 vs {'MACs' if not report.is_latency else 'latency'}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _param_panel(
    ax: Any, report: TuneReport, rows: list[dict[str, Any]], name: str, norm: Any
) -> Any:
    """Val top-1 against one sampled param; returns the scatter (for the colour bar)."""
    values = [r["params"].get(name) for r in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        xs: list[float] = [float(v) for v in values]
    else:  # categorical: one position per choice, labelled
        choices = sorted({str(v) for v in values})
        xs = [float(choices.index(str(v))) for v in values]
        ax.set_xticks(range(len(choices)), choices)
    ys = [100 * r["val_top1"] for r in rows]
    with_cost = [i for i, r in enumerate(rows) if r["cost"] is not None]
    without = [i for i, r in enumerate(rows) if r["cost"] is None]  # pruned before a decision
    mapped = None
    if with_cost:
        mapped = ax.scatter(
            [xs[i] for i in with_cost],
            [ys[i] for i in with_cost],
            c=[report.axis(rows[i]["cost"]) for i in with_cost],
            cmap="viridis",
            norm=norm,
            marker="o",
            label=f"trials (colour: {'MACs' if not report.is_latency else 'latency'})",
        )
    if without:
        ax.scatter(
            [xs[i] for i in without],
            [ys[i] for i in without],
            c="tab:gray",
            marker="x",
            label="pruned (last val top-1)",
        )
    for x, y, row in zip(xs, ys, rows, strict=True):
        ax.annotate(
            str(row["trial"]), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    best = report.best
    if best is not None and best["params"].get(name) is not None and best["val_top1"] is not None:
        value = best["params"][name]
        x = float(value) if numeric else float(sorted({str(v) for v in values}).index(str(value)))
        ax.scatter(
            [x],
            [100 * best["val_top1"]],
            marker="*",
            s=220,
            facecolors="none",
            edgecolors="black",
            zorder=5,
            label=f"best (trial {best['trial']})",
        )
    positive = numeric and xs and min(xs) > 0
    if positive and max(xs) / min(xs) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_title(f"val top-1 vs {name} (number: trial)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return mapped


def copy_best(best: dict[str, Any], out: Path) -> str | None:
    """Copy the best trial's export into ``out``; a note when it lives on another machine."""
    host, _, folder = str(best.get("out") or "").partition(":")
    source = Path(folder)
    if host != socket.gethostname() or not (source / "model").is_dir():
        return f"the best trial's model is in {best.get('out')} (not on this machine)"
    for name in EXPORT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    shutil.copytree(source / "model", out / "model", dirs_exist_ok=True)
    return None


def write_results(report: TuneReport) -> None:
    out = report.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in report.rows]
    with atomic_path(out / "trials.csv") as temporary, open(temporary, "w", newline="") as handle:
        columns = ["trial", "state", *report.params, "val_top1", "test_top1", "macs", "cost"]
        columns += ["measured_ms", "macs_ratio", "target_error", "feasible", "params_count"]
        columns += ["speedup"]
        columns += ["seconds", "reason", "retry_of", "retried_as", "out"]
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            flat = {k: v for k, v in row.items() if k != "params"}
            writer.writerow({**flat, **row["params"]})
    summary = {
        "study": report.study,
        "storage": report.storage,
        "mode": "pareto" if report.pareto else "budget",
        "unit": report.unit,
        "target": report.target,
        "target_macs": None if report.is_latency else report.target,
        "tolerance": report.tolerance,
        "dense": report.dense,
        "best_trial": None if report.best is None else report.best["trial"],
        "distance_to_target": report.distance,
        "first_feasible_trial": next(
            (r["trial"] for r in rows if r["state"] == "COMPLETE" and r["feasible"]), None
        ),
        "front": report.front,
        "notes": report.notes,
        "trials": rows,
    }
    write_json(out / "tune.json", summary, indent=1)
    pareto_plot(report, out / "pareto.png")


def summary(report: TuneReport) -> str:
    """The lines the CLI prints after a tune."""
    names = report.params
    header = f"{'trial':>5s} {'state':8s} " + " ".join(f"{n[:12]:>12s}" for n in names)
    header += f" {'val top-1':>9s} {'test top-1':>10s} {'MACs':>9s}"
    if report.is_latency:
        header += f" {'pred ms':>8s} {'meas ms':>8s}"
    header += f" {'vs target':>9s} {'params':>9s}"
    what = "MACs" if not report.is_latency else "predicted latency"
    lines = [
        f"study {report.study} ({report.storage}), "
        + (f"Pareto: val top-1 up, {what} down" if report.pareto else "budget mode"),
        header,
    ]
    for row in report.rows:
        cells = " ".join(f"{format_value(row['params'][n]):>12s}" for n in names)
        val = "" if row["val_top1"] is None else f"{row['val_top1']:.2%}"
        test = "" if row["test_top1"] is None else f"{row['test_top1']:.2%}"
        macs = "" if row["macs"] is None else format_macs(row["macs"])
        error = "" if row["target_error"] is None else f"{row['target_error']:+.1%}"
        count = "" if row["params_count"] is None else f"{row['params_count'] / 1e6:.3f}M"
        mark = "*" if report.best is not None and row["trial"] == report.best["trial"] else " "
        line = f"{row['trial']:>4d}{mark} {row['state']:8s} {cells} {val:>9s} {test:>10s}"
        line += f" {macs:>9s}"
        if report.is_latency:
            line += f" {_ms(row['cost'], 1e3):>8s} {_ms(row['measured_ms'], 1):>8s}"
        line += f" {error:>9s} {count:>9s}"
        if row["reason"]:
            line += f"  {row['reason'][:80]}"
        if row["retried_as"] is not None:
            line += f" (retried as trial {row['retried_as']})"
        lines.append(line)
    if report.pareto:
        lines.append(f"Pareto front: trials {', '.join(map(str, report.front)) or '(none)'}")
    best = report.best
    if best is not None:
        where = f"target {report.describe(report.target)}, " if report.target else ""
        distance = "" if report.distance is None else f" ({report.distance:+.2%} from the target)"
        latency = ""
        if report.is_latency:
            latency = f", predicted {_ms(best['cost'], 1e3)} ms"
            if best.get("measured_ms") is not None:
                latency += f" (measured {_ms(best['measured_ms'], 1)} ms)"
        lines.append(
            f"best: trial {best['trial']}, val top-1 {best['val_top1']:.2%}, test top-1 "
            f"{best['test_top1']:.2%}, MACs {format_macs(best['macs'])}{latency}{distance}; "
            f"{where}model in {report.out / 'model'}"
        )
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def _ms(value: float | None, scale: float) -> str:
    return "" if value is None else f"{value * scale:.3g}"


def format_value(value: Any) -> str:
    """A sampled value in one short cell."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
