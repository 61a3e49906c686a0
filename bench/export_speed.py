"""CPU inference throughput of dense vs physically pruned (exported) ViTs.

What: for DeiT-Small (224 px) and the CIFAR ViT-Tiny (32 px, depth 6, patch 4), build pruned
subnets at ~75 % and ~50 % of the dense MACs, slice them with :func:`automl_hiap.slice_subnet`
(physically smaller weights, :class:`~automl_hiap.pruned_vit.PrunedBlock` blocks) and time
dense and pruned models side by side at several batch sizes.

Two kinds of subnet per target:

* **uniform** - every layer keeps all heads, the same q/k and v dims per head and the same FFN
  width (multiples of 8), so every layer runs one attention call and plain dense matmuls;
* **heterogeneous** - a :func:`~automl_hiap.subnet.random_subnet` over heads, q/k dims, v dims
  and neurons (multiples of 8): the first of a deterministic seeds x keep-ranges search within
  1 % of the target (else the closest within 3 %): uneven head counts, per-head widths and
  FFN widths.

Why: MACs are only a proxy. The figure of merit is the *efficiency*
``speed-up / (dense MACs / pruned MACs)``: 1.0 means the wall-clock gain matches the MACs
reduction; the target is >= 0.8 at batch 64. Uniform vs heterogeneous separates the cost of
having fewer MACs from the cost of irregular shapes (e.g. the zero-padding that lets
:class:`~automl_hiap.pruned_vit.PrunedAttention` run all heads of a layer in one fused attention
call; results committed before #16 had one call per distinct (q/k, v) head shape).

How: ``torch.inference_mode()``, a fixed thread count, warm-up forwards, then several timed
repeats; each repeat runs every model of a (model, batch) group once, in a rotating order, so
machine noise hits dense and pruned models alike. Each sample is the mean of enough forwards
to last ``--min-sample-s``; the reported time is the median sample. Heavy groups get fewer
repeats (``--group-budget-s``). The machine may be shared: on Linux, the script checks how much
CPU *other* processes used during each sample (``/proc/stat`` minus this process); a sample
during which they used more than ``--max-foreign-load`` cores is discarded and retried after
waiting for the machine to go quiet (bounded; counts are recorded in the JSON). By default
glibc is told to keep freed buffers (``--malloc tuned``, see :func:`tune_malloc`): stock glibc
page-faults every large activation in again on each forward, a cost that shrinks faster than
the MACs and would inflate speed-ups; ``--malloc default`` measures the stock behaviour.

Usage::

    python bench/export_speed.py            # full run (~4-5 min on 2 cores), writes bench/results
    python bench/export_speed.py --quick    # few-second smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import automl_hiap as ah  # first: makes timm importable on this machine
from automl_hiap.space import Constraints
from automl_hiap.subnet import HeadKeep, LayerKeep, Subnet, random_subnet

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
UNITS = ("head", "qk_dim", "v_dim", "neuron")
CONSTRAINTS = Constraints(round_to=8, min_head_dims=8, min_neuron_fraction=0.1)
TOLERANCE = 0.03  # heterogeneous subnets: |MACs ratio - target| <= 3 % of dense ...
ACCEPT = 0.01  # ... and the search stops at the first one within 1 %
# (keep_low, keep_high) ranges tried by the heterogeneous search, per seed
KEEP_RANGES = ((0.1, 1.0), (0.2, 1.0), (0.3, 1.0), (0.4, 1.0), (0.5, 1.0), (0.6, 1.0), (0.7, 1.0))
SEEDS = 40
ALLOCATOR = {
    True: "glibc with mmap/trim thresholds at 2 GiB (`--malloc tuned`): activation buffers are "
    "reused, not page-faulted in again every forward",
    False: "stock (`--malloc default`, or not glibc): glibc re-maps every buffer > 32 MiB on "
    "each forward",
}


@dataclass(frozen=True)
class Family:
    """A dense model to prune and the input resolution it takes."""

    key: str
    spec: ah.ModelSpec
    img_size: int
    batches: tuple[int, ...]


FAMILIES = {
    "deit_small": Family("deit_small", ah.ModelSpec("deit_small_patch16_224"), 224, (1, 64)),
    "vit_tiny_cifar": Family(
        "vit_tiny_cifar",
        ah.ModelSpec(
            "vit_tiny_patch16_224", dict(img_size=32, patch_size=4, depth=6, num_classes=10)
        ),
        32,
        (1, 64, 256),
    ),
}


@dataclass
class Variant:
    """One model timed in a group: the dense model or an exported subnet."""

    name: str
    kind: str  # dense / uniform / heterogeneous
    target: float
    macs: int
    params: int
    model: nn.Module = field(repr=False)
    shape: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- subnets
def uniform_subnet(space: ah.SearchSpace, dims: int, neurons: int) -> Subnet:
    """Every head of every layer keeps its first ``dims`` q/k and v dims; every FFN its first
    ``neurons`` neurons (which ones does not matter for speed)."""
    layers = []
    for shape in space.layers:
        kept = tuple(range(dims))
        heads = tuple(HeadKeep(h, kept, kept) for h in range(shape.num_heads))
        layers.append(LayerKeep(heads=heads, neurons=tuple(range(neurons))))
    return Subnet(tuple(layers)).validate(space)


def search_uniform(space: ah.SearchSpace, target: float) -> Subnet:
    """Per-head dims ~ the target share of block MACs (rounded to 8), then the FFN width (a
    multiple of 8) that brings the whole model closest to ``target`` x dense MACs."""
    dense = ah.dense_cost(space).macs
    shape = space.layers[0]
    if any(s != shape for s in space.layers):
        raise ValueError("uniform subnets need identical layers")
    share = (target * dense - space.fixed_macs) / (dense - space.fixed_macs)
    step, hidden = space.round_to, shape.mlp_hidden
    dims = min(shape.head_dim, max(step, round(share * shape.head_dim / step) * step))
    # MACs are linear in the FFN width: solve for it, then try the neighbouring multiples
    least = space.min_neurons(0)
    ends = (least, hidden)
    low, high = (ah.subnet_cost(space, uniform_subnet(space, dims, m)).macs for m in ends)
    width = least + (target * dense - low) / (high - low) * (hidden - least)
    base = round(width / step) * step
    near = {min(hidden, max(least, base + d)) for d in (-step, 0, step)}
    return min(
        (uniform_subnet(space, dims, m) for m in sorted(near)),
        key=lambda s: abs(ah.subnet_cost(space, s).macs / dense - target),
    )


class HeterogeneousSearch:
    """Random subnets over a fixed grid of seeds x keep ranges (deterministic, shared by all
    targets): the first within ``ACCEPT`` of a target wins, else the closest within
    ``TOLERANCE``."""

    def __init__(self, space: ah.SearchSpace) -> None:
        self.space = space
        self.dense = ah.dense_cost(space).macs
        self.cache: dict[tuple[int, float, float], tuple[Subnet, float]] = {}

    def candidate(self, seed: int, low: float, high: float) -> tuple[Subnet, float]:
        if (seed, low, high) not in self.cache:
            gen = torch.Generator().manual_seed(seed)
            subnet = random_subnet(self.space, gen, keep_low=low, keep_high=high, uniform=False)
            ratio = ah.subnet_cost(self.space, subnet).macs / self.dense
            self.cache[seed, low, high] = (subnet, ratio)
        return self.cache[seed, low, high]

    def find(self, target: float) -> tuple[Subnet, dict[str, Any]]:
        best: tuple[float, Subnet, dict[str, Any]] | None = None
        for seed in range(SEEDS):
            for low, high in KEEP_RANGES:
                subnet, ratio = self.candidate(seed, low, high)
                found = {"seed": seed, "keep_low": low, "keep_high": high}
                if abs(ratio - target) <= ACCEPT:
                    return subnet.validate(self.space), found
                if best is None or abs(ratio - target) < best[0]:
                    best = (abs(ratio - target), subnet, found)
        if best is None or best[0] > TOLERANCE:
            raise RuntimeError(f"no heterogeneous subnet within {TOLERANCE:.0%} of {target:.0%}")
        return best[1].validate(self.space), best[2]


def describe(subnet: Subnet) -> dict[str, Any]:
    """Shape summary: heads, distinct head shapes, widths per layer."""
    layers = subnet.layers
    groups = [len({(len(h.qk), len(h.v)) for h in layer.heads}) for layer in layers]
    return {
        "heads": [len(layer.heads) for layer in layers],
        "attn_calls": groups,
        "qk_total": [sum(len(h.qk) for h in layer.heads) for layer in layers],
        "v_total": [sum(len(h.v) for h in layer.heads) for layer in layers],
        "neurons": [len(layer.neurons) for layer in layers],
    }


def build_variants(family: Family, targets: list[float]) -> list[Variant]:
    torch.manual_seed(0)
    model = family.spec.create().eval()
    space = ah.SearchSpace.from_model(model, units=UNITS, constraints=CONSTRAINTS)
    dense = ah.dense_cost(space)
    full = describe(Subnet.dense(space))
    variants = [Variant("dense", "dense", 1.0, dense.macs, dense.params, model, full)]
    search = HeterogeneousSearch(space)
    for target in targets:
        het, found = search.find(target)
        for kind, subnet in (("uniform", search_uniform(space, target)), ("heterogeneous", het)):
            cost = ah.subnet_cost(space, subnet)
            pruned = ah.slice_subnet(model, subnet, family.spec).eval()
            real_params = sum(p.numel() for p in pruned.parameters())
            if real_params != cost.params:  # the exported model is the subnet the cost describes
                raise AssertionError(f"{kind}: exported {real_params} params, cost {cost.params}")
            shape = describe(subnet) | (found if kind == "heterogeneous" else {})
            name = f"{kind}@{target:.0%}"
            variants.append(Variant(name, kind, target, cost.macs, cost.params, pruned, shape))
    return variants


# ---------------------------------------------------------------------------- timing
def tune_malloc() -> bool:
    """glibc only: keep freed buffers in the heap (mmap and trim thresholds at 2 GiB).

    Stock glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so each forward page-faults its large activations in again
    (~700k minor faults per DeiT-Small batch-64 forward here). That cost grows faster than the
    MACs (smaller pruned activations drop under the threshold) and inflates speed-ups. Same as
    ``MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647``; True if applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, limit = -1, -3, 2**31 - 1
    mmap_ok = bool(libc.mallopt(m_mmap_threshold, limit))
    return bool(libc.mallopt(m_trim_threshold, limit)) and mmap_ok


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def forward_time(model: nn.Module, x: torch.Tensor, iters: int) -> float:
    """Mean seconds per forward over ``iters`` forwards."""
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    return (time.perf_counter() - start) / iters


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine incl. steal, CPU seconds of this process), or
    None where ``/proc/stat`` is unavailable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def foreign_load(before: tuple[float, float] | None, wall: float) -> float:
    """Cores' worth of CPU that other processes (or the hypervisor) used since ``before``."""
    after = cpu_seconds()
    if before is None or after is None or wall <= 0:
        return 0.0
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall


def wait_until_quiet(limit: float, max_wait_s: float) -> float:
    """Sleep until other processes use at most ``limit`` cores (or ``max_wait_s`` passed);
    returns the seconds waited."""
    waited = 0.0
    while waited < max_wait_s:
        before, start = cpu_seconds(), time.perf_counter()
        time.sleep(0.25)
        if foreign_load(before, time.perf_counter() - start) <= limit:
            break
        time.sleep(1.0)
        waited += 1.25
    return waited


def time_group(
    variants: list[Variant], x: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Warm up every model, then time them round-robin; seconds per forward, per model."""
    wait_until_quiet(args.max_foreign_load, args.max_wait_s)
    warm = {}
    for v in variants:
        for _ in range(args.warmup):
            warm[v.name] = forward_time(v.model, x, 1)
            if warm[v.name] > 2.0:  # a heavy forward: one warm-up is enough
                break
    iters = max(1, math.ceil(args.min_sample_s / warm["dense"]))
    round_s = iters * sum(warm.values())
    repeats = max(args.min_repeats, min(args.repeats, int(args.group_budget_s / round_s)))
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    faults: dict[str, list[float]] = {v.name: [] for v in variants}
    retried: list[float] = []  # foreign load during each discarded sample
    waited = 0.0
    for r in range(repeats):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            while True:
                before, start, faulted = cpu_seconds(), time.perf_counter(), minor_faults()
                seconds = forward_time(v.model, x, iters)
                faulted = minor_faults() - faulted
                load = foreign_load(before, time.perf_counter() - start)
                if load <= args.max_foreign_load or len(retried) >= args.max_retries:
                    break
                retried.append(round(load, 3))
                waited += wait_until_quiet(args.max_foreign_load, args.max_wait_s)
            samples[v.name].append(seconds)
            faults[v.name].append(faulted / iters)
        if round_s > 5:
            print(f"  repeat {r + 1}/{repeats} done ({len(retried)} samples retried)", flush=True)
    return {
        "iters_per_sample": iters,
        "repeats": repeats,
        "retried_samples_foreign_load": retried,
        "waited_s": waited,
        "samples_s": samples,
        "minor_page_faults_per_forward": faults,
    }


def rows_for(
    family: Family, variants: list[Variant], batch: int, timing: dict[str, Any]
) -> list[dict[str, Any]]:
    samples = timing["samples_s"]
    dense_v, dense_s = variants[0], samples["dense"]
    dense_med = statistics.median(dense_s)
    rows = []
    for v in variants[1:]:
        med = statistics.median(samples[v.name])
        speedup = dense_med / med
        macs_ratio = v.macs / dense_v.macs
        paired = statistics.median(d / p for d, p in zip(dense_s, samples[v.name], strict=True))
        rows.append(
            {
                "model": family.key,
                "kind": v.kind,
                "target": v.target,
                "macs_ratio": macs_ratio,
                "params_ratio": v.params / dense_v.params,
                "batch": batch,
                "dense_img_s": batch / dense_med,
                "pruned_img_s": batch / med,
                "speedup": speedup,
                "paired_speedup": paired,
                "efficiency": speedup * macs_ratio,
                "spread": spread(samples[v.name]),
                "dense_spread": spread(dense_s),
            }
        )
    return rows


def spread(values: list[float]) -> float:
    """(max - min) / median: how noisy the samples were."""
    return (max(values) - min(values)) / statistics.median(values)


# ---------------------------------------------------------------------------- reporting
def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | kind | target | MACs ratio | params ratio | batch | dense img/s "
        "| pruned img/s | speed-up | efficiency |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['model']} | {r['kind']} | {r['target']:.0%} | {r['macs_ratio']:.3f} "
        f"| {r['params_ratio']:.3f} | {r['batch']} | {r['dense_img_s']:.1f} "
        f"| {r['pruned_img_s']:.1f} | {r['speedup']:.2f}x | {r['efficiency']:.2f}"
        f"{'' if r['batch'] < 64 or r['efficiency'] >= 0.8 else ' (<0.8)'} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def subnet_table(subnets: list[dict[str, Any]]) -> str:
    head = (
        "| model | subnet | MACs ratio | heads/layer | attn calls/layer | qk dims/layer "
        "| v dims/layer | FFN width/layer |\n|---|---|---:|---|---|---|---|---|\n"
    )

    def span(values: list[int]) -> str:
        return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"

    lines = [
        f"| {s['model']} | {s['name']} | {s['macs_ratio']:.3f} | {span(s['shape']['heads'])} "
        f"| {span(s['shape']['attn_calls'])} | {span(s['shape']['qk_total'])} "
        f"| {span(s['shape']['v_total'])} | {span(s['shape']['neurons'])} |"
        for s in subnets
    ]
    return head + "\n".join(lines) + "\n"


def cpu_name() -> str:
    """Model name, family/model numbers and the widest SIMD (VMs often hide the full name)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "?")
    return (
        f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
        f"model {info.get('model', '?')}, {simd}{' + fma' if 'fma' in flags else ''})"
    )


def environment(threads: int) -> dict[str, Any]:
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
    }


def faults(timing: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {statistics.median(v):.0f}"
        for name, v in timing["minor_page_faults_per_forward"].items()
    )


def groups(timings: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  - {t['model']} batch {t['batch']}: {t['repeats']} repeats x "
        f"{t['iters_per_sample']} forwards per sample, "
        f"{len(t['retried_samples_foreign_load'])} samples retried, median minor page "
        f"faults per forward: {faults(t)}"
        for t in timings
    )


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    env, settings = report["environment"], report["settings"]
    text = f"""# Export speed: dense vs physically pruned ViTs (CPU)

Generated by `bench/export_speed.py`; raw numbers in `export_speed.json`.

Command: `{report["command"]}`

- torch {env["torch"]}, timm {env["timm"]}, Python {env["python"]}
- CPU: {env["cpu"]} ({env["logical_cpus"]} logical CPUs), `torch.set_num_threads({env["threads"]})`
- allocator: {ALLOCATOR[env["malloc_tuned"]]}
- fp32, `torch.inference_mode()`, random weights; up to {settings["warmup"]} warm-up
  forward(s) per model, then round-robin repeats (rotating order), each sample the mean of
  enough forwards to last >= {settings["min_sample_s"]} s; times are medians of the samples
- load average before / after: {report["loadavg_before"]} / {report["loadavg_after"]}; a
  sample is retried when other processes used > {settings["max_foreign_load"]} cores meanwhile:
{groups(report["timings"])}
- total runtime: {report["runtime_s"]:.0f} s

MACs ratio = pruned / dense MACs (analytical, `automl_hiap.subnet_cost`; the exported parameter
count is checked against the cost model). Speed-up = dense median time / pruned median time.
**Efficiency = speed-up / (dense MACs / pruned MACs)**; target >= 0.8 at batch 64.

{markdown_table(report["rows"])}
Subnets (per-layer ranges; "attn calls" = distinct (q/k, v) head shapes in a layer; since #16
`PrunedAttention` pads them to one width and makes one attention call per layer):

{subnet_table(report["subnets"])}"""
    path.write_text(text)


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few-second smoke run; writes nothing")
    p.add_argument("--out", type=Path, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--models", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.5])
    p.add_argument("--batches", nargs="+", type=int, help="override every model's batch sizes")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: glibc keeps activation buffers (no page faults per forward); default: stock",
    )
    p.add_argument("--warmup", type=int, default=2, help="warm-up forwards per model")
    p.add_argument("--repeats", type=int, default=15, help="timed samples per model (at most)")
    p.add_argument("--min-repeats", type=int, default=5, help="timed samples per model (at least)")
    p.add_argument("--min-sample-s", type=float, default=0.3, help="seconds per timed sample")
    p.add_argument(
        "--group-budget-s",
        type=float,
        default=60.0,
        help="aim for at most this long per (model, batch) group when choosing repeats",
    )
    p.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.15,
        help="retry a sample if other processes used more than this many cores meanwhile",
    )
    p.add_argument(
        "--max-retries", type=int, default=30, help="samples retried per (model, batch) group"
    )
    p.add_argument("--max-wait-s", type=float, default=60.0, help="per wait for a quiet machine")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = args.batches or [1, 2]
        args.warmup, args.repeats, args.min_repeats, args.min_sample_s = 1, 2, 2, 0.0
        args.max_retries, args.max_wait_s = 0, 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path | None = args.out or (None if args.quick else DEFAULT_OUT)
    torch.set_num_threads(args.threads)
    malloc_tuned = args.malloc == "tuned" and tune_malloc()
    started, load_before = time.perf_counter(), os.getloadavg()
    rows: list[dict[str, Any]] = []
    subnets: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    with torch.inference_mode():
        for key in args.models:
            family = FAMILIES[key]
            t0 = time.perf_counter()
            variants = build_variants(family, args.targets)
            print(f"{key}: built {len(variants) - 1} subnets in {time.perf_counter() - t0:.1f} s")
            for v in variants:
                subnets.append(
                    {
                        "model": key,
                        "name": v.name,
                        "kind": v.kind,
                        "target": v.target,
                        "macs": v.macs,
                        "params": v.params,
                        "macs_ratio": v.macs / variants[0].macs,
                        "params_ratio": v.params / variants[0].params,
                        "shape": v.shape,
                    }
                )
            for batch in args.batches or family.batches:
                x = torch.randn(batch, 3, family.img_size, family.img_size)
                t0 = time.perf_counter()
                timing = time_group(variants, x, args)
                group_rows = rows_for(family, variants, batch, timing)
                rows.extend(group_rows)
                timings.append({"model": key, "batch": batch, **timing})
                print(
                    f"{key} batch {batch}: {timing['repeats']} repeats x "
                    f"{timing['iters_per_sample']} forwards in {time.perf_counter() - t0:.1f} s"
                )
                for r in group_rows:
                    print(
                        f"  {r['kind']:>13} {r['target']:.0%}: MACs {r['macs_ratio']:.3f} "
                        f"speed-up {r['speedup']:.2f}x efficiency {r['efficiency']:.2f}"
                    )
    runtime = time.perf_counter() - started
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "environment": environment(args.threads) | {"malloc_tuned": malloc_tuned},
        "settings": {k: v for k, v in vars(args).items() if k not in {"out", "quick"}}
        | {"quick": args.quick, "constraints": CONSTRAINTS.model_dump(), "units": UNITS},
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "runtime_s": runtime,
        "rows": rows,
        "subnets": subnets,
        "timings": timings,
    }
    print()
    print(markdown_table(rows))
    print(f"total runtime {runtime:.0f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "export_speed.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        write_markdown(out / "export_speed.md", report)
        print(f"wrote {out / 'export_speed.md'} and {out / 'export_speed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
