"""Selection quality, transplant regime (issue #14): every structure, one identical fine-tune.

Zero-shot top-1 (bench/selection.py) mixes the structure with how well the dense weights happen
to survive slicing; end-to-end runs mix it with each method's own training. Here each method
contributes only its *structure*: on the dense CIFAR-10 ViT-Tiny6 at each MACs budget, every
method's final subnet is cut from the dense weights (HiAP's and posttrain's own trained or
reconstructed weights are discarded; Torch-Pruning's pruned model already keeps the dense
weights) and fine-tuned by the same recipe: ``--steps`` steps of the space's training recipe
with KD from the dense model (``bench/posttrain.py``'s ``fine_tune``). A random subnet at the
same MACs with the same fine-tune is the floor that shows whether the regime measures
selection at all. Seeds set the calibration data of data-dependent methods, the random scores,
HiAP's run and the fine-tune's data order; the test subset is fixed. Speed-ups: every seed-0
structure against the dense model, batch 64, side by side in one interleaved run.

The same runs give the end-to-end regime at equal total steps: HiAP's own product after a
search of ``--steps`` steps (no fine-tune) against each one-shot method pruned from the dense
weights and fine-tuned ``--steps`` steps (its transplant row). ``--steps 150`` with its own
``--out`` is the longer schedule (over 4× the default 36).

    python bench/transplant.py                 # writes bench/results/transplant.{md,json,png}
    python bench/transplant.py --steps 150 --budgets 0.5 --hiap-steps 150 \
        --methods "magnitude (taylor)" "TP global Taylor" random HiAP \
        --out bench/results/transplant_long    # the longer schedule at one budget
    python bench/transplant.py --quick         # smoke run: 1 seed, 1 budget, tiny S, 200 images

Rows are written as they finish; a restart with the same protocol skips the rows done.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from export_speed import tune_malloc  # beside this script, as bench/posttrain.py imports
from peer_torch_pruning import count_macs, prune_with_torch_pruning
from posttrain import (
    MAGNITUDE_PARAMS,
    Setting,
    _commit,
    fine_tune,
    hiap_run,
    load_setting,
    mean_sd,
    taylor_batches,
    timed,
    top1,
)
from selection import random_scores, test_tensors
from torch import nn
from torch.utils.data import TensorDataset

from automl_hiap.cost import subnet_cost
from automl_hiap.measure import throughput
from automl_hiap.selection import select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.strategies import posttrain as pt
from automl_hiap.strategies.magnitude import MagnitudeParams, MagnitudeStrategy
from automl_hiap.strategy import SearchContext
from automl_hiap.subnet import Subnet

HIAP, TP_MAGNITUDE, TP_TAYLOR, RANDOM = "HiAP", "TP global magnitude", "TP global Taylor", "random"
# HiAP: one row per search length, "HiAP (N steps)"
METHODS = ("magnitude (taylor)", "posttrain (defaults)", HIAP, TP_MAGNITUDE, TP_TAYLOR, RANDOM)
Built = tuple[nn.Module, float, dict[str, Any]]  # the dense-weight model, its MACs, extras
_TP_MAGNITUDE: dict[float, nn.Module] = {}  # per budget: data-free, pruned once


def hiap_steps(method: str) -> int:
    """The search length a HiAP row's name states."""
    return int(method.removeprefix(f"{HIAP} (").removesuffix(" steps)"))


def order(method: str) -> tuple[int, int]:
    """Table order: METHODS', HiAP's rows by search length."""
    if method.startswith(HIAP):
        return METHODS.index(HIAP), hiap_steps(method)
    return METHODS.index(method), 0


def expand(method: str, steps: list[int]) -> list[str]:
    """``--methods``' HiAP means a row per ``--hiap-steps``."""
    return [f"{HIAP} ({n} steps)" for n in steps] if method == HIAP else [method]


def build_setting(space: str, test_images: int) -> Setting:
    """bench/posttrain.py's Setting, with the fixed test subset decoded once into tensors
    (the same seed-0 permutation, so the same images as posttrain's and selection's)."""
    return load_setting(space, [], lambda test: TensorDataset(*test_tensors(test, test_images)))


def from_subnet(s: Setting, subnet: Subnet, **extra: Any) -> Built:
    """The transplant: ``subnet`` cut from the dense weights, whatever trained it."""
    model = slice_subnet(s.model, subnet, s.spec)
    return model, subnet_cost(s.space, subnet).macs, {"subnet": subnet.describe(), **extra}


def build(s: Setting, method: str, budget: float, seed: int, args: argparse.Namespace) -> Built:
    """One method's structure at ``budget`` for ``seed``, on the dense weights."""
    target = budget * s.dense_macs
    example = torch.randn(1, 3, s.size, s.size)

    def context() -> SearchContext:
        model = copy.deepcopy(s.model)
        return SearchContext(model, s.spec, s.space, target, seed=seed, trainer=s.trainer)

    if method == "magnitude (taylor)":
        images = min(512, args.calibration)  # magnitude's default 512 (quick: fewer)
        params = MagnitudeParams(**MAGNITUDE_PARAMS, calibration_images=images)
        return from_subnet(s, MagnitudeStrategy(params).run(context()).subnet)
    if method == "posttrain (defaults)":
        params = pt.PostTrainParams(calibration_images=args.calibration)
        return from_subnet(s, pt.PostTrainStrategy(params).run(context()).subnet)
    if method.startswith(HIAP):
        result = hiap_run(s, budget, seed, hiap_steps(method))
        own = top1(result.model, s.test)  # its product: its own weights, no fine-tune
        repaired = result.metrics.get("repaired_units")
        return from_subnet(s, result.subnet, repaired_units=repaired, own_top1=own)
    if method == RANDOM:
        return from_subnet(s, select_to_budget(s.space, random_scores(s.space, seed), target))
    if method == TP_MAGNITUDE:  # data-free: one structure, fine-tuned under each seed
        if budget not in _TP_MAGNITUDE:
            _TP_MAGNITUDE[budget] = prune_with_torch_pruning(
                s.model, example, target, "magnitude", global_pruning=True
            )
        pruned = copy.deepcopy(_TP_MAGNITUDE[budget])
    else:
        batches = taylor_batches(s.data.train, seed)
        pruned = prune_with_torch_pruning(
            s.model, example, target, "taylor", batches, global_pruning=True
        )
    widths = [[b.attn.num_heads, b.attn.head_dim, b.mlp.fc1.out_features] for b in pruned.blocks]
    return pruned, count_macs(pruned), {"heads_headdim_neurons": widths}


def run_one(s: Setting, method: str, budget: float, seed: int, args: argparse.Namespace) -> Any:
    """Build, score zero-shot, fine-tune, score again: one row, and the (seed-0) model.

    The global RNG (the augmentations of a worker-less loader, HiAP's gate noise) is seeded
    before each stage, so a row depends on its seed alone, not on the rows run before it."""
    load = os.getloadavg()[0]
    torch.manual_seed(seed)
    (model, macs, extra), seconds = timed(build, s, method, budget, seed, args)
    zero_shot = top1(model, s.test)
    torch.manual_seed(seed)
    finetune_seconds = fine_tune(s, model, args.steps, seed)
    row = {
        "method": method,
        "budget": budget,
        "seed": seed,
        "macs": macs,
        "zero_shot": zero_shot,
        "top1": top1(model, s.test),
        "prune_seconds": seconds,
        "finetune_seconds": finetune_seconds,
        "load_average": load,
        "threads": torch.get_num_threads(),
        **extra,
    }
    print(
        f"{method} @ {budget:g} seed {seed}: zero-shot {zero_shot:.2%} -> {row['top1']:.2%}, "
        f"{macs / s.dense_macs:.1%} MACs, build {seconds:.0f} s, fine-tune "
        f"{finetune_seconds:.0f} s, load {load:.1f}",
        flush=True,
    )
    return row, model.eval()


def summarize(
    runs: list[dict[str, Any]], dense_macs: float, speeds: dict[str, float], steps: int
) -> list[dict[str, Any]]:
    """Mean ± sd per (budget, method) over seeds, with the seed-0 structure's speed-up."""
    rows = []
    for budget in sorted({r["budget"] for r in runs}):
        for method in sorted({r["method"] for r in runs if r["budget"] == budget}, key=order):
            mine = [r for r in runs if r["method"] == method and r["budget"] == budget]
            key = f"{method} @ {budget:g}"
            zs, zs_sd = mean_sd([r["zero_shot"] for r in mine])
            mean, sd = mean_sd([r["top1"] for r in mine])
            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "zero_shot_mean": zs,
                    "zero_shot_sd": zs_sd,
                    "top1_mean": mean,
                    "top1_sd": sd,
                    "top1_per_seed": [r["top1"] for r in mine],
                    "seeds": len(mine),
                    "macs_ratio": statistics.fmean(r["macs"] for r in mine) / dense_macs,
                    "speedup": speeds[key] / speeds["dense"] if key in speeds else None,
                }
            )
            if method.startswith(HIAP):  # how much of HiAP's subnet its repair decided
                rows[-1]["repaired_units"] = statistics.fmean(r["repaired_units"] for r in mine)
            rows[-1]["end_to_end"] = end_to_end(method, mine, steps)
    return rows


def end_to_end(method: str, mine: list[dict[str, Any]], steps: int) -> list[float] | None:
    """Mean and sd of the method's own pipeline at ``steps`` training steps in total: HiAP's
    product after an equally long search (its own weights, no fine-tune); a one-shot method
    that keeps the dense weights, pruned then fine-tuned, is its transplant row. None where
    that pipeline did not run: HiAP of another length, posttrain (its own pipeline keeps its
    reconstructed weights)."""
    if method.startswith(HIAP):
        own = [r.get("own_top1") for r in mine]
        if hiap_steps(method) != steps or None in own:
            return None
        return list(mean_sd(own))
    if method == "posttrain (defaults)":
        return None
    return list(mean_sd([r["top1"] for r in mine]))


Score = tuple[float, float]  # mean, sd


def transplanted(row: dict[str, Any]) -> Score | None:
    return row["top1_mean"], row["top1_sd"]


def own_pipeline(row: dict[str, Any]) -> Score | None:
    e2e = row.get("end_to_end")
    return None if e2e is None else (e2e[0], e2e[1])


def goals(rows: list[dict[str, Any]], budget: float, score: Callable[..., Score | None]) -> str:
    """The issue's goals at one budget under one regime's ``score``, in plain numbers: each
    HiAP row against every peer's mean − 1 sd, the best method against TP Taylor's mean."""
    mine = {r["method"]: v for r in rows if r["budget"] == budget and (v := score(r))}
    hiaps = [m for m in mine if m.startswith(HIAP)]
    if RANDOM not in mine or not hiaps or TP_TAYLOR not in mine:
        return "(not every method has run at this budget)"
    floor = mine[RANDOM]
    above = [f"{m} {100 * (v[0] - floor[0]):+.2f} pt" for m, v in mine.items() if m != RANDOM]
    peers = {m: v for m, v in mine.items() if m != RANDOM and m not in hiaps}
    goal = []
    for hiap in hiaps:
        margins = {m: mine[hiap][0] - (v[0] - v[1]) for m, v in peers.items()}
        missed = [f"{m} by {100 * -v:.2f} pt" for m, v in margins.items() if v < 0]
        goal.append(
            f"{hiap} ({100 * mine[hiap][0]:.2f} %) ≥ every peer's mean − 1 sd: "
            + ("yes" if not missed else "no, it misses " + ", ".join(missed))
            + f" (smallest margin {100 * min(margins.values()):+.2f} pt). "
        )
    best = max((m for m in mine if m != RANDOM), key=lambda m: mine[m][0])
    gap = mine[best][0] - mine[TP_TAYLOR][0]
    return (
        f"Against the random floor ({100 * floor[0]:.2f} ± {100 * floor[1]:.2f} %): "
        f"{'; '.join(above)}. "
        + "".join(goal)
        + f"Best method: {best} ({100 * mine[best][0]:.2f} %), {100 * gap:+.2f} pt against TP "
        f"Taylor's mean (sd {100 * mine[TP_TAYLOR][1]:.2f}; {'met' if gap >= 0 else 'missed'})."
    )


def verdict(rows: list[dict[str, Any]], budget: float) -> str:
    """What the fine-tune moved, HiAP's repairs, and the goals of the transplant regime."""
    mine = [r for r in rows if r["budget"] == budget]
    moved = "; ".join(
        f"{r['method']} {100 * (r['top1_mean'] - r['zero_shot_mean']):+.2f}" for r in mine
    )
    repairs = "; ".join(
        f"{r['method']} {r['repaired_units']:.0f}" for r in mine if "repaired_units" in r
    )
    return (
        f"The fine-tune moved zero-shot top-1 by (pt): {moved}. Units HiAP's repair changed "
        f"(mean over seeds): {repairs}. " + goals(rows, budget, transplanted)
    )


def markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    train, kd, load = setup["train"], setup["train"]["distill"], setup["load_average"]
    recipe = (
        f"{setup['steps']} steps, batch {train['batch_size']}, AdamW lr {train['lr']:g} (warm-up "
        f"{train['warmup_epochs']:g} epochs, cosine to 0), weight decay {train['weight_decay']:g}"
        f", label smoothing {train['label_smoothing']:g}, "
        + (f"KD from the dense model (α {kd['alpha']:g}, T {kd['temperature']:g})" if kd else "")
    )
    lines = [
        "# Selection quality, transplant regime",
        "",
        f"{setup['space']}: dense top-1 {setup['dense_top1']:.2%} on {setup['test_images']} "
        f"fixed test images (seed-0 subset), {setup['dense_macs'] / 1e6:.1f} M MACs. Every "
        "method's final structure is cut from the dense weights (HiAP's trained weights and "
        f"posttrain's reconstruction are discarded) and fine-tuned by one recipe: {recipe}; "
        f"seeds {setup['seeds']} (mean ± sd). HiAP (N steps): its subnet after an N-step run "
        "of the same recipe (one epoch, defaults otherwise). Calibration: posttrain "
        f"{setup['calibration']} images, magnitude {min(512, setup['calibration'])}, TP Taylor 8 "
        "batches of 32; TP (Torch-Pruning 1.6.1) magnitude is data-free (one structure, a "
        "fine-tune per seed). Peers of HiAP: every other method but the random floor. Speed-up: "
        "batch 64, the seed-0 structures side by side with the dense one in one interleaved run. "
        f"{setup['machine']}, torch {setup['torch']}, {setup['threads']} threads, load average "
        f"{load[0]:.1f} → {load[1]:.1f}; commit {setup['commit']}; wall "
        f"{setup['wall_seconds'] / 60:.0f} min.",
    ]
    for budget in sorted({r["budget"] for r in rows}):
        lines += [
            "",
            f"## {budget:.0%} of the dense MACs",
            "",
            f"| method | zero-shot top-1 | transplant top-1 | end to end ({setup['steps']} steps)"
            " | seeds | MACs | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in rows if r["budget"] == budget):
            speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
            e2e = own_pipeline(r)
            lines.append(
                f"| {r['method']} | {100 * r['zero_shot_mean']:.2f} ± {100 * r['zero_shot_sd']:.2f}"
                f" | {100 * r['top1_mean']:.2f} ± {100 * r['top1_sd']:.2f} | "
                + ("—" if e2e is None else f"{100 * e2e[0]:.2f} ± {100 * e2e[1]:.2f}")
                + f" | {r['seeds']} | {r['macs_ratio']:.1%} | {speed} |"
            )
        lines += [
            "",
            verdict(rows, budget),
            "",
            f"End to end at {setup['steps']} training steps in total (HiAP: its own weights after "
            "a search that long, no fine-tune; one-shot methods on the dense weights: pruned, "
            "then the fine-tune above): " + goals(rows, budget, own_pipeline),
        ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], dense_top1: float, path: Path) -> None:
    """Transplant top-1 per method and budget with ± 1 sd, zero-shot as hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = sorted({r["method"] for r in rows}, key=order)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        mine = {r["budget"]: r for r in rows if r["method"] == method}
        offset = (i - len(methods) / 2 + 0.5) * width
        xs = [x + offset for x, budget in enumerate(budgets) if budget in mine]
        got = [mine[budget] for budget in budgets if budget in mine]
        if not got:
            continue
        means, sds = [100 * r["top1_mean"] for r in got], [100 * r["top1_sd"] for r in got]
        bars = ax.errorbar(xs, means, yerr=sds, fmt="o", capsize=3, label=method)
        zero = [100 * r["zero_shot_mean"] for r in got]
        ax.plot(xs, zero, "o", mfc="none", color=bars[0].get_color())
    ax.axhline(100 * dense_top1, color="k", ls="--", lw=1, label="dense")
    ax.set_xticks(range(len(budgets)), [f"{b:.0%} MACs" for b in budgets])
    ax.set_ylabel("test top-1 (%): filled after the fine-tune, hollow zero-shot")
    ax.set_title("transplant: each structure from the dense weights, one fine-tune")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path) -> None:
    """transplant.{md,png} again from the JSON (the speed-ups as measured; nothing re-run)."""
    data = json.loads((out / "transplant.json").read_text())
    setup, runs = data["setup"], data["runs"]
    rows = [r for r in data["rows"] if r["speedup"] is not None]
    speeds = {f"{r['method']} @ {r['budget']:g}": r["speedup"] for r in rows}
    rows = summarize(runs, setup["dense_macs"], {"dense": 1.0, **speeds}, setup["steps"])
    (out / "transplant.md").write_text(markdown(rows, setup))
    plot(rows, setup["dense_top1"], out / "transplant.png")
    print(markdown(rows, setup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.67])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=36, help="fine-tune steps, every method")
    parser.add_argument("--hiap-steps", nargs="+", type=int, default=[36, 150], help="a row each")
    parser.add_argument("--calibration", type=int, default=2000, help="posttrain's images")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 budget, tiny S, 200 images")
    parser.add_argument("--fresh", action="store_true", help="replace results of another protocol")
    parser.add_argument("--out", type=Path, help="default bench/results (quick: /tmp)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/automl_hiap_transplant"))
    parser.add_argument("--report", action="store_true", help="re-render md/png from the JSON")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budgets, args.steps, args.hiap_steps = [0], [0.5], 3, [2]
        args.test_images, args.calibration = 200, 256
    out = args.out or Path("/tmp/transplant_quick" if args.quick else "bench/results")
    if args.report:
        return report(out)
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc()  # as bench/export_speed.py: no page-faulting per forward
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    fixed = ("space", "steps", "calibration", "test_images")  # a row's protocol
    protocol = {name: getattr(args, name) for name in fixed}
    path = out / "transplant.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = old.get("setup", {}).get("protocol") == protocol
    if old and not same and not args.fresh:  # a long run's rows are not dropped by a typo
        sys.exit(f"{path} holds protocol {old['setup']['protocol']}: --fresh replaces it")
    s = build_setting(args.space, args.test_images)
    print(f"dense: {s.dense_top1:.2%} on {len(s.test)} test images", flush=True)
    runs: list[dict[str, Any]] = old.get("runs", []) if same else []
    previous_wall = old.get("setup", {}).get("wall_seconds", 0.0) if same else 0.0
    commands = old.get("setup", {}).get("commands", []) if same else []  # each invocation's
    cache = args.cache / "_".join(f"{v}" for v in protocol.values()).replace("/", "-")
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "commit": _commit(),
        "commands": [*commands, " ".join([Path(sys.executable).name, *sys.argv])],
    }

    def save(speeds: dict[str, float]) -> list[dict[str, Any]]:
        """The results so far (JSON, markdown, plot): a long run keeps what it finished."""
        rows = summarize(runs, s.dense_macs, speeds, args.steps)
        setup = {
            "protocol": protocol,
            **protocol,
            "seeds": args.seeds,
            "budgets": args.budgets,
            "dense_top1": s.dense_top1,
            "dense_macs": s.dense_macs,
            "train": s.config.train.model_dump(),
            "magnitude_params": MAGNITUDE_PARAMS,
            **machine,
            "load_average": [load_start, os.getloadavg()[0]],
            "wall_seconds": previous_wall + time.perf_counter() - started,
        }
        path.write_text(json.dumps({"setup": setup, "rows": rows, "runs": runs}, indent=1))
        if rows:
            (out / "transplant.md").write_text(markdown(rows, setup))
            plot(rows, s.dense_top1, out / "transplant.png")
        return rows

    done = {(r["method"], r["budget"], r["seed"]) for r in runs}
    for budget in args.budgets:
        for method in (m for base in args.methods for m in expand(base, args.hiap_steps)):
            for seed in (seed for seed in args.seeds if (method, budget, seed) not in done):
                row, model = run_one(s, method, budget, seed, args)
                runs.append(row)
                if seed == args.seeds[0]:  # the structure measured for speed
                    torch.save(model, cache / f"{method}@{budget:g}.pt")
                save({})
    models: dict[str, nn.Module] = {"dense": s.model}
    for r in runs:  # every seed-0 structure of this protocol, this invocation's or an earlier's
        file = cache / f"{r['method']}@{r['budget']:g}.pt"
        if r["seed"] == args.seeds[0] and file.is_file():
            models[f"{r['method']} @ {r['budget']:g}"] = torch.load(file, weights_only=False)
    print(f"speed: {len(models)} models, batch 64, interleaved", flush=True)
    speeds = throughput(models, s.size, 64, *((3, 1, 0.1) if args.quick else (15, 2, 0.5)))
    print(markdown(save(speeds), json.loads(path.read_text())["setup"]))


if __name__ == "__main__":
    main()
