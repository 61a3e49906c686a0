"""Strategies side by side at equal training: top-1, MACs, params, speed-up, wall time.

Each (strategy, budget) pair is one ``automl_hiap search`` on the same space, with the same
number of training epochs in total (``EPOCHS`` maps that number onto each strategy's phases).
Runs are resumable: a finished run's metrics.json is read back, an interrupted one resumes from
its checkpoints. Writes ``<out>/compare.{md,json}`` and the top-1 vs MACs plot ``compare.png``.

    python bench/compare.py --space vit_tiny6_cifar10.yaml --budgets 0.67 0.5 \\
        --strategies hiap magnitude --epochs 3 --train-subset 10000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from automl_hiap.budget import parse_budget
from automl_hiap.config import load_config
from automl_hiap.search import run_search
from automl_hiap.trainer import EpochEnd

# total training epochs -> each strategy's own params (phases split as its paper splits them)
EPOCHS: dict[str, Callable[[int], dict[str, Any]]] = {
    "hiap": lambda e: {"epochs": e},
    "magnitude": lambda e: {"finetune_epochs": e},
    "sero": lambda e: {"explore_epochs": e // 2, "reopt_epochs": e - e // 2},
    "vtp": lambda e: {"search_epochs": e // 2, "finetune_epochs": e - e // 2},
    "gohsp": lambda e: {"admm_epochs": e // 2, "finetune_epochs": e - e // 2},
}


def log_epoch(event: EpochEnd) -> None:
    shown = {k: round(v, 4) for k, v in event.metrics.items()}
    print(f"  {event.phase} {event.epoch}/{event.epochs} {shown}", flush=True)


def run_one(
    space: str,
    strategy: str,
    budget: float,
    epochs: int,
    overrides: list[str],
    params: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    folder = out / "runs" / f"{strategy}_{budget:g}"
    done = folder / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    strategy_params = EPOCHS[strategy](epochs) | params.get(strategy, {})
    config = load_config(space, [*overrides, f"strategy.params={json.dumps(strategy_params)}"])
    started = time.perf_counter()
    report = run_search(
        config, folder, strategy, parse_budget(str(budget)), progress=False, listeners=[log_epoch]
    )
    metrics = report.metrics | {"wall_seconds": time.perf_counter() - started}
    done.write_text(json.dumps(metrics, indent=1))
    return metrics


def row(strategy: str, budget: float, m: dict[str, Any]) -> dict[str, Any]:
    d, p = m["dense"], m["pruned"]
    return {
        "strategy": strategy,
        "budget": budget,
        "top1": p["top1"],
        "dense_top1": d["top1"],
        "drop": d["top1"] - p["top1"],
        "macs": p["macs"],
        "macs_ratio": m["macs_ratio"],
        "params": p["params"],
        "speedup": m["speedup"],
        "search_seconds": m.get("search_seconds"),
        "wall_seconds": m.get("wall_seconds"),
        "repaired_units": m["strategy_metrics"].get("repaired_units"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | budget | top-1 | drop | MACs | of dense | params | speed-up | search s "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['budget']:g} | {r['top1']:.2%} | {r['drop']:+.2%} | "
            f"{r['macs'] / 1e6:.1f} M | {r['macs_ratio']:.1%} | {r['params'] / 1e6:.3f} M | "
            f"{r['speedup']:.2f}× | {r['search_seconds'] or 0:.0f} | {r['wall_seconds'] or 0:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], dense: tuple[float, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["strategy"] for r in rows}):
        mine = sorted((r for r in rows if r["strategy"] == name), key=lambda r: r["macs"])
        ax.plot([r["macs"] / 1e6 for r in mine], [100 * r["top1"] for r in mine], "o-", label=name)
    ax.plot([dense[0] / 1e6], [100 * dense[1]], "k*", markersize=12, label="dense")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.67, 0.5])
    parser.add_argument("--strategies", nargs="+", default=["hiap", "magnitude"])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per method")
    parser.add_argument("--train-subset", type=int, help="training images (default: all)")
    parser.add_argument(
        "--params", default="{}", help='JSON: per-strategy extra params, {"hiap": {...}}'
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare"))
    args = parser.parse_args()

    overrides = list(args.overrides)
    if args.train_subset:
        overrides.append(f"data.train_subset={args.train_subset}")
    params = json.loads(args.params)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, dense = [], (0.0, 0.0)
    for budget in args.budgets:
        for strategy in args.strategies:
            m = run_one(args.space, strategy, budget, args.epochs, overrides, params, args.out)
            rows.append(row(strategy, budget, m))
            dense = (m["dense"]["macs"], m["dense"]["top1"])
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    header = (
        f"{args.space}, {args.epochs} training epochs per method, train subset "
        f"{args.train_subset or 'all'}, overrides {overrides or 'none'}, params {params}; "
        f"dense top-1 {dense[1]:.2%}, {dense[0] / 1e6:.1f} M MACs; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    text = f"{header}\n\n{table(rows)}\n"
    (args.out / "compare.md").write_text(text)
    (args.out / "compare.json").write_text(json.dumps({"setup": header, "rows": rows}, indent=1))
    plot(rows, dense, args.out / "compare.png")
    print(text)


if __name__ == "__main__":
    main()
