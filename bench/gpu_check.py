"""The GPU check of issue #16: one command, under 8 minutes on one H200, that says whether the
path users take works on a GPU and how fast it is. Writes ``OUT/gpu_check.{md,json}``.

What it runs, in order (each section is timed; one that fails is recorded and the rest run):

1. **environment**: torch / CUDA / driver / GPU, the packages the run needs;
2. **gpu tests**: the test suite's ``gpu``-marked tests (``tests/test_gpu.py``);
3. **quickstart on CUDA**: README's quickstart (``digits.yaml``) through ``run_search``;
4. **CIFAR searches**: short hiap, sero and magnitude searches from the dense reference on the
   CIFAR-10 JPEGs, in bf16 (the default on CUDA), with their top-1 and measured speed-up;
5. **step time**: a training step of dense, dense + KD, HiAP, HiAP + KD on the CIFAR ViT-Tiny;
   checked: HiAP + KD <= 1.3x the dense step with the same teacher;
6. **export speed**: dense vs exported (uniform and heterogeneous subnets at 50 % of the MACs)
   DeiT-Small and the CIFAR ViT-Tiny at batch 1 / 64 / 256, bf16, CUDA events, against the
   ideal MACs ratio; DeiT-Small at batch 64 also compiled (``torch.compile``);
7. **torchrun smoke**: one process under torchrun: an NCCL all-reduce and a tiny search.

``--dry-run`` runs every section on the CPU at toy sizes (seconds; CI runs it after the tests)
and writes ``OUT/dry_run_cpu.{md,json}``, headed as a dry run: it checks that the script works,
not the numbers. The exit status is 1 if a section failed or, on a GPU, a checked figure missed.

Preparing a GPU session (the machine has torch, timm, safetensors, pyyaml, tqdm, matplotlib,
scikit-learn, pytest, hypothesis, onnx; not pydantic; no network): see bench/README.md. In
short, here::

    echo /.gpu_carry/ >> .git/info/exclude
    bash bench/gpu_carry.sh                      # wheels + CIFAR data + reference -> .gpu_carry/

and then one device run, carrying ``.gpu_carry``::

    bash bench/gpu_run.sh                        # installs, runs this script, copies to $OUT

Usage::

    python bench/gpu_check.py                    # on a GPU machine
    python bench/gpu_check.py --dry-run --out /tmp/gpu_dry
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import automl_hiap as ah  # first: makes timm importable on CPU-only torch builds
from automl_hiap.config import load_config
from automl_hiap.placement import Placement

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "gpu"
STEP_RATIO_LIMIT = 1.3  # HiAP + KD step time / dense + KD step time


@dataclass
class Sizes:
    """How big each section runs: the GPU check, or the CPU dry run."""

    quickstart: list[str]
    cifar_common: list[str]
    cifar_params: dict[str, list[str]]
    measure_batch: int
    step_space: str
    step_batch: int
    step_steps: int
    step_rounds: int
    export_families: list[str]
    export_batches: tuple[int, ...]
    compile_family: str
    compile_batch: int
    compile_backend: str
    tests_timeout: int


GPU = Sizes(
    quickstart=[],
    cifar_common=["data.train_subset=10000", "train.num_workers=8", "train.eval_batch_size=1024"],
    cifar_params={
        "hiap": ["strategy.params={epochs: 3, gate_lr: 0.1, gate_init: 2.0}"],
        "sero": [
            "strategy.params={explore_epochs: 2, warmup_epochs: 1, reopt_epochs: 1, mask_every: 8}"
        ],
        "magnitude": ["strategy.params={finetune_epochs: 1}"],
    },
    measure_batch=256,
    step_space="vit_tiny6_cifar10.yaml",
    step_batch=128,
    step_steps=30,
    step_rounds=3,
    export_families=["deit_small", "vit_tiny_cifar"],
    export_batches=(1, 64, 256),
    compile_family="deit_small",
    compile_batch=64,
    compile_backend="inductor",
    tests_timeout=150,
)
DRY = Sizes(
    quickstart=[
        "train.dense_epochs=1",
        "strategy.params.finetune_epochs=1",
        "data.train_subset=256",
    ],
    cifar_common=[  # the real data, a toy model (the 10 000 test images are scored twice)
        "model.kwargs={img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2, "
        "num_classes: 10}",
        "model.checkpoint=null",
        "train.dense_epochs=1",
        "data.train_subset=200",
        "train.batch_size=50",
        "train.eval_batch_size=1000",
    ],
    cifar_params={
        "hiap": ["strategy.params={epochs: 1}"],
        "sero": [
            "strategy.params={explore_epochs: 2, warmup_epochs: 1, reopt_epochs: 1, mask_every: 2}"
        ],
        "magnitude": ["strategy.params={finetune_epochs: 1}"],
    },
    measure_batch=4,
    step_space="test_vit.yaml",
    step_batch=8,
    step_steps=2,
    step_rounds=1,
    export_families=["toy"],
    export_batches=(1, 4),
    compile_family="toy",
    compile_batch=4,
    compile_backend="aot_eager",  # the code path, without a C++ compile on a CI machine
    tests_timeout=300,
)


@dataclass
class Check:
    """Everything the run learnt, section by section."""

    dry_run: bool
    out: Path
    deadline: float
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()


Section = Callable[[Check, Sizes, Placement], dict[str, Any]]


# ---------------------------------------------------------------------------- sections
def environment(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    import timm

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "cpus": os.cpu_count(),
        "device": str(placement.device),
        "amp": placement.amp,
    }
    for name in ("pydantic", "optuna", "mlflow", "safetensors", "onnx"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "present")
        except ImportError:
            info[name] = None
    if placement.is_cuda:
        props = torch.cuda.get_device_properties(placement.device)
        info |= {
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
            "bf16": torch.cuda.is_bf16_supported(),
        }
        smi = shutil.which("nvidia-smi")
        if smi:
            query = "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
            done = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True)
            info["nvidia_smi"] = done.stdout.decode().strip()
    return info


def gpu_tests(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    command += ["tests/test_gpu.py"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=min(sizes.tests_timeout, max(30, int(check.left()))),
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    summary = [
        line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|skipped|failed)", line)
    ]
    result = {"returncode": done.returncode, "summary": summary[-1] if summary else ""}
    if done.returncode != 0:
        result["tail"] = (done.stdout + done.stderr)[-3000:]
        raise SectionFailed(result, f"pytest -m gpu exited {done.returncode}: {result['summary']}")
    return result


def quickstart(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    from automl_hiap.search import run_search

    config = load_config("digits.yaml", sizes.quickstart)
    started = time.perf_counter()
    report = run_search(config, check.out / "work" / "quickstart", progress=False)
    m = report.metrics
    return {
        "dense_top1": m.dense.top1,
        "pruned_top1": m.pruned.top1,
        "macs_ratio": m.macs_ratio,
        "speedup": m.speedup,
        "seconds": time.perf_counter() - started,
        "cpu_reference": "dense 91.64 %, pruned 95.26 % (fp32, CPU)",
    }


def cifar_searches(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    from automl_hiap.search import run_search

    data = Path(os.environ.get("AUTOML_HIAP_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "cifar10-jpeg").is_dir() or not (data / "reference").is_dir():
        raise SectionSkipped(f"no CIFAR-10 data or reference checkpoint in {data}")
    os.environ.setdefault("AUTOML_HIAP_DATA", str(data))
    rows = {}
    dense_scores: dict[str, Any] = {}  # one dense evaluation for the three searches
    for strategy, params in sizes.cifar_params.items():
        config = load_config(
            "vit_tiny6_cifar10.yaml",
            [f"strategy.name={strategy}", *sizes.cifar_common, *params],
        )
        started = time.perf_counter()
        report = run_search(
            config,
            check.out / "work" / f"cifar_{strategy}",
            progress=False,
            measure_batch=sizes.measure_batch,
            dense_scores=dense_scores,
        )
        m = report.metrics
        rows[strategy] = {
            "dense_top1": m.dense.top1,
            "pruned_top1": m.pruned.top1,
            "macs_ratio": m.macs_ratio,
            "speedup": m.speedup,
            "search_seconds": m.search_seconds,
            "seconds": time.perf_counter() - started,
        }
    return rows


def step_time(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    from automl_hiap.config import DistillConfig
    from automl_hiap.strategies.hiap import HiAPParams, HiAPSearch
    from automl_hiap.trainer import Trainer

    config = load_config(sizes.step_space)
    model = config.model
    torch.manual_seed(0)
    dense = ah.ModelSpec(model.name, dict(model.kwargs)).create()
    space = ah.SearchSpace.from_model(dense, config.space.units, config.space.constraints)
    batch, size, steps = sizes.step_batch, config.data.image_size, sizes.step_steps
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(batch * steps, 3, size, size, generator=generator),
        torch.randint(0, 10, (batch * steps,), generator=generator),
    )
    teacher = copy.deepcopy(dense).eval()
    base = config.train.model_copy(update={"batch_size": batch, "num_workers": 0})
    plain = base.model_copy(update={"distill": None})
    with_kd = base.model_copy(update={"distill": config.train.distill or DistillConfig()})

    def seconds_per_step(variant: str) -> float:
        kd = variant.endswith("+KD")
        trainer = Trainer(with_kd if kd else plain, data, teacher=teacher if kd else None)
        student = copy.deepcopy(dense)
        hooks = None
        if variant.startswith("hiap"):
            target = 0.5 * ah.dense_cost(space).macs
            hooks = HiAPSearch(student, space, HiAPParams(), target, 0, trainer.device)
        trainer.placement.synchronize()
        started = time.perf_counter()
        trainer.fit(student, 1, phase=variant, hooks=hooks)
        trainer.placement.synchronize()
        if hooks is not None:
            hooks.close()
        return (time.perf_counter() - started) / steps

    variants = ["dense", "dense+KD", "hiap", "hiap+KD"]
    for variant in variants:  # warm-up: kernels, autotuning, allocator
        seconds_per_step(variant)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(sizes.step_rounds):
        for variant in variants:
            times[variant].append(seconds_per_step(variant))
    median = {v: statistics.median(t) for v, t in times.items()}
    ratios = {
        "hiap / dense": median["hiap"] / median["dense"],
        "hiap+KD / dense+KD": median["hiap+KD"] / median["dense+KD"],
        "hiap+KD / dense": median["hiap+KD"] / median["dense"],
    }
    result = {
        "space": sizes.step_space,
        "batch": batch,
        "steps": steps,
        "rounds": sizes.step_rounds,
        "ms_per_step": {v: 1000 * s for v, s in median.items()},
        "ratios": ratios,
        "limit": f"hiap+KD / dense+KD <= {STEP_RATIO_LIMIT}",
    }
    if not check.dry_run and ratios["hiap+KD / dense+KD"] > STEP_RATIO_LIMIT:
        raise SectionFailed(result, f"HiAP + KD step is {ratios['hiap+KD / dense+KD']:.2f}x dense")
    return result


def export_speed(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    import export_speed as bench  # beside this script: the subnets of bench/export_speed.py

    families = dict(bench.FAMILIES)
    families["toy"] = bench.Family(
        "toy",
        ah.ModelSpec(
            "vit_tiny_patch16_224",
            dict(img_size=16, patch_size=4, depth=2, embed_dim=64, num_heads=4, num_classes=10),
        ),
        16,
        (1, 4),
    )
    rows = []
    compiled_rows = []
    for key in sizes.export_families:
        family = families[key]
        variants = bench.build_variants(family, [0.5])
        models = {v.name: v.model for v in variants}
        dense_macs = variants[0].macs
        for batch in sizes.export_batches:
            speed = ah_throughput(models, family.img_size, batch, placement)
            for v in variants:
                rows.append(_speed_row(key, v, batch, speed, dense_macs))
        if key == sizes.compile_family:
            chosen = {v.name: v.model for v in variants if v.kind != "uniform"}
            fast = Placement(
                placement.device,
                amp=placement.amp,
                compile=True,
                compile_backend=sizes.compile_backend,
            )
            started = time.perf_counter()
            speed = ah_throughput(chosen, family.img_size, sizes.compile_batch, fast)
            compile_s = time.perf_counter() - started
            eager = ah_throughput(chosen, family.img_size, sizes.compile_batch, placement)
            for v in variants:
                if v.name in chosen:
                    row = _speed_row(key, v, sizes.compile_batch, speed, dense_macs)
                    row["eager_img_s"] = eager[v.name]
                    row["compiled_over_eager"] = speed[v.name] / eager[v.name]
                    compiled_rows.append(row)
            compiled_rows.append(
                {"compile_and_measure_s": compile_s, "backend": fast.compile_backend}
            )
    return {"rows": rows, "compiled": compiled_rows}


def ah_throughput(
    models: dict[str, Any], image_size: int, batch: int, placement: Placement
) -> dict[str, float]:
    from automl_hiap.measure import throughput

    return throughput(models, image_size, batch, repeats=5, min_seconds=0.05, placement=placement)


def _speed_row(
    family: str, variant: Any, batch: int, speed: dict[str, float], dense_macs: int
) -> dict[str, Any]:
    speedup = speed[variant.name] / speed["dense"]
    ideal = dense_macs / variant.macs
    return {
        "model": family,
        "variant": variant.name,
        "batch": batch,
        "macs_ratio": variant.macs / dense_macs,
        "img_s": speed[variant.name],
        "speedup": speedup,
        "efficiency": speedup / ideal,
    }


def torchrun_smoke(check: Check, sizes: Sizes, placement: Placement) -> dict[str, Any]:
    result_file = check.out / "work" / "torchrun.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command += [__file__, "--torchrun-child", str(result_file)]
    command += ["--dry-run"] if check.dry_run else []
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=min(240, max(30, int(check.left()))),
    )
    if done.returncode != 0 or not result_file.is_file():
        tail = (done.stdout + done.stderr)[-3000:]
        raise SectionFailed({"tail": tail}, f"torchrun exited {done.returncode}")
    return json.loads(result_file.read_text())


def torchrun_child(result_file: Path, dry_run: bool) -> None:
    """Runs under torchrun: the collective backend, then a tiny search on LOCAL_RANK's device."""
    import torch.distributed as dist

    from automl_hiap.search import run_search

    placement = Placement.resolve(device="cpu" if dry_run else "auto")
    backend = "nccl" if placement.is_cuda else "gloo"
    dist.init_process_group(backend)
    value = placement.tensor(torch.ones(4) * (dist.get_rank() + 1))
    dist.all_reduce(value)
    config = load_config(
        "test_vit.yaml",
        ["train.dense_epochs=1", "data.train_subset=64", f"train.device={placement.device.type}"],
    )
    report = run_search(
        config, result_file.parent / "torchrun_search", progress=False, measure_batch=None
    )
    dist.barrier()
    result = {
        "backend": backend,
        "world": dist.get_world_size(),
        "device": str(placement.device),
        "all_reduce": value.cpu().tolist(),
        "local_rank": os.environ.get("LOCAL_RANK"),
        "pruned_top1": report.metrics.pruned.top1,
    }
    dist.destroy_process_group()
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result))


SECTIONS: list[tuple[str, Section, float]] = [  # name, function, seconds it needs on a GPU
    ("environment", environment, 5),
    ("gpu tests", gpu_tests, 60),
    ("quickstart", quickstart, 45),
    ("CIFAR searches", cifar_searches, 120),
    ("step time", step_time, 40),
    ("export speed", export_speed, 90),
    ("torchrun smoke", torchrun_smoke, 30),
]


class SectionFailed(Exception):
    def __init__(self, result: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.result = result


class SectionSkipped(Exception):
    pass


# ---------------------------------------------------------------------------- report
def run_sections(check: Check, sizes: Sizes, placement: Placement) -> None:
    for name, function, need in SECTIONS:
        started = time.perf_counter()
        entry: dict[str, Any] = {}
        if not check.dry_run and check.left() < need:
            entry = {"status": "skipped", "reason": f"{check.left():.0f} s left, needs ~{need} s"}
        else:
            print(f"== {name}", flush=True)
            try:
                entry = {"status": "ok", "result": function(check, sizes, placement)}
            except SectionSkipped as exc:
                entry = {"status": "skipped", "reason": str(exc)}
            except SectionFailed as exc:
                entry = {"status": "failed", "reason": str(exc), "result": exc.result}
            except Exception as exc:
                entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                entry["traceback"] = traceback.format_exc()[-4000:]
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if entry["status"] == "failed":
            check.failures.append(f"{name}: {entry['reason']}")
        check.sections[name] = entry
        print(f"   {entry['status']} ({entry['seconds']} s) {entry.get('reason', '')}", flush=True)


def markdown(check: Check, total: float) -> str:
    title = "GPU check (issue #16)"
    lines = [f"# {title}" if not check.dry_run else f"# DRY RUN ON CPU: {title}", ""]
    if check.dry_run:
        lines += [
            "**Not GPU results.** `--dry-run` runs every section on the CPU at toy sizes to check",
            "that the script works; none of the numbers below say anything about a GPU.",
            "",
        ]
    lines += [
        f"Command: `python bench/gpu_check.py{' --dry-run' if check.dry_run else ''}`; "
        f"total {total:.0f} s; "
        + ("all sections passed" if not check.failures else f"FAILED: {'; '.join(check.failures)}"),
        "",
        "| section | status | seconds | note |",
        "|---|---|---:|---|",
    ]
    for name, entry in check.sections.items():
        lines.append(
            f"| {name} | {entry['status']} | {entry['seconds']} | {entry.get('reason', '')} |"
        )
    env = check.sections.get("environment", {}).get("result", {})
    if env:
        lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    tests = check.sections.get("gpu tests", {}).get("result")
    if tests:
        lines += ["", "## GPU-marked tests", "", f"`{tests.get('summary', '')}`"]
    quick = check.sections.get("quickstart", {}).get("result")
    if quick:
        lines += ["", "## Quickstart (digits.yaml)", ""]
        lines += [
            f"dense {quick['dense_top1']:.2%} -> pruned {quick['pruned_top1']:.2%}, MACs "
            f"{quick['macs_ratio']:.1%}, speed-up {quick['speedup']:.2f}x, "
            f"{quick['seconds']:.0f} s "
            f"(CPU reference: {quick['cpu_reference']})"
        ]
    cifar = check.sections.get("CIFAR searches", {}).get("result")
    if cifar:
        lines += ["", "## CIFAR-10 searches (vit_tiny6_cifar10.yaml, short)", ""]
        lines += [
            "| strategy | dense top-1 | pruned top-1 | MACs | speed-up | search s | total s |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in cifar.items():
            speedup = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            lines.append(
                f"| {name} | {r['dense_top1']:.2%} | {r['pruned_top1']:.2%} "
                f"| {r['macs_ratio']:.1%} | {speedup} | {r['search_seconds']:.1f} "
                f"| {r['seconds']:.1f} |"
            )
    steps = check.sections.get("step time", {}).get("result")
    if steps:
        lines += ["", f"## Training step ({steps['space']}, batch {steps['batch']})", ""]
        lines += ["| variant | ms / step |", "|---|---:|"]
        lines += [f"| {v} | {ms:.2f} |" for v, ms in steps["ms_per_step"].items()]
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f}x |" for k, v in steps["ratios"].items()]
        lines += [
            "",
            f"Checked: {steps['limit']}" + (" (not on a dry run)" if check.dry_run else ""),
        ]
    export = check.sections.get("export speed", {}).get("result")
    if export:
        how = "fp32 on the CPU" if check.dry_run else "bf16 autocast, CUDA events"
        lines += ["", f"## Export speed ({how}; efficiency = speed-up / ideal MACs ratio)", ""]
        lines += ["| model | variant | batch | MACs ratio | img/s | speed-up | efficiency |"]
        lines += ["|---|---|---:|---:|---:|---:|---:|"]
        for r in export["rows"]:
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['batch']} | {r['macs_ratio']:.3f} | "
                f"{r['img_s']:.1f} | {r['speedup']:.2f}x | {r['efficiency']:.2f} |"
            )
        compiled = [r for r in export["compiled"] if "variant" in r]
        if compiled:
            lines += ["", "Compiled (`torch.compile`):", ""]
            lines += [
                "| model | variant | batch | img/s | speed-up (compiled dense) | compiled / eager |"
            ]
            lines += ["|---|---|---:|---:|---:|---:|"]
            for r in compiled:
                lines.append(
                    f"| {r['model']} | {r['variant']} | {r['batch']} | {r['img_s']:.1f} | "
                    f"{r['speedup']:.2f}x | {r['compiled_over_eager']:.2f}x |"
                )
            info = next(r for r in export["compiled"] if "backend" in r)
            lines += [
                "",
                f"backend {info['backend']}, compile + measure "
                f"{info['compile_and_measure_s']:.0f} s",
            ]
    smoke = check.sections.get("torchrun smoke", {}).get("result")
    if smoke:
        lines += ["", "## torchrun smoke", "", f"`{json.dumps(smoke)}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="stop starting sections after"
    )
    parser.add_argument("--only", nargs="*", help="run only these sections (names as listed)")
    parser.add_argument("--export-families", nargs="*", help="e.g. vit_tiny_cifar deit_small toy")
    parser.add_argument("--export-batches", nargs="*", type=int, help="e.g. 1 64 256")
    parser.add_argument("--compile-backend", help="inductor (GPU default), aot_eager (dry run)")
    parser.add_argument("--torchrun-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torchrun_child is not None:
        torchrun_child(args.torchrun_child, args.dry_run)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    sizes = DRY if args.dry_run else GPU
    if args.export_families:
        sizes.export_families = args.export_families
        sizes.compile_family = args.export_families[0]
    if args.export_batches:
        sizes.export_batches = tuple(args.export_batches)
        sizes.compile_batch = args.export_batches[-1]
    if args.compile_backend:
        sizes.compile_backend = args.compile_backend
    placement = Placement.resolve(
        load_config("test_vit.yaml").train, "cpu" if args.dry_run else "cuda"
    )
    if args.only:
        keep = set(args.only)
        SECTIONS[:] = [s for s in SECTIONS if s[0] in keep]
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.dry_run, args.out, time.monotonic() + args.budget_s)
    work = args.out / "work"
    started = time.perf_counter()
    if not args.dry_run:  # a fresh machine: decode the CIFAR JPEGs once, into the run's folder
        os.environ.setdefault("AUTOML_HIAP_CACHE", str(work / "cache"))
    try:  # (a dry run keeps the machine's cache: CI decodes the 60 000 JPEGs once, not per run)
        run_sections(check, sizes, placement)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # outputs of the searches: not results
    total = time.perf_counter() - started
    stem = "dry_run_cpu" if args.dry_run else "gpu_check"
    report = {
        "dry_run": args.dry_run,
        "total_seconds": total,
        "failures": check.failures,
        "sections": check.sections,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / f"{stem}.md").write_text(markdown(check, total))
    if os.environ.get("OUT"):  # the device tool brings back what is under $OUT
        for suffix in (".json", ".md"):
            shutil.copy(args.out / f"{stem}{suffix}", Path(os.environ["OUT"]) / f"{stem}{suffix}")
    print(f"gpu_check: {total:.0f} s, wrote {args.out / stem}.{{md,json}}")
    for failure in check.failures:
        print(f"gpu_check: FAILED {failure}", file=sys.stderr)
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
