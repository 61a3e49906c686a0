"""Selection quality in isolation: which units each criterion keeps, judged with no training.

Zero-shot regime: on one dense reference, at each MACs budget, every criterion's subnet is
sliced from the dense weights (``automl_hiap.importance`` scores, ``select_to_budget`` under
the space's own units and constraints, ``round_to`` included) and evaluated as it is. Torch-
Pruning's global group magnitude and group Taylor (head dims + FFN neurons, bisected to the
same MACs, ``peer_torch_pruning``) and a random subnet (random scores, same greedy, same
constraints) sit in the same table. Seeds draw the calibration subset of the training split
(and the random scores); the test subset is fixed. Per criterion, the score normalization and
the MACs trade-off are chosen on seed 0 from a grid reported alongside (``--grid``).

    python bench/selection.py --budgets 0.5 0.67 --seeds 0 1 2

Writes ``<out>/selection.{md,json}`` and ``selection.png`` (top-1 vs MACs, mean ± sd).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))

import figures

from automl_hiap import importance
from automl_hiap.config import load_config
from automl_hiap.cost import subnet_cost, unit_macs
from automl_hiap.data import build_datasets
from automl_hiap.measure import throughput
from automl_hiap.plan import resolve
from automl_hiap.selection import select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.space import BlockKeep, Constraints, SearchSpace

DATA_CRITERIA = ("taylor", "fisher", "gradsq")
VARIANTS = [(n, t) for n in ("family", "none") for t in ("per_mac", "raw")]


def test_tensors(dataset: Any, count: int) -> tuple[Tensor, Tensor]:
    """A fixed subset of the test split (seed 0, independent of the method seeds)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count]
    items = [dataset[int(i)] for i in order]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


@torch.inference_mode()
def top1(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        logits = model(images[start : start + batch])
        correct += int((logits.argmax(-1) == labels[start : start + batch]).sum())
    return correct / len(labels)


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_scores(space: SearchSpace, seed: int) -> list[BlockKeep]:
    """Uniform random unit scores times the MACs each unit saves: the greedy's ratio is then
    the random score, so this is a random subnet under the same selection and constraints."""
    generator = torch.Generator().manual_seed(1000 + seed)
    result = []
    for shape, dense in zip(space.layers, space.dense_keep(), strict=True):
        values = {}
        for name, unit in importance.FAMILIES.items():
            draw = torch.rand(getattr(dense, name).shape, generator=generator, dtype=torch.float64)
            values[name] = draw * unit_macs(shape, space.tokens, unit)
        zero = torch.zeros((), dtype=torch.float64)
        head = values["qk"].sum(-1) + values["v"].sum(-1)
        result.append(BlockKeep(attn=zero, head=head, ffn=zero.clone(), **values))
    return result


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = resolve(load_config(args.space, []), check_budget=False)
        self.model = self.plan.model.eval()
        self.space = self.plan.space
        config = self.plan.config
        self.data = build_datasets(config.data, seed=config.train.seed)
        self.images, self.labels = test_tensors(self.data.test, args.test_images)
        self.dense_macs = self.plan.dense.macs
        self.dense_top1 = top1(self.model, self.images, self.labels)
        self.gradients: dict[int, importance.Gradients] = {}
        self.batches: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self.models: dict[str, nn.Module] = {}  # seed-0 models for the speed run

    def calibration(self, seed: int) -> importance.Gradients:
        if seed not in self.gradients:
            loader = importance.calibration_batches(
                self.data.train, self.args.calib_images, self.args.batch_size, seed
            )
            self.batches[seed] = [(x, y) for x, y in loader]
            self.gradients[seed] = importance.collect_gradients(self.model, self.batches[seed])
        return self.gradients[seed]

    def ours(
        self,
        criterion: str,
        budget: float,
        seed: int,
        normalize: str,
        tradeoff: str,
        space: SearchSpace | None = None,
    ) -> dict[str, Any]:
        space = space or self.space
        gradients = None if criterion == "energy" else self.calibration(seed)
        weights = importance.weight_scores(self.model, criterion, gradients)  # type: ignore[arg-type]
        scores = importance.unit_scores(space, weights, normalize, tradeoff)  # type: ignore[arg-type]
        return self.subnet_row(space, scores, budget)

    def subnet_row(self, space: SearchSpace, scores: list[BlockKeep], budget: float) -> dict:
        subnet = select_to_budget(space, scores, budget * self.dense_macs)
        pruned = slice_subnet(self.model, subnet, self.plan.spec)
        cost = subnet_cost(space, subnet)
        return {
            "top1": top1(pruned, self.images, self.labels),
            "macs": cost.macs,
            "params": params_of(pruned),
            "model": pruned,
        }

    def peer(self, importance_name: str, budget: float, seed: int) -> dict[str, Any]:
        from peer_torch_pruning import count_macs, prune_with_torch_pruning

        batches = None
        if importance_name == "taylor":
            self.calibration(seed)
            batches = self.batches[seed]
        size = self.plan.config.data.image_size
        pruned = prune_with_torch_pruning(
            copy.deepcopy(self.model),
            torch.randn(1, 3, size, size),
            budget * self.dense_macs,
            importance_name,  # type: ignore[arg-type]
            batches,
            global_pruning=True,
        )
        return {
            "top1": top1(pruned, self.images, self.labels),
            "macs": count_macs(pruned),
            "params": params_of(pruned),
            "model": pruned,
        }


def summarize(rows: list[dict[str, Any]], dense: float) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rs in groups.items():
        accs = [r["top1"] for r in rs]
        out.append(
            {
                "method": method,
                "budget": budget,
                "seeds": len(rs),
                "top1_mean": statistics.mean(accs),
                "top1_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "macs_mean": statistics.mean(r["macs"] for r in rs),
                "macs_ratio": statistics.mean(r["macs"] for r in rs) / dense,
                "params_mean": statistics.mean(r["params"] for r in rs),
                "speedup": rs[0].get("speedup"),
            }
        )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| method | budget | top-1 (mean ± sd) | seeds | MACs | of dense | params | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        speed = "—" if s["speedup"] is None else f"{s['speedup']:.2f}×"
        lines.append(
            f"| {s['method']} | {s['budget']:g} | {100 * s['top1_mean']:.1f} ± "
            f"{100 * s['top1_sd']:.1f} | {s['seeds']} | {s['macs_mean'] / 1e6:.1f} M | "
            f"{s['macs_ratio']:.1%} | {s['params_mean'] / 1e6:.3f} M | {speed} |"
        )
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], dense: tuple[float, float], path: Path) -> None:
    fig, ax = figures.panel()
    for name in dict.fromkeys(s["method"] for s in summary):
        mine = sorted((s for s in summary if s["method"] == name), key=lambda s: s["macs_mean"])
        ax.errorbar(
            [s["macs_mean"] / 1e6 for s in mine],
            [100 * s["top1_mean"] for s in mine],
            yerr=[100 * s["top1_sd"] for s in mine],
            fmt="o-",
            capsize=3,
            label=name,
        )
    ax.plot([dense[0] / 1e6], [100 * dense[1]], "k*", markersize=12, label="dense")
    top1 = "test top-1 (%), no training"
    figures.save(fig, ax, path, "MACs (M)", top1, "zero-shot selection quality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/vit_tiny6_cifar10.yaml")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.67])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch")
    parser.add_argument("--criteria", nargs="+", default=["energy", *DATA_CRITERIA])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="criterion:normalize:tradeoff fixed instead of the grid (e.g. taylor:none:per_mac)",
    )
    parser.add_argument("--peers", nargs="*", default=["magnitude", "taylor"])
    parser.add_argument("--peer-seeds", type=int, help="seeds for TP taylor (default: all)")
    parser.add_argument("--random-seeds", type=int, help="seeds of the random floor (all)")
    parser.add_argument("--no-probe", action="store_true", help="skip the round_to 1 probe")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    bench = Bench(args)
    print(f"dense top-1 {bench.dense_top1:.4f}, {bench.dense_macs / 1e6:.1f} M MACs", flush=True)
    rows: list[dict[str, Any]] = []
    grid: list[dict[str, Any]] = []

    def record(method: str, budget: float, seed: int, result: dict[str, Any], **extra: Any) -> None:
        model = result.pop("model")
        if seed == args.seeds[0]:
            bench.models[f"{method}@{budget:g}"] = model
        rows.append({"method": method, "budget": budget, "seed": seed, **result, **extra})
        print(
            f"  {method:28s} {budget:g} seed {seed}: {result['top1']:.4f} "
            f"{result['macs'] / bench.dense_macs:.3f}",
            flush=True,
        )

    # 1. per criterion, normalize x tradeoff on the first seed: pick by mean over budgets
    chosen: dict[str, tuple[str, str]] = {}
    fixed = {v.split(":")[0]: (v.split(":")[1], v.split(":")[2]) for v in args.variants}
    for criterion in args.criteria:
        if criterion in fixed:
            chosen[criterion] = fixed[criterion]
            continue
        means = {}
        for normalize, tradeoff in VARIANTS:
            accs = []
            for budget in args.budgets:
                r = bench.ours(criterion, budget, args.seeds[0], normalize, tradeoff)
                r.pop("model")
                grid.append(
                    {
                        "criterion": criterion,
                        "normalize": normalize,
                        "tradeoff": tradeoff,
                        "budget": budget,
                        **r,
                    }
                )
                accs.append(r["top1"])
                print(
                    f"  grid {criterion}/{normalize}/{tradeoff} {budget:g}: {r['top1']:.4f}",
                    flush=True,
                )
            means[(normalize, tradeoff)] = statistics.mean(accs)
        chosen[criterion] = max(means, key=lambda k: means[k])
    # 2. the table: every criterion with its chosen variant, the peers, the random floor
    for budget in args.budgets:
        for criterion in args.criteria:
            normalize, tradeoff = chosen[criterion]
            seeds = args.seeds[:1] if criterion == "energy" else args.seeds  # data-free
            for seed in seeds:
                r = bench.ours(criterion, budget, seed, normalize, tradeoff)
                record(
                    f"ours: {criterion} ({normalize}, {tradeoff})",
                    budget,
                    seed,
                    r,
                    criterion=criterion,
                    normalize=normalize,
                    tradeoff=tradeoff,
                )
        if "magnitude" in args.peers:
            record(
                "torch-pruning: magnitude",
                budget,
                args.seeds[0],
                bench.peer("magnitude", budget, args.seeds[0]),
            )
        if "taylor" in args.peers:
            for seed in args.seeds[: args.peer_seeds]:
                record("torch-pruning: taylor", budget, seed, bench.peer("taylor", budget, seed))
        for seed in args.seeds[: args.random_seeds]:
            r = bench.subnet_row(bench.space, random_scores(bench.space, seed), budget)
            record("random subnet", budget, seed, r)
    # 3. the best data-driven criterion without the space's round_to (what rounding costs)
    probes: list[dict[str, Any]] = []
    best = max(
        (c for c in args.criteria),
        key=lambda c: statistics.mean(r["top1"] for r in rows if r.get("criterion") == c),
    )
    unrounded = SearchSpace.from_model(
        bench.model,
        bench.plan.config.space.units,
        Constraints(**(bench.plan.config.space.constraints.model_dump() | {"round_to": 1})),
    )
    for budget in [] if args.no_probe else args.budgets:
        for seed in args.seeds:
            r = bench.ours(best, budget, seed, *chosen[best], space=unrounded)
            r.pop("model")
            probes.append(
                {"method": f"ours: {best}, round_to 1", "budget": budget, "seed": seed, **r}
            )
            print(f"  probe round_to 1 {budget:g} seed {seed}: {r['top1']:.4f}", flush=True)
    # 4. speed: every seed-0 model against the dense one, side by side
    size = bench.plan.config.data.image_size
    speed = throughput({"dense": bench.model, **bench.models}, size, 64, repeats=5)
    for r in rows:
        key = f"{r['method']}@{r['budget']:g}"
        r["speedup"] = speed[key] / speed["dense"] if key in speed else None
    summary = summarize(rows, bench.dense_macs)
    probe_summary = summarize(probes, bench.dense_macs)
    header = (
        f"{args.space}: units {[u.value for u in bench.plan.config.space.units]}, constraints "
        f"{bench.plan.config.space.constraints.model_dump()}; dense top-1 "
        f"{bench.dense_top1:.2%} on {args.test_images} fixed test images, "
        f"{bench.dense_macs / 1e6:.1f} M MACs. Zero-shot: every subnet sliced from the dense "
        f"weights, no training. Calibration: {args.calib_images} training images per seed in "
        f"batches of {args.batch_size}, seeds {args.seeds} (energy and TP magnitude are "
        "data-free: one run). Torch-Pruning 1.6.1 global pruning of head dims + FFN neurons, "
        "ratio bisected to the MACs. Speed-up: batch 64, seed-0 models side by side with the "
        f"dense one; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Wall {time.perf_counter() - started:.0f} s."
    )
    grid_lines = [
        "| criterion | normalize | tradeoff | budget | top-1 (seed 0) |",
        "|---|---|---|---|---|",
    ]
    grid_lines += [
        f"| {g['criterion']} | {g['normalize']} | {g['tradeoff']} | {g['budget']:g} | "
        f"{100 * g['top1']:.1f} |"
        for g in grid
    ]
    text = (
        f"# Selection quality, zero-shot\n\n{header}\n\n{table(summary)}\n\n"
        + (
            f"## What round_to costs\n\nThe best criterion ({best}) in the same space with "
            f"round_to 1:\n\n{table(probe_summary)}\n\n"
            if probes
            else ""
        )
        + (
            "## Normalization and trade-off (seed 0; the table uses each criterion's best)\n\n"
            + "\n".join(grid_lines)
            + "\n"
            if grid
            else ""
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.md").write_text(text)
    (args.out / "selection.json").write_text(
        json.dumps(
            {
                "setup": header,
                "dense_top1": bench.dense_top1,
                "dense_macs": bench.dense_macs,
                "chosen": {c: list(v) for c, v in chosen.items()},
                "summary": summary,
                "rows": rows,
                "round_to_1": probe_summary,
                "grid": grid,
            },
            indent=1,
        )
    )
    plot(summary, (bench.dense_macs, bench.dense_top1), args.out / "selection.png")
    print(text)


if __name__ == "__main__":
    main()
