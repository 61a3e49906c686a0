"""How well the latency model predicts, and whether a latency budget lands (CPU).

For each space and batch size: profile the machine (``automl_hiap.latency_table.profile``), draw
random subnets (random unit scores, selected by the core to a random share of the MACs),
slice them, time them all in one interleaved measurement (the dense model too, so its row is
timed like the subnets, not taken from the profile), and compare with the prediction.
Landing: the core's selection (the path of magnitude and posttrain) to a latency target in
the middle of the reachable range, sliced and measured. Random weights: timing does not
depend on them. The load average is recorded next to every figure (a shared machine is noisy).

A shared machine also changes speed between minutes: profiling and measuring a minute apart,
every model can run 10 % faster or slower. Errors are given two ways: against the prediction as
it is, and against the prediction scaled by the dense model's measured/predicted ratio in the
same measurement ("vs dense"), which takes that drift out and leaves the model's own error.

    python bench/latency.py                       # the goal's protocol: 20 subnets, batch 1 and 64
    python bench/latency.py --subnets 3 --repeats 2 --points 2 --batches 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from automl_hiap.budget import Latency
from automl_hiap.config import load_config
from automl_hiap.cost import dense_cost
from automl_hiap.latency import LatencyModel
from automl_hiap.latency_table import profile, threads
from automl_hiap.measure import load_average, time_calls
from automl_hiap.models import ModelSpec
from automl_hiap.placement import Placement
from automl_hiap.selection import cheapest, select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.space import BlockKeep, SearchSpace
from automl_hiap.subnet import Subnet

RESULTS = Path(__file__).parent / "results"


def random_scores(space: SearchSpace, rng: torch.Generator) -> list[BlockKeep]:
    return [
        BlockKeep(
            attn=torch.rand((), generator=rng) * 50,
            ffn=torch.rand((), generator=rng) * 50,
            head=torch.rand(s.num_heads, generator=rng),
            qk=torch.rand(s.num_heads, s.head_dim, generator=rng),
            v=torch.rand(s.num_heads, s.head_dim, generator=rng),
            neuron=torch.rand(s.mlp_hidden, generator=rng),
        )
        for s in space.layers
    ]


def run_case(space_file: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(space_file, ["model.pretrained=false"])
    torch.manual_seed(0)
    model = ModelSpec(config.model.name, dict(config.model.kwargs)).create().eval()
    space = SearchSpace.from_model(model, config.space.units, config.space.constraints)
    size = config.data.image_size
    settings = Latency(batch=batch, threads=args.threads)
    started, load_before = time.perf_counter(), load_average()
    table = profile(model, space, settings, size, args.points, args.repeats)
    profile_s = time.perf_counter() - started
    cost = LatencyModel(table, space)
    rng = torch.Generator().manual_seed(args.seed)
    share = random.Random(args.seed)
    dense_macs = dense_cost(space).macs
    subnets = [
        select_to_budget(
            space, random_scores(space, rng), share.uniform(0.3, 1.0) * dense_macs, strict=False
        )
        for _ in range(args.subnets)
    ]
    fastest = cost.predict(space, cheapest(space, cost))
    dense_s = cost.predict(space, Subnet.dense(space))
    target = (fastest + dense_s) / 2
    landed = select_to_budget(space, random_scores(space, rng), target, cost=cost)
    with threads(table.key.threads), torch.inference_mode():
        x = torch.randn(batch, 3, size, size)
        models = {
            f"s{i}": slice_subnet(model, s, config_spec(config)).eval()
            for i, s in enumerate(subnets)
        }
        models["landed"] = slice_subnet(model, landed, config_spec(config)).eval()
        models["dense"] = slice_subnet(model, Subnet.dense(space), config_spec(config)).eval()
        calls = {name: bound(m, x) for name, m in models.items()}
        timed = time_calls(calls, Placement(torch.device("cpu")), batch, args.repeats, 1, 0.05)
    land, dense = timed.latency_ms("landed"), timed.latency_ms("dense")
    drift = dense.median / (dense_s * 1e3)  # the machine now vs when it was profiled
    rows: list[dict[str, Any]] = []
    for i, subnet in enumerate(subnets):
        predicted = cost.predict(space, subnet) * 1e3
        measured = timed.latency_ms(f"s{i}")
        rows.append(
            {
                "predicted_ms": predicted,
                "measured_ms": measured.median,
                "measured_iqr_ms": [measured.low, measured.high],
                "error": abs(predicted - measured.median) / measured.median,
                "error_vs_dense": abs(predicted * drift - measured.median) / measured.median,
            }
        )
    return {
        "space": space_file,
        "model": config.model.name,
        "batch": batch,
        "threads": table.key.threads,
        "device": table.key.device,
        "torch": table.key.torch,
        "profile_seconds": profile_s,
        "load_average": [load_before, timed.load_average, load_average()],
        "dense_predicted_ms": dense_s * 1e3,
        "dense_measured_ms": dense.median,  # with the subnets, not the profile's
        "dense_profiled_ms": table.dense_ms,
        "in_model": table.in_model,
        "median_error": statistics.median(r["error"] for r in rows),
        "median_error_vs_dense": statistics.median(r["error_vs_dense"] for r in rows),
        "subnets": rows,
        "landing": {
            "target_ms": target * 1e3,
            "predicted_ms": cost.predict(space, landed) * 1e3,
            "measured_ms": land.median,
            "measured_iqr_ms": [land.low, land.high],
            "off_target": land.median / (target * 1e3) - 1,
            "off_target_vs_dense": land.median / (target * 1e3 * drift) - 1,
        },
    }


def bound(model: torch.nn.Module, x: torch.Tensor) -> Any:
    return lambda: model(x)


def config_spec(config: Any) -> ModelSpec:
    return ModelSpec(config.model.name, dict(config.model.kwargs))


def command_line(args: argparse.Namespace) -> str:
    """The command that produced the results (the output path relative to bench/results)."""
    words = [f"--spaces {' '.join(args.spaces)}", f"--batches {' '.join(map(str, args.batches))}"]
    words += [f"--subnets {args.subnets}", f"--repeats {args.repeats}", f"--points {args.points}"]
    if args.threads is not None:
        words.append(f"--threads {args.threads}")
    out = Path(args.out)
    if out != RESULTS / "latency":
        words.append(
            f"--out bench/results/{out.relative_to(RESULTS)}"
            if out.is_relative_to(RESULTS)
            else f"--out {out}"
        )
    return "python bench/latency.py " + " ".join(words)


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Latency model: prediction error and landing (CPU)",
        "",
        f"`{command_line(args)}` on "
        f"{results[0]['device']}, torch {results[0]['torch']}, {results[0]['threads']} threads, "
        "random weights. Load average (1 min) before profiling / at the measurement / after.",
        "",
        "| space | batch | subnets | median \\|pred − meas\\| / meas | vs dense | "
        "dense pred / meas ms | landing: target / measured ms (off) | vs dense | profile s | "
        "load average |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        land = r["landing"]
        load = " / ".join("—" if v is None else f"{v:.1f}" for v in r["load_average"])
        lines.append(
            f"| {r['space']} | {r['batch']} | {len(r['subnets'])} | {r['median_error']:.1%} | "
            f"{r['median_error_vs_dense']:.1%} | "
            f"{r['dense_predicted_ms']:.3g} / {r['dense_measured_ms']:.3g} | "
            f"{land['target_ms']:.3g} / {land['measured_ms']:.3g} ({land['off_target']:+.1%}) | "
            f"{land['off_target_vs_dense']:+.1%} | {r['profile_seconds']:.0f} | {load} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spaces", nargs="+", default=["deit_small.yaml", "vit_tiny6_cifar10.yaml"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "latency"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    for space_file in args.spaces:
        for batch in args.batches:
            result = run_case(space_file, batch, args)
            print(
                f"{space_file} batch {batch}: median error {result['median_error']:.1%}, "
                f"landing {result['landing']['off_target']:+.1%}, load {result['load_average']}"
            )
            results.append(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=1)
    )
    out.with_suffix(".md").write_text(markdown(results, args))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
