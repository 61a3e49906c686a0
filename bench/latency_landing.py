"""Does a latency budget land? Full ``automl_hiap search`` runs, one per strategy, to one target.

Profiles this machine once (``automl_hiap profile``, the table every search then reads), sets a
target between the fastest allowed subnet and the dense model, and runs ``search`` for each
strategy with that budget through the command line, as a user would. Each search measures its
exported model on this machine (``metrics.json``'s ``latency``: predicted and measured median with
its interquartile range); the table here is read from those files. Training is short (a train
subset, few epochs): landing is about the structure a strategy exports, not its accuracy.

A shared machine changes speed between minutes, so the table (profiled first) can be off for
all models alike; the dense model, timed beside each export, shows by how much: "vs dense" is
the landing against the target scaled by the dense model's measured/predicted ratio.

    python bench/latency_landing.py                   # CIFAR ViT-Tiny6, batch 1, 1 thread
    python bench/latency_landing.py --collect         # the table again from the runs' files
    python bench/latency_landing.py --space test_vit.yaml --train-subset 64 --out /tmp/landing
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from automl_hiap.cli import main as cli
from automl_hiap.config import load_config
from automl_hiap.latency import LatencyModel
from automl_hiap.latency_table import LatencyTable
from automl_hiap.models import ModelSpec
from automl_hiap.selection import cheapest
from automl_hiap.space import SearchSpace
from automl_hiap.subnet import Subnet

RESULTS = Path(__file__).parent / "results"
SHORT = {  # each strategy's training cut short: landing does not depend on it
    "magnitude": [],
    "posttrain": [],
    "hiap": ["strategy.params.epochs=1"],
}


def reachable(space_file: str, table: Path) -> tuple[float, float]:
    """(fastest allowed subnet, dense) in seconds, as the table predicts them."""
    config = load_config(space_file, ["model.checkpoint=null"])
    model = ModelSpec(config.model.name, dict(config.model.kwargs)).create()
    space = SearchSpace.from_model(model, config.space.units, config.space.constraints)
    cost = LatencyModel(LatencyTable.read(table), space)
    return cost.predict(space, cheapest(space, cost)), cost.predict(space, Subnet.dense(space))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--strategies", nargs="+", default=list(SHORT))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--share", type=float, default=0.5, help="of the way fastest → dense")
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("runs/latency_landing"))
    parser.add_argument("--results", type=Path, default=RESULTS / "latency_landing")
    parser.add_argument("--collect", action="store_true", help="read the runs, search nothing")
    args = parser.parse_args()
    if args.collect:
        saved = json.loads(args.results.with_suffix(".json").read_text())
        rows = [row(name, args.out / name) for name in args.strategies]
        return write(args.results, saved["setup"], rows)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    table = args.out / "table.json"
    settings = ["--batch", str(args.batch), "--threads", str(args.threads)]
    assert cli(["profile", "--space", args.space, "--out", str(table), *settings]) == 0
    fastest, dense = reachable(args.space, table)
    target = fastest + args.share * (dense - fastest)
    budget = (
        f"budget={{latency: {target * 1e3:.4f}ms, batch: {args.batch}, "
        f"threads: {args.threads}, table: {table}}}"
    )
    rows: list[dict[str, Any]] = []
    for name in args.strategies:
        out = args.out / name
        sets = [budget, f"data.train_subset={args.train_subset}", *SHORT.get(name, [])]
        if name == "posttrain":  # its calibration set must fit in the training split
            sets.append(f"strategy.params.calibration_images={min(2000, args.train_subset // 2)}")
        command = ["search", "--space", args.space, "--strategy", name, "--out", str(out)]
        command += ["--no-tracking", "--no-progress", *(a for s in sets for a in ("--set", s))]
        print("automl_hiap", " ".join(command), flush=True)
        assert cli(command) == 0
        rows.append(row(name, out))
    setup = {
        "space": args.space,
        "batch": args.batch,
        "threads": args.threads,
        "fastest_ms": fastest * 1e3,
        "dense_predicted_ms": dense * 1e3,
        "target_ms": target * 1e3,
        "train_subset": args.train_subset,
        "short": {k: SHORT.get(k, []) for k in args.strategies},
        "wall_seconds": time.perf_counter() - started,
        "device": LatencyTable.read(table).key.device,
    }
    write(args.results, setup, rows)


def row(strategy: str, out: Path) -> dict[str, Any]:
    """What one search's ``metrics.json`` says of its latency."""
    metrics = json.loads((out / "metrics.json").read_text())
    t = metrics["latency"]
    drift = t["dense_measured_ms"] / t["dense_predicted_ms"]  # the machine now vs profiled
    return {
        "strategy": strategy,
        "target_ms": t["target_ms"],
        "predicted_ms": t["predicted_ms"],
        "measured_ms": t["measured_ms"],
        "measured_iqr_ms": t["measured_iqr_ms"],
        "dense_predicted_ms": t["dense_predicted_ms"],
        "dense_measured_ms": t["dense_measured_ms"],
        "off_target": t["measured_ms"] / t["target_ms"] - 1,
        "off_target_vs_dense": t["measured_ms"] / (t["target_ms"] * drift) - 1,
        "macs_ratio": metrics["macs_ratio"],
        "top1": metrics["pruned"]["top1"],
        "load_average": metrics.get("load_average"),  # of the search's speed measurement
    }


def write(results: Path, setup: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    text = markdown(setup, rows)
    results.with_suffix(".md").write_text(text)
    print(text)


def markdown(setup: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Latency budgets: does a search land on the target? (CPU)",
        "",
        f"`python bench/latency_landing.py` on {setup['device']}: {setup['space']}, batch "
        f"{setup['batch']}, {setup['threads']} thread(s); reachable {setup['fastest_ms']:.3g} "
        f"(fastest allowed subnet) to {setup['dense_predicted_ms']:.3g} ms (dense), target "
        f"{setup['target_ms']:.3g} ms. One `automl_hiap search` per strategy (train subset "
        f"{setup['train_subset']}; short training: {setup['short']}); the exported model is "
        f"measured by the search itself. Wall {setup['wall_seconds']:.0f} s.",
        "",
        "| strategy | target ms | predicted ms | measured ms (IQR) | measured vs target | "
        "dense predicted / measured ms | vs dense | of dense MACs | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["measured_iqr_ms"]
        load = "—" if r["load_average"] is None else f"{r['load_average']:.1f}"
        lines.append(
            f"| {r['strategy']} | {r['target_ms']:.3g} | {r['predicted_ms']:.3g} | "
            f"{r['measured_ms']:.3g} ({low:.3g}–{high:.3g}) | {r['off_target']:+.1%} | "
            f"{r['dense_predicted_ms']:.3g} / {r['dense_measured_ms']:.3g} | "
            f"{r['off_target_vs_dense']:+.1%} | {r['macs_ratio']:.1%} | "
            f"{load} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
