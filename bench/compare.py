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
import copy
import itertools
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
    "sero": lambda e: {  # the paper's 1 warm-up epoch, unless exploration has only 1
        "explore_epochs": e // 2,
        "warmup_epochs": min(1, e // 2 - 1),
        "reopt_epochs": e - e // 2,
    },
    "gohsp": lambda e: {"admm_epochs": e // 2, "finetune_epochs": e - e // 2},
    "vtp": lambda e: {"sparse_epochs": e // 2, "finetune_epochs": e - e // 2},
    "nni": lambda e: {"finetune_epochs": e},
}
PEERS = {"tp-magnitude": "magnitude", "tp-taylor": "taylor"}  # Torch-Pruning's MetaPruner


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
    if strategy in PEERS:
        metrics = run_peer(space, PEERS[strategy], budget, epochs, overrides, folder)
        done.write_text(json.dumps(metrics, indent=1))
        return metrics
    strategy_params = EPOCHS[strategy](epochs) | params.get(strategy, {})
    config = load_config(space, [*overrides, f"strategy.params={json.dumps(strategy_params)}"])
    started = time.perf_counter()
    report = run_search(
        config, folder, strategy, parse_budget(str(budget)), progress=False, listeners=[log_epoch]
    )
    metrics = report.metrics.to_json() | {"wall_seconds": time.perf_counter() - started}
    done.write_text(json.dumps(metrics, indent=1))
    return metrics


def run_peer(
    space: str, importance: str, budget: float, epochs: int, overrides: list[str], folder: Path
) -> dict[str, Any]:
    """Torch-Pruning on the same model, budget, data, distillation and fine-tuning epochs."""
    from peer_torch_pruning import count_macs, prune_with_torch_pruning

    from automl_hiap.data import build_datasets
    from automl_hiap.measure import throughput
    from automl_hiap.plan import resolve
    from automl_hiap.trainer import Trainer

    started = time.perf_counter()
    plan = resolve(load_config(space, overrides), check_budget=False)
    config, model = plan.config, plan.model.eval()
    data = build_datasets(config.data, seed=config.train.seed)
    trainer = Trainer(config.train, data.train, data.val, folder / "checkpoints")
    trainer.listeners.append(log_epoch)
    if not plan.has_weights:  # as `search` does for weightless spaces
        trainer.fit(model, config.train.dense_epochs, phase="dense")
        model.eval()
    if config.train.distill is not None:
        trainer.teacher = copy.deepcopy(model).eval()
    dense_macs = count_macs(model)
    dense_top1 = trainer.evaluate(model, data.test)["top1"]
    size = config.data.image_size
    batches = None
    if importance == "taylor":  # Torch-Pruning's Taylor importance: gradients of 8 batches
        loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True)
        batches = list(itertools.islice(loader, 8))
    search_started = time.perf_counter()
    pruned = prune_with_torch_pruning(
        model, torch.randn(1, 3, size, size), budget * dense_macs, importance, batches
    )
    trainer.fit(pruned, epochs, phase="tp_finetune")
    search_seconds = time.perf_counter() - search_started
    pruned.eval()
    speed = throughput({"dense": model, "pruned": pruned}, size, 64)
    macs = count_macs(pruned)
    return {
        "strategy": f"torch-pruning ({importance})",
        "dense": {
            "top1": dense_top1,
            "macs": dense_macs,
            "params": sum(p.numel() for p in model.parameters()),
        },
        "pruned": {
            "top1": trainer.evaluate(pruned, data.test)["top1"],
            "macs": macs,
            "params": sum(p.numel() for p in pruned.parameters()),
        },
        "macs_ratio": macs / dense_macs,
        "speedup": speed["pruned"] / speed["dense"],
        "search_seconds": search_seconds,
        "wall_seconds": time.perf_counter() - started,
        "strategy_metrics": {},
    }


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


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


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
            f"{r['speedup']:.2f}× | {_seconds(r['search_seconds'])} | "
            f"{_seconds(r['wall_seconds'])} |"
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


def remeasure(space: str, overrides: list[str], rows: list[dict[str, Any]], out: Path) -> None:
    """Speed-ups of all exported models against the dense one, measured side by side in one
    interleaved run at the end (each search's own figure was taken while it ran, under
    whatever else the machine was doing)."""
    from automl_hiap.measure import throughput
    from automl_hiap.model_files import load
    from automl_hiap.models import create_model

    config = load_config(space, overrides)
    m = config.model
    models = {"dense": create_model(m.name, dict(m.kwargs), m.checkpoint, m.pretrained).eval()}
    for r in rows:
        folder = out / "runs" / f"{r['strategy']}_{r['budget']:g}" / "model"
        if folder.is_dir():
            models[folder.parent.name] = load(folder).eval()
    speed = throughput(models, config.data.image_size, 64, repeats=7)
    for r in rows:
        name = f"{r['strategy']}_{r['budget']:g}"
        if name in speed:
            r["speedup"] = speed[name] / speed["dense"]


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
    remeasure(args.space, overrides, rows, args.out)
    header = (
        f"{args.space}, {args.epochs} training epochs per method, train subset "
        f"{args.train_subset or 'all'}, overrides {overrides or 'none'}, params {params}; "
        f"dense top-1 {dense[1]:.2%}, {dense[0] / 1e6:.1f} M MACs; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; speed-ups: batch 64, every exported model against "
        "the dense one in one interleaved run after all searches"
    )
    text = f"{header}\n\n{table(rows)}\n"
    (args.out / "compare.md").write_text(text)
    (args.out / "compare.json").write_text(json.dumps({"setup": header, "rows": rows}, indent=1))
    plot(rows, dense, args.out / "compare.png")
    print(text)


if __name__ == "__main__":
    main()
