"""HiAP's training-step overhead: a search step against a dense training step, side by side.

Four variants train the same model on the same batches: dense, dense + distillation teacher,
HiAP, HiAP + teacher. Each timed unit is ``Trainer.fit`` over a fixed number of steps, run in
interleaved rounds so machine noise hits every variant alike; the median per step is kept.
Writes ``bench/results/hiap_step_time.{md,json}``.

    python bench/hiap_step_time.py --space vit_tiny6_cifar10.yaml --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import automl_hiap as ah
from automl_hiap.config import DistillConfig, load_config
from automl_hiap.models import create_model
from automl_hiap.strategies.hiap import HiAPParams, HiAPSearch
from automl_hiap.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    config = load_config(args.space)
    m = config.model
    model = create_model(m.name, dict(m.kwargs), m.checkpoint, m.pretrained)
    space = ah.SearchSpace.from_model(model, config.space.units, config.space.constraints)
    batch, size = config.train.batch_size, config.data.image_size
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(batch * args.steps, 3, size, size, generator=gen),
        torch.randint(0, 10, (batch * args.steps,), generator=gen),
    )
    teacher = copy.deepcopy(model).eval()
    distill = config.train.distill or DistillConfig()
    plain = config.train.model_copy(update={"distill": None})
    with_kd = config.train.model_copy(update={"distill": distill})

    def step_seconds(variant: str) -> float:
        kd = variant.endswith("+KD")
        trainer = Trainer(with_kd if kd else plain, data, teacher=teacher if kd else None)
        student = copy.deepcopy(model)
        hooks = None
        if variant.startswith("hiap"):
            target = 0.5 * ah.dense_cost(space).macs
            hooks = HiAPSearch(student, space, HiAPParams(), target, 0, trainer.device)
        started = time.perf_counter()
        trainer.fit(student, 1, phase=variant, hooks=hooks)
        if hooks is not None:
            hooks.close()
        return (time.perf_counter() - started) / args.steps

    variants = ["dense", "dense+KD", "hiap", "hiap+KD"]
    step_seconds("dense")  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            times[variant].append(step_seconds(variant))
    median = {v: statistics.median(t) for v, t in times.items()}
    ratios = {
        "hiap / dense": median["hiap"] / median["dense"],
        "hiap+KD / dense+KD": median["hiap+KD"] / median["dense+KD"],
        "hiap+KD / dense": median["hiap+KD"] / median["dense"],
    }
    setup = (
        f"{args.space}: batch {batch}, {args.steps} steps x {args.rounds} interleaved rounds, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    lines = [setup, "", "| variant | s / step |", "|---|---|"]
    lines += [f"| {v} | {median[v]:.3f} |" for v in variants]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f}× |" for k, v in ratios.items()]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hiap_step_time.md").write_text(text)
    (args.out / "hiap_step_time.json").write_text(
        json.dumps({"setup": setup, "seconds": times, "median": median, "ratios": ratios}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
