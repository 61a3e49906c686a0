"""README's figures, generated from the committed benchmark results instead of typed.

Every figure README quotes from a benchmark sits between markers::

    <!-- generated: NAME (bench/readme.py) -->
    ...
    <!-- /generated: NAME -->

and is rendered here by ``RENDERERS[NAME]`` from ``bench/results/``. Text outside the markers
(other sections, explanations without figures) is left as it is, so sections other people
write are never touched. ``tests/test_readme.py`` fails when README disagrees with the
results, so a re-run benchmark must be followed by::

    python bench/readme.py            # rewrite README.md's generated blocks
    python bench/readme.py --check    # exit 1 with a diff when README is out of date

A marker whose name has no renderer is an error (say which block it is), and so is a
renderer whose results file is missing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
SPACES = ROOT / "search_spaces"
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+)(?: \(bench/readme\.py\))? -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- /generated: (?P=name) -->)",
    re.S,
)
WIDTH = 96  # README's prose width
NOISE_POINTS = 1.0  # one seed: top-1 differences below this many points are within noise


# ---------------------------------------------------------------------------- formatting
def pct(value: float, digits: int = 2) -> str:
    """``0.9164`` -> ``'91.64 %'`` (README's style: a space before %)."""
    return f"{100 * value:.{digits}f} %"


def signed_pct(value: float, digits: int = 2) -> str:
    """``-0.0115`` -> ``'−1.15 %'`` (a real minus sign, as README prints it)."""
    return f"{100 * value:+.{digits}f} %".replace("-", "−")


def share(value: float, digits: int = 1) -> str:
    """``0.498`` -> ``'49.8 %'``; a budget ``0.5`` with digits=0 -> ``'50 %'``."""
    return pct(value, digits)


def mean_sd(mean: float, sd: float, digits: int = 1) -> str:
    """``0.704, 0.0015`` -> ``'70.4 ± 0.2 %'``."""
    return f"{100 * mean:.{digits}f} ± {100 * sd:.{digits}f} %"


def mega(value: float, digits: int = 1) -> str:
    return f"{value / 1e6:.{digits}f} M"


def span(values: Iterable[float], fmt: str = "{:.2f}") -> str:
    """A range ``lo–hi`` (one value when they agree after formatting)."""
    shown = sorted(values)
    lo, hi = fmt.format(shown[0]), fmt.format(shown[-1])
    return lo if lo == hi else f"{lo}–{hi}"


def points(value: float) -> str:
    """A signed difference in percentage points, with a real minus sign."""
    return f"{value:+.2f}".replace("-", "−")


def reflow(markdown: str, width: int = WIDTH) -> str:
    """Wrap prose lines and bullets at README's width; tables and blank lines stay."""
    out: list[str] = []
    for line in markdown.splitlines():
        if not line.strip() or line.lstrip().startswith("|"):
            out.append(line)
            continue
        indent = "  " if line.startswith(("- ", "  ")) else ""
        first = line if line.startswith("- ") else line[len(indent) :]
        out.extend(
            textwrap.wrap(
                first,
                width,
                initial_indent="" if line.startswith("- ") else indent,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def load(results: Path, name: str) -> Any:
    path = results / name
    if not path.is_file():
        raise SystemExit(f"bench/readme.py: {path} is missing (its benchmark writes it)")
    return json.loads(path.read_text())


def space_file(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((SPACES / name).read_text())


# ---------------------------------------------------------------------------- quickstart
def _search_runs(results: Path, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    record = load(results, name)
    return record, [run["metrics"] for run in record["runs"]]


def load_note(record: dict[str, Any]) -> str:
    """How busy the machine was (1-minute load average, the worst of the runs), when busier
    than its cores: time and measured speed-ups of such a run are not an idle machine's."""
    cpus = record["environment"]["cpus"] or 1
    loads = [
        max(run.get("loadavg_before", [0])[0], run.get("loadavg_after", [0])[0])
        for run in record["runs"]
    ]
    loads.append(record["environment"].get("loadavg", [0])[0])
    load = max(loads)
    return f"load average {load:.1f} on {cpus} cores" if load > cpus else ""


def _speedups(record: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    values = [m["speedup"] for m in runs if m.get("speedup") is not None]
    if not values:
        return "not measured"
    batch = runs[0]["measure_batch"]
    over = f" over {len(values)} runs" if len(values) > 1 else ""
    busy = load_note(record)
    busy = f"; measured at {busy}" if busy else ""
    return f"{span(values)}×{over} (batch {batch}, printed by `search`{busy})"


def _search_row(
    label: str, command: str, record: dict[str, Any], runs: list[dict[str, Any]]
) -> list[str]:
    m = runs[0]
    d, p = m["dense"], m["pruned"]
    return [
        label,
        f"`{command}`",
        pct(d["top1"]),
        pct(p["top1"]),
        f"{mega(d['macs'], 2)} → {mega(p['macs'], 2)} ({share(m['macs_ratio'])})",
        f"{d['params'] / 1e6:.3f} M → {p['params'] / 1e6:.3f} M",
        _speedups(record, runs),
    ]


def render_quickstart_time(results: Path) -> str:
    record, _ = _search_runs(results, "quickstart.json")
    seconds = [run["wall_seconds"] for run in record["runs"]]
    cpus = record["environment"]["cpus"]
    busy = load_note(record)
    busy = f", on a machine shared with other work ({busy})" if busy else ""
    return (
        f"The committed run of this command took {span(seconds, '{:.0f}')} s on {cpus} CPU "
        f"cores{busy}; its figures are in [Results](#results)."
    )


def render_searches(results: Path) -> str:
    record, runs = _search_runs(results, "quickstart.json")
    rows = [_search_row("quickstart, digits (test split)", _short(record["command"]), record, runs)]
    notes = []
    oneshot = results / "cifar10_oneshot.json"
    if oneshot.is_file():
        cifar, cifar_runs = _search_runs(results, "cifar10_oneshot.json")
        label = "CIFAR-10 ViT-Tiny, one-shot, no fine-tuning"
        rows.append(_search_row(label, _short(cifar["command"]), cifar, cifar_runs))
        dense = cifar_runs[0]["dense"]["top1"]
        compare = results / "compare" / "compare.json"
        same = ""
        if compare.is_file():
            other = load(results, "compare/compare.json")["rows"][0]["dense_top1"]
            same = (
                ", the same figure as the comparison below"
                if round(other, 4) == round(dense, 4)
                else f" (the comparison below scored it {pct(other)})"
            )
        notes.append(
            f"The CIFAR-10 dense figure ({pct(dense)}) is the reference checkpoint "
            f"(`../shared/data/reference`) scored by `search` on the test split{same}. Its "
            "one-shot pruned figure is the floor that the trained strategies must beat."
        )
    digits = space_file("digits.yaml")
    dense_epochs = digits["train"]["dense_epochs"]
    finetune = runs[0]["params_config"].get("finetune_epochs")
    env = record["environment"]
    text = table(
        ["run", "command", "dense top-1", "pruned top-1", "MACs", "params", "speed-up"],
        ["l", "l", "r", "r", "r", "r", "r"],
        rows,
    )
    lines = [
        text,
        "",
        f"From `{record['produced_by']}` (`bench/results/quickstart.json`: the command taken "
        f"from this README, run in a fresh folder; torch {env['torch']}, {env['cpus']} CPU "
        f"cores). The digits run trains its dense ViT for {dense_epochs} epochs, prunes, then "
        f"fine-tunes {finetune} epochs (the pruned model gets more training than the dense "
        "one, which is why it can be more accurate). The quickstart model is so small (17 "
        "tokens, width 64) that per-call overhead limits its speed-up; the export-speed table "
        "below shows the gains at real sizes.",
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _short(command: str) -> str:
    """The quickstart command without its ``--out`` (the table shows what varies)."""
    return re.sub(r" --out \S+", "", command)


# ---------------------------------------------------------------------------- compare
STRATEGY_NAMES = {
    "hiap": "HiAP",
    "magnitude": "one-shot magnitude + fine-tuning",
    "sero": "SERo",
    "gohsp": "GOHSP",
    "vtp": "VTP",
    "nni": "NNI's L1 pruner",
    "tp-magnitude": "Torch-Pruning (magnitude)",
    "tp-taylor": "Torch-Pruning (Taylor)",
}


def render_compare_table(results: Path) -> str:
    rows = load(results, "compare/compare.json")["rows"]
    body = [
        [
            r["strategy"],
            f"{r['budget']:g}",
            f"{100 * r['top1']:.2f}%",
            f"{100 * r['drop']:+.2f}%",
            f"{r['macs'] / 1e6:.1f} M",
            f"{100 * r['macs_ratio']:.1f}%",
            f"{r['params'] / 1e6:.3f} M",
            f"{r['speedup']:.2f}×",
            f"{r['search_seconds']:.0f}",
            f"{r['wall_seconds']:.0f}",
        ]
        for r in rows
    ]
    header = ["strategy", "budget", "top-1", "drop", "MACs", "of dense", "params", "speed-up"]
    return table([*header, "search s", "wall s"], ["l"] * 10, body)


def render_compare_notes(results: Path) -> str:
    rows = load(results, "compare/compare.json")["rows"]
    dense = rows[0]["dense_top1"]
    budgets = sorted({r["budget"] for r in rows})
    lines = [
        f"The dense reference scores {pct(dense)}. What the table shows, at this short "
        f"schedule (one seed, so differences under about {NOISE_POINTS:g} point are within "
        "noise):",
        "",
    ]
    for budget in budgets:
        at = sorted((r for r in rows if r["budget"] == budget), key=lambda r: -r["top1"])
        ranking = ", ".join(f"{r['strategy']} {pct(r['top1'])}" for r in at)
        lines.append(f"- At {share(budget, 0)} of the MACs, by top-1: {ranking}.")
        hiap = next((r for r in at if r["strategy"] == "hiap"), None)
        magnitude = next((r for r in at if r["strategy"] == "magnitude"), None)
        if hiap is not None and magnitude is not None:
            gap = 100 * (hiap["top1"] - magnitude["top1"])
            verdict = (
                "level with" if abs(gap) < NOISE_POINTS else ("ahead of" if gap > 0 else "behind")
            )
            lines.append(
                f"  HiAP is {verdict} one-shot magnitude + fine-tuning ({points(gap)} points) and "
                f"{100 * (at[0]['top1'] - hiap['top1']):.2f} points behind the best "
                f"({at[0]['strategy']})."
            )
        worst = at[-1]
        lines.append(
            f"  The largest drop is {worst['strategy']}'s ({100 * worst['drop']:.2f} points)."
        )
    hiap_rows = [r for r in rows if r["strategy"] == "hiap"]
    if hiap_rows:
        landed = ", ".join(
            f"{share(r['macs_ratio'])} of dense at a {r['budget']:g} budget" for r in hiap_rows
        )
        repaired = ", ".join(
            f"{int(r['repaired_units'])} units at {r['budget']:g}"
            for r in hiap_rows
            if r.get("repaired_units") is not None
        )
        lines.append(
            f"- HiAP lands on its budget by itself: {landed}"
            + (f"; the final repair changed {repaired}." if repaired else ".")
        )
    for budget in budgets:
        at = [r for r in rows if r["budget"] == budget]
        fastest = max(at, key=lambda r: r["speedup"])
        slowest = min(at, key=lambda r: r["speedup"])
        lines.append(
            f"- Speed-ups at {share(budget, 0)}: from {fastest['strategy']} "
            f"{fastest['speedup']:.2f}× ({share(fastest['macs_ratio'])} of the MACs) to "
            f"{slowest['strategy']} {slowest['speedup']:.2f}× ({share(slowest['macs_ratio'])})."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- step time
STEP_TARGETS = {  # ratio key -> (README's label, the target it is held to)
    "hiap / dense": ("HiAP / dense training step", 1.15),
    "hiap+KD / dense+KD": ("HiAP + KD teacher / dense + KD teacher", 1.3),
}


def render_step_time(results: Path) -> str:
    data = load(results, "hiap_step_time.json")
    rows = [
        [label, f"{data['ratios'][key]:.2f}×", f"≤ {target:g}×"]
        for key, (label, target) in STEP_TARGETS.items()
    ]
    text = table(["ratio", "value", "target"], ["l", "r", "r"], rows)
    step = data["median"]["dense"]
    return (
        f"{text}\n\nThe overhead is the gate multiplications on activations (the masks' hooks) "
        f"and their backward. The measurement was taken on a loaded machine (a dense step took "
        f"{step:.1f} s), so treat the ratios as approximate."
    )


# ---------------------------------------------------------------------------- tune budget
def _tune_budgets(results: Path) -> list[dict[str, Any]]:
    return load(results, "tune_budget.json")["budgets"]


def render_tune_table(results: Path) -> str:
    rows = []
    for b in _tune_budgets(results):
        feasible = sum(1 for r in b["trial_rows"] if r.get("feasible"))
        first = b["until_first_feasible"]
        trials = b["trials"]
        to_first = f"{first} ({feasible} of {trials} feasible)" if first else f"none in {trials}"
        closest = "" if b["best_feasible"] else " (closest)"
        single = b["single"]
        rows.append(
            [
                share(b["budget"], 0),
                to_first,
                f"{signed_pct(b['best_distance'])}{closest}",
                f"{100 * b['best_val_top1']:.2f} / {100 * b['best_test_top1']:.2f} %",
                signed_pct(single["distance"]),
                f"{100 * single['val_top1']:.2f} / {100 * single['test_top1']:.2f} %",
                f"{b['tune_minutes']:.1f} min tune vs {single['minutes']:.1f} min single",
            ]
        )
    header = ["budget", "trials to first feasible", "best trial: distance", "val / test top-1"]
    header += ["single run: distance", "val / test top-1", "time"]
    return table(header, ["l", "r", "r", "r", "r", "r", "l"], rows)


def render_tune_trials(results: Path) -> str:
    """Every trial of both studies, by λ: the exported MACs are a step function of it."""
    budgets = _tune_budgets(results)
    rows = []
    for b in budgets:
        for r in b["trial_rows"]:
            if r["macs"] is None:
                continue
            rows.append((r["params"].get("lambda_macro"), r["params"].get("tau_end"), b, r))
    rows.sort(key=lambda t: (t[0] is None, t[0] or 0.0))
    dense = budgets[0]["trial_rows"][0]["_dense"]["macs"]
    body = [
        [
            f"{lam:.3g}",
            f"{tau:.2f}",
            f"{r['macs'] / 1e6:.1f} M ({share(r['macs'] / dense, 0)})",
            share(b["budget"], 0),
            signed_pct(r["target_error"], 1),
            f"{100 * r['val_top1']:.1f} %",
        ]
        for lam, tau, b, r in rows
    ]
    return table(
        ["λ_macro", "τ_end", "exported MACs (of dense)", "study", "vs its target", "val top-1"],
        ["r", "r", "r", "r", "r", "r"],
        body,
    )


def render_tune_notes(results: Path) -> str:
    budgets = _tune_budgets(results)
    faster = [b["tune_minutes"] / b["single"]["minutes"] for b in budgets]
    gaps = [abs(b["best_test_top1"] - b["single"]["test_top1"]) for b in budgets]
    infeasible = [b for b in budgets if not b["best_feasible"]]
    per_trial = statistics.mean(b["tune_minutes"] / b["trials"] for b in budgets)
    lines = [
        "- Budget mode reaches the target in one run, in "
        f"{span(faster, '{:.1f}')}× less time than the tune, with test top-1 within "
        f"{100 * max(gaps):.1f} points of the tuned best.",
    ]
    for b in infeasible:
        lines.append(
            f"- At {share(b['budget'], 0)}, no trial landed within ±{share(b['tolerance'], 0)} "
            f"of the target ({mega(b['target_macs'])} MACs) in {b['trials']} trials: see the "
            "trials table below."
        )
    lines.append(
        f"- One seed; on 2 CPU cores, about {per_trial:.1f} minutes per trial. Each worker "
        "scores the dense model once."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- export speed
def _speed_rows(results: Path, name: str = "export_speed.json") -> list[dict[str, Any]]:
    return load(results, name)["rows"]


def render_export_table(results: Path) -> str:
    body = [
        [
            r["model"],
            r["kind"],
            f"{r['target']:.0%}",
            f"{r['macs_ratio']:.3f}",
            f"{r['params_ratio']:.3f}",
            str(r["batch"]),
            f"{r['dense_img_s']:.1f}",
            f"{r['pruned_img_s']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['efficiency']:.2f}",
        ]
        for r in _speed_rows(results)
    ]
    header = ["model", "kind", "target", "MACs ratio", "params ratio", "batch", "dense img/s"]
    header += ["pruned img/s", "speed-up", "efficiency"]
    return table(header, ["l", "l"] + ["r"] * 8, body)


def render_export_notes(results: Path) -> str:
    rows = _speed_rows(results)
    at64 = [r["efficiency"] for r in rows if r["batch"] == 64]
    models = sorted({r["model"] for r in rows})

    def dense_speed(source: list[dict[str, Any]], model: str) -> float:
        return next(r["dense_img_s"] for r in source if r["model"] == model and r["batch"] == 64)

    small = max(models, key=lambda m: dense_speed(rows, m))  # the fastest dense model
    big = min(models, key=lambda m: dense_speed(rows, m))
    at1 = [r["efficiency"] for r in rows if r["batch"] == 1 and r["model"] == small]
    lines = [
        f"At batch 64 every subnet reaches {span(at64)} of the ideal speed-up, heterogeneous "
        "ones included (each attention call pads q/k and v to one width so CPU keeps its fused "
        f"SDPA kernel; exact). At batch 1 the small model ({small}) reaches {span(at1)}: its "
        "matmuls are tiny, so fixed per-forward overhead is a floor that fewer MACs cannot "
        "remove."
    ]
    stock_path = results / "stock_malloc" / "export_speed.json"
    if stock_path.is_file():
        stock = _speed_rows(results, "stock_malloc/export_speed.json")
        lines += [
            "",
            f"**Allocator.** These numbers use glibc with large mmap/trim thresholds (the "
            "benchmark sets them with `mallopt`; in a deployment: "
            "`MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647`, or "
            "jemalloc). With the stock allocator every forward page-faults its large "
            f"activations in again: dense {big} at batch 64 runs at "
            f"{dense_speed(stock, big):.1f} img/s instead of {dense_speed(rows, big):.1f}, and "
            "that overhead shrinks faster than the MACs, which makes pruning look better than it "
            "is (`bench/results/stock_malloc/`). The speed-up `search` prints is one interleaved "
            "measurement in the search process with the stock allocator: use the benchmark for "
            "claims.",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- selection
def render_selection_table(results: Path) -> str:
    record = load(results, "selection.json")
    body = [
        [
            r["method"],
            f"{r['budget']:g}",
            mean_sd(r["top1_mean"], r["top1_sd"]) if r["seeds"] > 1 else pct(r["top1_mean"], 1),
            str(r["seeds"]),
            share(r["macs_ratio"]),
            f"{r['speedup']:.2f}×",
        ]
        for r in record["summary"]
    ]
    header = ["method", "budget", "top-1 (zero-shot)", "seeds", "MACs", "speed-up (batch 64)"]
    lines = [
        f"Dense {pct(record['dense_top1'], 1)} on 2,000 fixed test images.",
        "",
        table(header, ["l"] + ["r"] * 5, body),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- posttrain
def _equal_time_top1(row: dict[str, Any]) -> str:
    if row["top1_mean"] is None:
        return "no model in the budget"
    shown = (
        mean_sd(row["top1_mean"], row["top1_sd"], 2) if row["seeds"] > 1 else pct(row["top1_mean"])
    )
    missing = row["runs"] - row["seeds"]
    return shown + (f" ({missing} of {row['runs']} seeds: none in the budget)" if missing else "")


def render_posttrain_equal_time(results: Path) -> str:
    section = load(results, "posttrain.json")["equal_time"]
    setup = section["setup"]
    body = [
        [
            r["method"],
            f"{r['budget']:g}",
            _equal_time_top1(r),
            pct(r["top1_before_mean"]) if "top1_before_mean" in r else "—",
            "/".join(str(n) for n in r["steps"]) if any(r["steps"]) else "0",
            f"{r['seconds']:.0f} s ({r['budget_seconds']:.0f} s)",
        ]
        for r in section["rows"]
    ]
    header = ["method", "budget", "top-1", "before training", "steps", "wall (budget)"]
    loads = [v for b in setup["budgets"].values() for v in b["load_average_before_after"]]
    note = (
        f"{len(setup['seeds'])} seeds, the {setup['test_images']:,} test images above; "
        f"steps per seed; wall time measured on {setup['threads']} threads of the shared "
        f"machine under load (1-minute load average {span(loads, '{:.1f}')})."
    )
    return reflow(note) + "\n\n" + table(header, ["l"] + ["r"] * 5, body)


def transplant_table(record: dict[str, Any]) -> str:
    """One transplant results file: every structure from the dense weights, one fine-tune,
    and each method's own pipeline at the same total steps."""
    setup = record["setup"]

    def e2e(r: dict[str, Any]) -> str:
        own = r.get("end_to_end")
        return "—" if own is None else mean_sd(own[0], own[1], 2)

    body = [
        [
            share(r["budget"], 0),
            r["method"],
            mean_sd(r["zero_shot_mean"], r["zero_shot_sd"], 2),
            mean_sd(r["top1_mean"], r["top1_sd"], 2),
            e2e(r),
            str(r["seeds"]),
            share(r["macs_ratio"]),
            "—" if r["speedup"] is None else f"{r['speedup']:.2f}×",
        ]
        for r in record["rows"]
    ]
    header = ["budget", "method", "zero-shot top-1", "transplant top-1"]
    header += [f"end to end, {setup['steps']} steps", "seeds", "MACs", "speed-up"]
    note = (
        f"Dense {pct(setup['dense_top1'])} on {setup['test_images']:,} fixed test images; "
        f"fine-tune {setup['steps']} steps; {setup['threads']} threads, wall "
        f"{setup['wall_seconds'] / 60:.0f} min."
    )
    return note + "\n\n" + table(header, ["r", "l"] + ["r"] * 6, body)


def render_transplant(results: Path) -> str:
    return transplant_table(load(results, "transplant.json"))


def render_transplant_long(results: Path) -> str:
    return transplant_table(load(results, "transplant_long/transplant.json"))


def render_hiap_ablation(results: Path) -> str:
    """HiAP with one setting changed per row, end to end, at each search length run."""
    records = [load(results, "hiap_ablation.json")]
    if (results / "hiap_ablation_36" / "hiap_ablation.json").is_file():
        records.insert(0, load(results, "hiap_ablation_36/hiap_ablation.json"))
    return "\n\n".join(ablation_table(record) for record in records)


def ablation_table(record: dict[str, Any]) -> str:
    setup, rows = record["setup"], record["rows"]
    base = next(r for r in rows if r["variant"] == "defaults")
    body = [
        [
            r["variant"],
            mean_sd(r["own_top1_mean"], r["own_top1_sd"], 2),
            points(100 * (r["own_top1_mean"] - base["own_top1_mean"])),
            mean_sd(r["zero_shot_mean"], r["zero_shot_sd"], 2),
            f"{r['repaired_units']:.0f}",
            f"{r['heads']:.0f} / {r['v_dims']:.0f} / {r['neurons']:.0f}",
            share(r["macs_ratio"]),
        ]
        for r in rows
    ]
    header = ["HiAP variant", "product top-1", "vs defaults (points)", "structure zero-shot"]
    header += ["repaired units", "heads / v dims / neurons kept", "MACs"]
    note = (
        f"{setup['steps']} search steps at {share(setup['budget'], 0)} of the MACs, "
        f"{len(setup['seeds'])} seeds, dense {pct(setup['dense_top1'])} on "
        f"{setup['test_images']:,} fixed test images."
    )
    return note + "\n\n" + table(header, ["l"] + ["r"] * 6, body)


# ---------------------------------------------------------------------------- latency
def render_latency_table(results: Path) -> str:
    rows = [
        r
        for name in ("latency.json", "latency_batch64.json", "latency_deit_batch64.json")
        if (results / name).is_file()
        for r in load(results, name)["results"]
    ]
    body = [
        [
            f"{r['model']} (`{r['space']}`)",
            str(r["batch"]),
            str(r["threads"]),
            str(len(r["subnets"])),
            share(r["median_error"]),
            share(r["median_error_vs_dense"]),
            f"{r['dense_predicted_ms']:.3g} / {r['dense_measured_ms']:.3g} ms",
            f"{r['landing']['target_ms']:.3g} ms",
            f"{r['landing']['measured_ms']:.3g} ms ({signed_pct(r['landing']['off_target'], 1)})",
            signed_pct(r["landing"]["off_target_vs_dense"], 1),
            span(r["load_average"], "{:.1f}"),
        ]
        for r in rows
    ]
    header = ["model", "batch", "threads", "random subnets", "median prediction error"]
    header += ["vs dense", "dense predicted / measured", "landing target", "measured"]
    header += ["vs dense", "load average"]
    return table(header, ["l"] + ["r"] * 10, body)


def _mean_sd_of(values: list[float | None], scale: float = 100, digits: int = 1) -> str:
    """``mean ± sd`` of the known values; ``—`` when none is."""
    known = [scale * v for v in values if v is not None]
    if not known:
        return "—"
    sd = statistics.stdev(known) if len(known) > 1 else 0.0
    shown = f"{statistics.fmean(known):.{digits}f} ± {sd:.{digits}f}".replace("-", "−")
    return shown if len(known) == len(values) else f"{shown} ({len(known)}/{len(values)})"


def render_latency_worth(results: Path) -> str:
    """Latency- vs MACs-targeted selection vs Torch-Pruning at equal measured latency."""
    comparisons = load(results, "latency_worth.json")["comparisons"]
    body = []
    for fraction in dict.fromkeys(c["target_fraction"] for c in comparisons):
        cs = [c for c in comparisons if c["target_fraction"] == fraction]

        def get(key: str, cs: list[dict[str, Any]] = cs) -> list[Any]:
            return [c[key] for c in cs]

        bounds = sorted({c["tp_reach"] for c in cs} - {"exact"})
        body.append(
            [
                share(fraction, 0),
                _mean_sd_of(get("measured_ms"), 1, 2) + " ms",
                _mean_sd_of(get("top1")),
                _mean_sd_of(get("macs_top1_at_latency")),
                _mean_sd_of(get("gain_over_macs"), 100, 2),
                _mean_sd_of(get("tp_top1_at_latency")),
                _mean_sd_of(get("speedup_over_tp"), 1, 2)
                + "×"
                + (f" ({', '.join(bounds)})" if bounds else ""),
                _mean_sd_of(get("landing_vs_dense")) + " %",
            ]
        )
    header = ["target (of dense)", "measured", "top-1 latency-targeted", "top-1 MACs-targeted"]
    header += ["gain (points)", "Torch-Pruning top-1", "speed-up over TP at equal top-1"]
    header += ["landing vs dense"]
    return table(header, ["r"] * 8, body)


def render_latency_landing(results: Path) -> str:
    """Full searches to one latency target: predicted and measured latency per strategy."""
    rows = load(results, "latency_landing.json")["rows"]
    body = [
        [
            r["strategy"],
            f"{r['target_ms']:.3g} ms",
            f"{r['predicted_ms']:.3g} ms",
            f"{r['measured_ms']:.3g} ms ({span(r['measured_iqr_ms'], '{:.3g}')})",
            signed_pct(r["off_target"], 1),
            f"{r['dense_predicted_ms']:.3g} / {r['dense_measured_ms']:.3g} ms",
            signed_pct(r["off_target_vs_dense"], 1),
            share(r["macs_ratio"]),
        ]
        for r in rows
    ]
    header = ["strategy", "target", "predicted", "measured (IQR)", "measured vs target"]
    header += ["dense predicted / measured", "vs dense", "of dense MACs"]
    return table(header, ["l"] + ["r"] * 7, body)


RENDERERS: dict[str, Callable[[Path], str]] = {
    "quickstart-time": render_quickstart_time,
    "searches": render_searches,
    "compare-table": render_compare_table,
    "compare-notes": render_compare_notes,
    "step-time": render_step_time,
    "tune-budget-table": render_tune_table,
    "tune-budget-notes": render_tune_notes,
    "tune-budget-trials": render_tune_trials,
    "export-speed-table": render_export_table,
    "export-speed-notes": render_export_notes,
    "selection-table": render_selection_table,
    "latency-table": render_latency_table,
    "latency-worth": render_latency_worth,
    "latency-landing": render_latency_landing,
    "posttrain-equal-time": render_posttrain_equal_time,
    "transplant-table": render_transplant,
    "transplant-long-table": render_transplant_long,
    "hiap-ablation-table": render_hiap_ablation,
}


# ---------------------------------------------------------------------------- README
def blocks(text: str) -> list[str]:
    """The names of the generated blocks in ``text``, in order."""
    return [m.group("name") for m in BLOCK.finditer(text)]


def update(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block rendered again from ``results``."""

    def render(match: re.Match[str]) -> str:
        name = match.group("name")
        renderer = RENDERERS.get(name)
        if renderer is None:
            known = ", ".join(RENDERERS)
            raise SystemExit(f"README.md: generated block {name!r} has no renderer ({known})")
        return f"{match.group(1)}{reflow(renderer(results)).rstrip()}\n{match.group(4)}"

    return BLOCK.sub(render, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README is out of date")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = update(text, args.results)
    missing = sorted(set(RENDERERS) - set(blocks(text)))
    if missing:
        print(f"note: README has no block for {', '.join(missing)}", file=sys.stderr)
    if args.check:
        if new != text:
            diff = difflib.unified_diff(
                text.splitlines(), new.splitlines(), "README.md", "generated", lineterm=""
            )
            print("\n".join(diff))
            print("README.md is out of date: run python bench/readme.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"updated {args.readme}: {', '.join(blocks(new))}")
    else:
        print(f"{args.readme} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
