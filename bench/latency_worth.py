"""Is a latency budget worth it? Latency- vs MACs-targeted selection vs Torch-Pruning (CPU).

Issue #19's goal: at equal *measured* latency a latency-targeted search is at least as
accurate as a MACs-targeted one (3 seeds), and faster than Torch-Pruning's model of the same
top-1. Zero-shot protocol of ``bench/selection.py`` (its ``Bench``: the CIFAR-10 ViT-Tiny6
reference, 2,000 fixed test images, Taylor scores from 512 calibration images per seed,
``unit_scores(space, weights, 'none', 'per_mac')``), with this machine profiled at batch 1,
1 thread, float32 (``latency_table.profile``). Per seed the same scores are selected
(``select_to_budget``) to latency targets with ``cost=LatencyModel``, and to a sweep of MACs
fractions with the default MACs cost; Torch-Pruning's global group Taylor (that seed's
calibration batches) runs over the same MACs sweep. Every model of a seed and the dense one
are then timed in one interleaved measurement (``measure.time_calls``), and the curves are
compared at equal measured latency (piecewise-linear interpolation within each seed's sweep).

Scores: ``per_mac`` leaves unit scores as importance (no MACs factor), so the greedy divides
by what a step saves in the cost model's unit: importance per MAC under MACs, per second under
the latency model. That is how the magnitude and posttrain strategies use a latency budget
(``select_to_budget(..., cost=context.cost)`` on the same scores).

    python bench/latency_worth.py --quick     # smoke: 1 seed, 2 targets, 3 sweep points
    python bench/latency_worth.py             # the goal's protocol
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import figures
from selection import Bench, params_of, top1

from automl_hiap import importance
from automl_hiap.budget import Latency
from automl_hiap.cost import subnet_cost
from automl_hiap.latency import LatencyModel
from automl_hiap.latency_table import LatencyTable, profile
from automl_hiap.measure import load_average, time_calls
from automl_hiap.placement import Placement
from automl_hiap.selection import cheapest, select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.subnet import Subnet

RESULTS = Path(__file__).parent / "results"
METHODS = ("latency-targeted", "MACs-targeted", "torch-pruning taylor")
Point = tuple[float, float]  # (measured ms, top-1)


def interpolate(points: list[Point], x: float) -> float | None:
    """Top-1 at latency ``x`` on the piecewise-linear curve through ``points`` (sorted by
    latency); None outside the measured range (no extrapolation)."""
    pts = sorted(points)
    if not pts or not pts[0][0] <= x <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def latency_reaching(points: list[Point], accuracy: float) -> tuple[float | None, str]:
    """The least latency at which the curve through ``points`` reaches ``accuracy``, and how
    it is known: 'exact', 'at most' (the fastest point already reaches it) or 'never' (not even
    the slowest point, the dense model, does)."""
    pts = sorted(points)
    if pts[0][1] >= accuracy:
        return pts[0][0], "at most"
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if y0 < accuracy <= y1:
            return x0 + (x1 - x0) * (accuracy - y0) / (y1 - y0), "exact"
    return None, "never"


def row(method: str, seed: int, knob: float, model: nn.Module, bench: Bench, **extra: Any) -> dict:
    return {
        "method": method,
        "seed": seed,
        "knob": knob,  # latency target fraction, or MACs fraction
        "top1": top1(model, bench.images, bench.labels),
        "params": params_of(model),
        **extra,
    }


def run_seed(
    seed: int, bench: Bench, cost: LatencyModel, dense_s: float, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, nn.Module], float | None]:
    """Every model of one seed, evaluated, then timed together with the dense model."""
    space, spec = bench.space, bench.plan.spec
    weights = importance.weight_scores(bench.model, "taylor", bench.calibration(seed))
    scores = importance.unit_scores(space, weights, "none", "per_mac")
    rows, models = [], {"dense": bench.model}

    def ours(method: str, knob: float, subnet: Subnet, **extra: Any) -> None:
        model = slice_subnet(bench.model, subnet, spec).eval()
        models[f"{method}@{knob:g}"] = model
        predicted = cost.predict(space, subnet) * 1e3
        rows.append(row(method, seed, knob, model, bench, predicted_ms=predicted, **extra))
        rows[-1]["macs"] = subnet_cost(space, subnet).macs
        print(f"  seed {seed} {method:22s} {knob:.2f}: {rows[-1]['top1']:.4f}", flush=True)

    for fraction in args.targets:
        target = fraction * dense_s
        subnet = select_to_budget(space, scores, target, strict=False, cost=cost)
        ours(METHODS[0], fraction, subnet, target_ms=target * 1e3)  # strict=False: may miss
        rows[-1]["reached"] = rows[-1]["predicted_ms"] <= target * 1e3 * (1 + 1e-9)
    for fraction in [*args.fractions, 1.0]:
        ours(METHODS[1], fraction, select_to_budget(space, scores, fraction * bench.dense_macs))
    if seed in args.seeds[: args.tp_seeds]:
        for fraction in [*args.tp_fractions, 1.0]:
            started = time.perf_counter()
            try:
                result = bench.peer("taylor", fraction, seed)
            except ValueError as exc:  # below what its largest ratio reaches
                print(f"  seed {seed} {METHODS[2]:22s} {fraction:.2f}: skipped ({exc})")
                continue
            model = result.pop("model").eval()
            models[f"{METHODS[2]}@{fraction:g}"] = model
            rows.append(
                {"method": METHODS[2], "seed": seed, "knob": fraction, **result, "seconds": 0.0}
            )
            rows[-1]["seconds"] = time.perf_counter() - started
            print(f"  seed {seed} {METHODS[2]:22s} {fraction:.2f}: {result['top1']:.4f}")
    size = bench.plan.config.data.image_size
    with torch.inference_mode():
        x = torch.randn(1, 3, size, size)
        calls = {name: bound(m.eval(), x) for name, m in models.items()}
        timed = time_calls(
            calls, Placement(torch.device("cpu")), 1, args.repeats, 2, args.min_seconds
        )
    for r in rows:
        spread = timed.latency_ms(f"{r['method']}@{r['knob']:g}")
        r |= {"measured_ms": spread.median, "measured_iqr_ms": [spread.low, spread.high]}
        r["load_average"] = timed.load_average
    dense = timed.latency_ms("dense")
    rows.append(
        {
            "method": "dense",
            "seed": seed,
            "knob": 1.0,
            "top1": bench.dense_top1,
            "macs": bench.dense_macs,
            "params": params_of(bench.model),
            "measured_ms": dense.median,
            "measured_iqr_ms": [dense.low, dense.high],
            "load_average": timed.load_average,
        }
    )
    return rows, models, timed.load_average


def bound(model: nn.Module, x: torch.Tensor) -> Any:
    return lambda: model(x)


def profiled(bench: Bench, args: argparse.Namespace) -> tuple[LatencyTable, LatencyModel, float]:
    """This machine's table at the product's settings (batch 1, 1 thread), its cost model and
    the fastest subnet the space allows under it (seconds)."""
    space, size = bench.space, bench.plan.config.data.image_size
    settings = Latency(batch=1, threads=1)
    table = profile(bench.model, space, settings, size, args.points, args.profile_repeats)
    cost = LatencyModel(table, space)
    return table, cost, cost.predict(space, cheapest(space, cost))


def compare(rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """Per latency-targeted model: the MACs-targeted and Torch-Pruning curves of its seed at
    its measured latency, and Torch-Pruning's latency at its top-1."""
    out = []
    for seed in seeds:
        mine = [r for r in rows if r["seed"] == seed]
        curve = {
            m: [(r["measured_ms"], r["top1"]) for r in mine if r["method"] == m] for m in METHODS
        }
        dense = next(r for r in mine if r["method"] == "dense")
        for r in (r for r in mine if r["method"] == METHODS[0]):
            lat, acc = r["measured_ms"], r["top1"]
            macs_at = interpolate(curve[METHODS[1]], lat)
            tp = curve[METHODS[2]]
            tp_at = interpolate(tp, lat) if tp else None
            tp_lat, how = latency_reaching(tp, acc) if tp else (None, "not run")
            if how == "never":  # TP needs more than the dense model: a lower bound
                speed = dense["measured_ms"] / lat
            else:
                speed = None if tp_lat is None else tp_lat / lat
            out.append(
                {
                    "seed": seed,
                    "target_fraction": r["knob"],
                    "target_ms": r["target_ms"],
                    "predicted_ms": r["predicted_ms"],
                    "measured_ms": lat,
                    "landing": lat / r["target_ms"] - 1,
                    "landing_vs_dense": lat / dense["measured_ms"] / r["knob"] - 1,
                    "top1": acc,
                    "macs_top1_at_latency": macs_at,
                    "gain_over_macs": None if macs_at is None else acc - macs_at,
                    "tp_top1_at_latency": tp_at,
                    "tp_ms_at_top1": tp_lat,
                    "tp_reach": how,
                    "speedup_over_tp": speed,
                }
            )
    return out


def stat(values: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± sd`` of the known values (``n/k`` when some are unknown)."""
    known = [v * scale for v in values if v is not None]
    if not known:
        return "—"
    sd = statistics.stdev(known) if len(known) > 1 else 0.0
    text = f"{statistics.mean(known):.{digits}f} ± {sd:.{digits}f}"
    return text if len(known) == len(values) else f"{text} ({len(known)}/{len(values)})"


def summarize(comparisons: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    lines = [
        "| target (of dense) | target ms | measured ms | landing | landing vs dense | top-1 "
        "latency-targeted | top-1 MACs-targeted at same ms | gain (pts) | seeds ≥ | TP top-1 at "
        "same ms | TP ms at our top-1 | speed-up over TP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdict: dict[str, Any] = {"gains": [], "speedups": [], "reach": []}
    for fraction in dict.fromkeys(c["target_fraction"] for c in comparisons):
        cs = [c for c in comparisons if c["target_fraction"] == fraction]

        def get(key: str, cs: list[dict[str, Any]] = cs) -> list[Any]:
            return [c[key] for c in cs]

        gains = [g for g in get("gain_over_macs") if g is not None]
        speeds = [s for s in get("speedup_over_tp") if s is not None]
        verdict["gains"].append(statistics.mean(gains) if gains else math.nan)
        verdict["speedups"].append(statistics.mean(speeds) if speeds else math.nan)
        verdict["reach"] += get("tp_reach")
        reach = {h for h in get("tp_reach") if h != "exact"}
        note = f" ({', '.join(sorted(reach))})" if reach else ""
        lines.append(
            f"| {fraction:.0%} | {cs[0]['target_ms']:.2f} | {stat(get('measured_ms'), 1, 2)} | "
            f"{stat(get('landing'), 100)} % | {stat(get('landing_vs_dense'), 100)} % | "
            f"{stat(get('top1'), 100)} | {stat(get('macs_top1_at_latency'), 100)} | "
            f"{stat(get('gain_over_macs'), 100, 2)} | {sum(g >= 0 for g in gains)}/{len(cs)} | "
            f"{stat(get('tp_top1_at_latency'), 100)} | {stat(get('tp_ms_at_top1'), 1, 2)} | "
            f"{stat(get('speedup_over_tp'), 1, 2)}×{note} |"
        )
    return lines, verdict


def plot(rows: list[dict[str, Any]], seeds: list[int], path: Path) -> None:
    fig, ax = figures.panel()
    for method, color in zip(METHODS, ("C0", "C1", "C2"), strict=True):
        for seed in seeds:
            pts = sorted(
                (r["measured_ms"], 100 * r["top1"])
                for r in rows
                if r["method"] == method and r["seed"] == seed
            )
            if pts:
                label = f"{method} (seed {seed})" if seed == seeds[0] else None
                alpha = 1.0 if seed == seeds[0] else 0.35
                ax.plot(*zip(*pts, strict=True), "o-", color=color, alpha=alpha, label=label)
    dense = [r for r in rows if r["method"] == "dense"]
    ax.plot(
        [r["measured_ms"] for r in dense],
        [100 * r["top1"] for r in dense],
        "k*",
        markersize=11,
        label="dense (timm)",
    )
    latency, top1 = "measured latency (ms, batch 1, 1 thread)", "test top-1 (%), no training"
    title = "zero-shot ViT-Tiny6 CIFAR-10: top-1 vs measured latency"
    figures.save(fig, ax, path, latency, top1, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/vit_tiny6_cifar10.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--targets",
        nargs="+",
        type=float,
        default=[0.45, 0.55, 0.65, 0.75, 0.85],
        help="latency targets, fractions of the dense predicted latency",
    )
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=[0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95],
        help="MACs sweep of the MACs-targeted curve (+1.0)",
    )
    parser.add_argument(
        "--tp-fractions",
        nargs="+",
        type=float,
        default=[0.45, 0.55, 0.65, 0.8, 0.95],
        help="MACs sweep of Torch-Pruning (+1.0; it reaches about 0.41 at most)",
    )
    parser.add_argument("--tp-seeds", type=int, help="how many seeds run Torch-Pruning (all)")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved timing repeats")
    parser.add_argument("--min-seconds", type=float, default=0.1, help="per model per repeat")
    parser.add_argument("--points", type=int, default=5, help="profile grid points")
    parser.add_argument("--profile-repeats", type=int, default=5, help="as the core profiles")
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 2 min)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, help="rewrite the results of a saved JSON")
    args = parser.parse_args()
    if args.render is not None:
        write(json.loads(args.render.read_text()), args.out or args.render)
        return
    argv = " ".join(sys.argv[1:])
    if args.quick:
        args.seeds, args.targets, args.fractions = args.seeds[:1], [0.5, 0.75], [0.3, 0.6, 0.9]
        args.tp_fractions, args.repeats, args.min_seconds = [0.45, 0.7, 0.9], 3, 0.02
        args.test_images, args.calib_images = 200, 64
    out = args.out or (
        Path("/tmp/latency_worth_quick") if args.quick else RESULTS / "latency_worth"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    started, loads = time.perf_counter(), {"start": load_average()}
    bench = Bench(args)
    space = bench.space
    table, cost, fastest_s = profiled(bench, args)
    loads["profile"] = table.load_average
    dense_s = cost.predict(space, Subnet.dense(space))
    print(
        f"dense top-1 {bench.dense_top1:.4f}; predicted dense {dense_s * 1e3:.2f} ms, fixed "
        f"{table.fixed_ms:.2f} ms, fastest reachable {fastest_s * 1e3:.2f} ms",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        seed_rows, _, loads[f"seed {seed}"] = run_seed(seed, bench, cost, dense_s, args)
        rows += seed_rows
    loads["end"] = load_average()
    setup = {
        "command": f"python bench/latency_worth.py {argv}".strip(),
        "device": table.key.device, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "batch": 1, "dtype": "float32",
        "load_average": loads, "wall_seconds": time.perf_counter() - started,
        "space": args.space, "test_images": args.test_images, "calib_images": args.calib_images,
        "seeds": args.seeds, "fractions": args.fractions, "tp_fractions": args.tp_fractions,
        "repeats": args.repeats, "min_seconds": args.min_seconds,
        "dense_top1": bench.dense_top1, "dense_macs": bench.dense_macs,
        "dense_predicted_ms": dense_s * 1e3, "dense_profiled_ms": table.dense_ms,
        "fixed_ms": table.fixed_ms, "fastest_predicted_ms": fastest_s * 1e3,
        "in_model": table.in_model,
    }  # fmt: skip
    write({"setup": setup, "table": table.to_json(), "rows": rows}, out)


def write(payload: dict[str, Any], out: Path) -> None:
    """Compare, judge and write the .md, .json and .png (also from a saved JSON: --render)."""
    setup, rows = payload["setup"], payload["rows"]
    seeds, loads = setup["seeds"], setup["load_average"]
    comparisons = compare(rows, seeds)
    lines, verdict = summarize(comparisons)
    gains, speeds = verdict["gains"], verdict["speedups"]
    goal1 = all(g >= 0 for g in gains)
    goal2 = all(s > 1 for s in speeds) and "at most" not in verdict["reach"]
    text = [
        "# Is a latency budget worth it? (issue #19, zero-shot, CPU)",
        "",
        f"`{setup['command']}` on {setup['device']}, torch {setup['torch']}, 1 thread, batch 1, "
        f"float32; {setup['space']}, dense top-1 {setup['dense_top1']:.2%} on "
        f"{setup['test_images']} fixed test images, dense {setup['dense_predicted_ms']:.2f} ms "
        f"predicted / {setup['dense_profiled_ms']:.2f} ms profiled. Taylor scores from "
        f"{setup['calib_images']} calibration images per seed, seeds {seeds}; Torch-Pruning "
        f"global group Taylor on the same batches. MACs sweeps: ours {setup['fractions']}, "
        f"Torch-Pruning {setup['tp_fractions']}, both + 1.0. Latency: every model of a seed "
        f"timed in one interleaved run ({setup['repeats']} repeats of ≥ {setup['min_seconds']} "
        "s, median). Load average (1 min): "
        + ", ".join(f"{k} {'—' if v is None else f'{v:.2f}'}" for k, v in loads.items())
        + f". Wall {setup['wall_seconds'] / 60:.1f} min.",
        "",
        "Mean ± sd over seeds; the other curves are interpolated piecewise-linearly in measured "
        "latency within the same seed's sweep. Landing: measured over target; 'vs dense': "
        "measured over the dense model timed in the same run, over the target fraction (the "
        "machine's load drifts between profiling and measuring). Speed-up = TP's latency at our "
        "top-1 / ours ('never': not even TP's dense model reaches our top-1, the figure is "
        "dense / ours, a lower bound; 'at most': TP's fastest model already beats our top-1, "
        "TP reaches no lower MACs, the figure is an upper bound).",
        "",
        *lines,
        "",
        f"**Goal 1** (latency-targeted ≥ MACs-targeted at equal measured latency): "
        f"{'met' if goal1 else 'missed'}; mean gain per target "
        + ", ".join(f"{100 * g:+.2f}" for g in gains)
        + " points.",
        f"**Goal 2** (faster than Torch-Pruning at equal top-1): {'met' if goal2 else 'missed'}; "
        "mean speed-up per target " + ", ".join(f"{s:.2f}×" for s in speeds) + ".",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(text) + "\n")
    payload |= {"goal1_met": goal1, "goal2_met": goal2, "comparisons": comparisons}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    plot(rows, seeds, out.with_suffix(".png"))
    print("\n".join(text))


if __name__ == "__main__":
    main()
