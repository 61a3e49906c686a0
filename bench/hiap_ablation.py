"""HiAP's suspected weaknesses (issue #14), one controlled run each: same dense reference, data,
steps, budget and seeds, one setting changed from the defaults per row.

The hypotheses a code review gave for why HiAP trailed, and the setting that tests each:

* the final structure is trained least: ``noise_end`` 0.25 (the hardened structure trains for
  the last 75 % of the steps, not 50 %);
* macro gates were dropped in many steps of the high-lr half at ``gate_init`` 2 (keep-prob
  0.88, against 0.95 at the default 3): ``gate_init`` 2;
* heads are priced first (``micro_ratio`` 0.5 charges a q/k MAC twice a v or FFN MAC):
  ``micro_ratio`` 1;
* decisions are made late on few noisy gradients: the run length itself, which
  bench/transplant.py measures (36 against 150 steps);
* and, where the gates have not decided by the end, a large repair exports a structure the
  weights never trained: ``repair_at`` noise_end repairs when the noise ends and trains the
  repaired subnet for the rest (``--steps 36 --out bench/results/hiap_ablation_36``).

Each run is HiAP end to end at ``--steps`` steps of the space's recipe (bench/posttrain.py's
``hiap_run``): its product's top-1 (its own weights, no fine-tune), and its structure cut from
the dense weights unchanged (zero-shot: the quality of the structure alone).

    python bench/hiap_ablation.py            # writes bench/results/hiap_ablation.{md,json}

Rows are written as they finish; a restart with the same protocol skips the rows done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from posttrain import _commit, hiap_run, mean_sd, timed, top1
from transplant import build_setting, from_subnet

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "noise_end 0.25": {"noise_end": 0.25},
    "gate_init 2": {"gate_init": 2.0},
    "micro_ratio 1": {"micro_ratio": 1.0},
    "repair_at noise_end": {"repair_at": "noise_end"},
}


def run_one(s: Any, variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()[0]
    torch.manual_seed(seed)  # the loader's augmentations: a row depends on its seed alone
    params = VARIANTS[variant]
    result, seconds = timed(hiap_run, s, args.budget, seed, args.steps, **params)
    structure, macs, extra = from_subnet(s, result.subnet)
    kept = result.subnet.describe()
    row = {
        "variant": variant,
        "params": params,
        "seed": seed,
        "own_top1": top1(result.model, s.test),
        "zero_shot": top1(structure, s.test),
        "macs_ratio": macs / s.dense_macs,
        "hardened_macs": result.metrics.get("hardened_macs"),
        "repaired_units": result.metrics.get("repaired_units"),
        "heads": sum(layer["heads"] for layer in kept),
        "v_dims": sum(sum(layer["v_dims"]) for layer in kept),
        "neurons": sum(layer["neurons"] for layer in kept),
        "search_seconds": seconds,
        "load_average": load,
        **extra,
    }
    print(
        f"{variant} seed {seed}: own {row['own_top1']:.2%}, structure zero-shot "
        f"{row['zero_shot']:.2%}, {row['macs_ratio']:.1%} MACs, repaired "
        f"{row['repaired_units']:.0f}, {seconds:.0f} s, load {load:.1f}",
        flush=True,
    )
    return row


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for variant in (v for v in VARIANTS if any(r["variant"] == v for r in runs)):
        mine = [r for r in runs if r["variant"] == variant]
        own, own_sd = mean_sd([r["own_top1"] for r in mine])
        zs, zs_sd = mean_sd([r["zero_shot"] for r in mine])
        rows.append(
            {
                "variant": variant,
                "seeds": len(mine),
                "own_top1_mean": own,
                "own_top1_sd": own_sd,
                "zero_shot_mean": zs,
                "zero_shot_sd": zs_sd,
                **{
                    k: sum(r[k] for r in mine) / len(mine)
                    for k in ("macs_ratio", "repaired_units", "heads", "v_dims", "neurons")
                },
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    lines = [
        "# HiAP: one setting changed per row",
        "",
        f"{setup['space']}: dense top-1 {setup['dense_top1']:.2%} on {setup['test_images']} fixed "
        f"test images; HiAP end to end for {setup['steps']} steps of the space's recipe at "
        f"{setup['budget']:.0%} of the dense MACs, defaults but the row's setting; seeds "
        f"{setup['seeds']} (mean ± sd). Product: its own weights, no fine-tune. Structure: its "
        "subnet cut from the dense weights, no training. Kept counts: totals over the layers, "
        f"mean over seeds. {setup['machine']}, torch {setup['torch']}, {setup['threads']} "
        f"threads; commit {setup['commit']}; wall {setup['wall_seconds'] / 60:.0f} min.",
        "",
        "| variant | product top-1 | Δ vs defaults | structure zero-shot | repaired units | "
        "heads | v dims | neurons | MACs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r for r in rows if r["variant"] == "defaults"), None)
    for r in rows:
        gain = None if base is None else r["own_top1_mean"] - base["own_top1_mean"]
        delta = "—" if gain is None else f"{100 * gain:+.2f}"
        lines.append(
            f"| {r['variant']} | {100 * r['own_top1_mean']:.2f} ± {100 * r['own_top1_sd']:.2f} | "
            f"{delta} | {100 * r['zero_shot_mean']:.2f} ± {100 * r['zero_shot_sd']:.2f} | "
            f"{r['repaired_units']:.0f} | {r['heads']:.0f} | {r['v_dims']:.0f} | "
            f"{r['neurons']:.0f} | {r['macs_ratio']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=150, help="HiAP's search steps")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 seed, 200 images")
    parser.add_argument("--out", type=Path, help="default bench/results (quick: /tmp)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.test_images = 2, [0], 200
    out = args.out or Path("/tmp/hiap_ablation_quick" if args.quick else "bench/results")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    protocol = {k: getattr(args, k) for k in ("space", "budget", "steps", "test_images")}
    path = out / "hiap_ablation.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old and old["setup"]["protocol"] != protocol:
        sys.exit(f"{path} holds protocol {old['setup']['protocol']}: move it to run another")
    runs: list[dict[str, Any]] = old.get("runs", [])
    previous_wall = old.get("setup", {}).get("wall_seconds", 0.0)
    s = build_setting(args.space, args.test_images)
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["variant"], r["seed"]) for r in runs}
    for variant in args.variants:
        for seed in (seed for seed in args.seeds if (variant, seed) not in done):
            runs.append(run_one(s, variant, seed, args))
            setup = {
                "protocol": protocol,
                **protocol,
                "seeds": sorted({r["seed"] for r in runs}),
                "dense_top1": s.dense_top1,
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "commit": _commit(),
                "wall_seconds": previous_wall + time.perf_counter() - started,
            }
            rows = summarize(runs)
            path.write_text(json.dumps({"setup": setup, "rows": rows, "runs": runs}, indent=1))
            (out / "hiap_ablation.md").write_text(markdown(rows, setup))
    print((out / "hiap_ablation.md").read_text())


if __name__ == "__main__":
    main()
