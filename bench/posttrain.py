"""Post-training pruning with no training at all: ``posttrain`` vs Torch-Pruning and magnitude.

On the dense CIFAR-10 reference ViT-Tiny6, for each budget (a fraction of the dense MACs),
every method prunes in one shot and is scored zero-shot on ``--test-images`` images
of the test split, a fixed seed-0 subset (calibration images come from the training split
only):

* dense;
* Torch-Pruning 1.6.1's MetaPruner, global pruning, magnitude (Group-L2) and Taylor importance
  (the Taylor gradients from 8 training batches of 32), via ``bench/peer_torch_pruning.py``;
* this project's ``magnitude`` (one shot, no fine-tuning);
* ``posttrain`` with the true labels and label-free, each without and with rearrangement, each
  without and with reconstruction.

Methods that read calibration data run once per seed (``--seeds``: the calibration subset, the
Taylor batches, the label-free draws) and report mean ± sd. The posttrain variants of one seed
and label mode share one Fisher pass: a variant's time to result is that pass plus its own
stages (selection, rearrangement, reconstruction, slicing). The default configuration is also
run end to end through ``Strategy.run`` (its wall time is the "end to end" column, and its
subnet and top-1 must equal the composed variant's). Speed-ups: every distinct structure (seed
0) against the dense model, batch 64, side by side in one interleaved run
(``automl_hiap.measure.throughput``).

    python bench/posttrain.py                      # writes bench/results/posttrain.{md,json}
    python bench/posttrain.py --seeds 0 --test-images 500 --calibration-images 500  # quicker
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from export_speed import tune_malloc  # beside this script
from peer_torch_pruning import count_macs, prune_with_torch_pruning
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from automl_hiap.config import load_config
from automl_hiap.cost import dense_cost, subnet_cost
from automl_hiap.data import build_datasets
from automl_hiap.measure import throughput
from automl_hiap.plan import resolve
from automl_hiap.selection import select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.strategies import posttrain as pt
from automl_hiap.strategies.magnitude import MagnitudeStrategy
from automl_hiap.strategy import SearchContext
from automl_hiap.trainer import Trainer


@torch.no_grad()
def top1(model: nn.Module, data: Dataset[Any]) -> float:
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(data, batch_size=500):
        correct += int((model(images).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / total


def test_subset(dataset: Dataset[Any], count: int) -> Subset[Any]:
    """A fixed subset of the test split: the first ``count`` of a seed-0 permutation (the
    split is stored by class; the seed is independent of the methods' seeds)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    return Subset(dataset, order[:count].tolist())


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall seconds."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def taylor_batches(train: Dataset[Any], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(
        train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    batches = []
    for images, labels in loader:
        batches.append((images, labels))
        if len(batches) == 8:
            break
    return batches


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def variant_name(labels: bool, rearrange: bool, reconstruct: str) -> str:
    parts = ["labels" if labels else "label-free"]
    parts.append("rearranged" if rearrange else "diagonal")
    parts.append("reconstructed" if reconstruct != "none" else "no reconstruction")
    return "posttrain (" + ", ".join(parts) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.67])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc()  # as bench/export_speed.py: no page-faulting per forward
    load_before = os.getloadavg()

    config = load_config(args.space, args.overrides)
    plan = resolve(config, check_budget=False)
    model, space, spec = plan.model.eval(), plan.space, plan.spec
    data = build_datasets(config.data, seed=config.train.seed)
    test = test_subset(data.test, args.test_images)
    trainer = Trainer(config.train, data.train, device="cpu")
    dense_macs = dense_cost(space).macs
    size = config.data.image_size
    dense_top1 = top1(model, test)
    print(f"dense: {dense_top1:.2%} on {len(test)} test images, {dense_macs / 1e6:.1f} M MACs")

    runs: list[dict[str, Any]] = []  # one entry per (method, budget, seed)
    speed_models: dict[str, nn.Module] = {"dense": model}

    def record(
        method: str,
        budget: float,
        seed: int | None,
        pruned: nn.Module,
        macs: float,
        seconds: float,
        structure: str | None = None,
        **extra: Any,
    ) -> None:
        """One result; its model joins the speed run once per distinct structure (seed 0)."""
        accuracy = top1(pruned, test)
        structure = structure or f"{method} @ {budget:g}"
        runs.append(
            {
                "method": method,
                "budget": budget,
                "seed": seed,
                "top1": accuracy,
                "macs": macs,
                "seconds": seconds,
                "structure": structure,
                **extra,
            }
        )
        if seed in (None, args.seeds[0]) and structure not in speed_models:
            speed_models[structure] = pruned.eval()
        print(
            f"{method} @ {budget:g} seed {seed}: {accuracy:.2%}, "
            f"{macs / dense_macs:.1%} MACs, {seconds:.0f} s",
            flush=True,
        )

    for budget in args.budgets:
        target = budget * dense_macs
        example = torch.randn(1, 3, size, size)
        pruned, seconds = timed(
            prune_with_torch_pruning, model, example, target, "magnitude", global_pruning=True
        )
        record("Torch-Pruning global magnitude", budget, None, pruned, count_macs(pruned), seconds)
        for seed in args.seeds:
            batches = taylor_batches(data.train, seed)
            pruned, seconds = timed(
                prune_with_torch_pruning,
                model,
                example,
                target,
                "taylor",
                batches,
                global_pruning=True,
            )
            record("Torch-Pruning global Taylor", budget, seed, pruned, count_macs(pruned), seconds)
        context = SearchContext(copy.deepcopy(model), spec, space, target, seed=0)
        result, seconds = timed(MagnitudeStrategy().run, context)
        record(
            "magnitude (one shot)",
            budget,
            None,
            result.model,
            subnet_cost(space, result.subnet).macs,
            seconds,
        )

    # posttrain: one Fisher pass per (seed, label mode), every variant from it
    defaults = pt.PostTrainParams(calibration_images=args.calibration_images)
    cpu = torch.device("cpu")
    composed: dict[tuple[float, int], tuple[Any, float]] = {}
    for seed in args.seeds:
        for labels in (True, False):
            loader = pt.calibration_loader(
                data.train, args.calibration_images, defaults.batch_size, seed
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                calibration, fisher_seconds = timed(
                    pt.collect_fisher, model, space, loader, labels, seed, True, cpu
                )
            scores = pt.fisher_scores(space, calibration)
            for budget in args.budgets:
                subnet, select_seconds = timed(select_to_budget, space, scores, budget * dense_macs)
                (moved, swaps), rearrange_seconds = timed(
                    pt.rearrange, space, subnet, calibration, defaults.max_swaps
                )
                for rearranged, chosen in ((False, subnet), (True, moved)):
                    for mode in ("none", "weights"):
                        weights = copy.deepcopy(model)
                        report, recon_seconds = timed(
                            pt.reconstruct,
                            weights,
                            space,
                            chosen,
                            calibration,
                            mode,
                            defaults.damping,
                            defaults.batch_size,
                        )
                        pruned, slice_seconds = timed(slice_subnet, weights, chosen, spec)
                        seconds = fisher_seconds + select_seconds + recon_seconds + slice_seconds
                        seconds += rearrange_seconds if rearranged else 0.0
                        name = variant_name(labels, rearranged, mode)
                        metrics = report.metrics()
                        record(
                            name,
                            budget,
                            seed,
                            pruned,
                            subnet_cost(space, chosen).macs,
                            seconds,
                            f"posttrain subnet {hash(chosen)}",
                            swaps=swaps if rearranged else 0,
                            fisher_seconds=fisher_seconds,
                            refit_error_ratio=metrics["posttrain_refit_error_ratio"],
                            damped_systems=metrics["posttrain_damped_systems"],
                        )
                        if labels and not rearranged and mode == defaults.reconstruct:
                            composed[(budget, seed)] = (chosen, runs[-1]["top1"])

    # the default configuration end to end, as `automl_hiap search` runs it
    end_to_end: dict[float, dict[str, Any]] = {}
    seed = args.seeds[0]
    for budget in args.budgets:
        context = SearchContext(
            copy.deepcopy(model), spec, space, budget * dense_macs, seed=seed, trainer=trainer
        )
        result, seconds = timed(pt.PostTrainStrategy(defaults).run, context)
        accuracy = top1(result.model, test)
        subnet, expected = composed[(budget, seed)]
        same = result.subnet == subnet and abs(accuracy - expected) < 1e-9
        if not same:
            print("warning: the end-to-end run differs from the composed stages", flush=True)
        end_to_end[budget] = {
            "seconds": seconds,
            "top1": accuracy,
            "metrics": result.metrics,
            "equals_composed": same,
        }
        print(f"posttrain end to end @ {budget:g}: {accuracy:.2%} in {seconds:.0f} s", flush=True)

    speeds = throughput(speed_models, size, 64, repeats=15, min_seconds=0.5)
    rows = summarize(runs, speeds, dense_top1, dense_macs, end_to_end, args)
    load_after = os.getloadavg()
    setup = {
        "space": args.space,
        "dense_top1": dense_top1,
        "dense_macs": dense_macs,
        "test_images": len(test),
        "calibration_images": args.calibration_images,
        "seeds": args.seeds,
        "params": defaults.model_dump(),
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average_before_after": [load_before[0], load_after[0]],
        "commit": _commit(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, setup)
    (args.out / "posttrain.md").write_text(text)
    (args.out / "posttrain.json").write_text(
        json.dumps({"setup": setup, "rows": rows, "runs": runs}, indent=1)
    )
    print(text)


def summarize(
    runs: list[dict[str, Any]],
    speeds: dict[str, float],
    dense_top1: float,
    dense_macs: float,
    end_to_end: dict[float, dict[str, Any]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows = [
        {
            "method": "dense",
            "budget": 1.0,
            "top1_mean": dense_top1,
            "top1_sd": 0.0,
            "seeds": 1,
            "macs_ratio": 1.0,
            "speedup": 1.0,
            "seconds": 0.0,
        }
    ]
    for budget in args.budgets:
        methods = dict.fromkeys(r["method"] for r in runs if r["budget"] == budget)
        for method in methods:
            mine = [r for r in runs if r["method"] == method and r["budget"] == budget]
            mean, sd = mean_sd([r["top1"] for r in mine])
            key = mine[0]["structure"]  # seed 0's (the one measured)
            row = {
                "method": method,
                "budget": budget,
                "top1_mean": mean,
                "top1_sd": sd,
                "top1_per_seed": [r["top1"] for r in mine],
                "seeds": len(mine),
                "macs_ratio": statistics.fmean(r["macs"] for r in mine) / dense_macs,
                "speedup": speeds[key] / speeds["dense"] if key in speeds else None,
                "seconds": statistics.fmean(r["seconds"] for r in mine),
            }
            if method == variant_name(True, False, "weights") and budget in end_to_end:
                row["end_to_end_seconds"] = end_to_end[budget]["seconds"]
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    lines = [
        f"{setup['space']}: zero-shot top-1 on {setup['test_images']} test images (a fixed "
        "seed-0 subset) "
        f"(dense {setup['dense_top1']:.2%}, {setup['dense_macs'] / 1e6:.1f} M MACs); "
        f"posttrain: {setup['calibration_images']} calibration images from the training split, "
        f"seeds {setup['seeds']} (calibration subsets; mean ± sd), params {setup['params']}; "
        f"{setup['machine']}, torch {setup['torch']}, {setup['threads']} threads, a shared "
        f"machine (load average {setup['load_average_before_after'][0]:.1f} at the start, "
        f"{setup['load_average_before_after'][1]:.1f} at the end); commit {setup['commit']}. "
        "Time to result: pruning to the budget (posttrain: its Fisher pass + selection "
        "[+ rearrangement] [+ reconstruction] + slicing; end to end: `Strategy.run`). "
        "Speed-up: batch 64, every distinct structure (seed 0) against the dense model, side by "
        "side in one interleaved run (reconstruction does not change a structure), glibc "
        "malloc thresholds as in bench/export_speed.py.",
        "",
        "| method | budget | top-1 | vs dense | MACs | speed-up | time to result |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    dense = rows[0]["top1_mean"]
    for r in rows:
        spread = f" ± {r['top1_sd']:.2%}" if r["seeds"] > 1 else ""
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        seconds = f"{r['seconds']:.0f} s" if r["method"] != "dense" else "—"
        if "end_to_end_seconds" in r:
            seconds += f" ({r['end_to_end_seconds']:.0f} s end to end)"
        lines.append(
            f"| {r['method']} | {r['budget']:g} | {r['top1_mean']:.2%}{spread} | "
            f"{r['top1_mean'] - dense:+.2%} | {r['macs_ratio']:.1%} | {speed} | {seconds} |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
