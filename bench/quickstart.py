"""Run README's quickstart command as a new user would, and commit what it printed and wrote.

README's results quote the quickstart's figures; typed by hand they drifted from what the
command gives. This script takes the command from README itself (the ``automl_hiap search``
of the quickstart block), runs it in a fresh temporary folder (so its ``runs/`` and MLflow
store start empty, as on a fresh clone), and writes ``bench/results/quickstart.json``: the
command, the environment, wall seconds and the run's ``metrics.json``. ``bench/readme.py``
renders README's figures from that file. ``--runs 2`` repeats the command (a fresh folder
each time) to show how much the measured speed-up moves between runs; accuracy does not.

``--search cifar10_oneshot`` does the same for README's CIFAR-10 one-shot baseline (the
``automl_hiap search --space vit_tiny6_cifar10.yaml`` line of "More runs"), into
``bench/results/cifar10_oneshot.json``; it needs the real data (``$AUTOML_HIAP_DATA``, default
``../shared/data``) and takes minutes (it scores two models on 15,000 images).

    python bench/quickstart.py                 # ~35 s on 2 CPU cores, idle
    python bench/quickstart.py --runs 2
    python bench/quickstart.py --search cifar10_oneshot
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results" / "quickstart.json"  # others: <search>.json beside it


# which README command each search is: a regex whose group 1 is the command line
SEARCHES = {
    "quickstart": r"^python3 -m venv .*?&& (automl_hiap search [^\n]*)$",
    "cifar10_oneshot": r"^(automl_hiap search --space vit_tiny6_cifar10\.yaml --strategy [^\n]*)$",
}
DATA = Path(os.environ.get("AUTOML_HIAP_DATA", ROOT.parent / "shared" / "data")).resolve()


def readme_command(readme: str, search: str = "quickstart") -> list[str]:
    """The command README shows for ``search`` (the quickstart: after its last ``&&``)."""
    match = re.search(SEARCHES[search], readme, re.M)
    if match is None:
        raise SystemExit(f"README.md: no line matching {SEARCHES[search]!r} ({search})")
    return shlex.split(match.group(1))


def run_once(command: list[str]) -> dict[str, Any]:
    """One run in a fresh folder; returns its metrics and wall seconds."""
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "AUTOML_HIAP_DATA": str(DATA)}
        env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's default store, in the fresh folder
        load_before = list(os.getloadavg())
        started = time.perf_counter()
        result = subprocess.run(
            [*command, "--no-progress"], cwd=tmp, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
            raise SystemExit(f"{shlex.join(command)} failed with exit status {result.returncode}")
        out = Path(tmp) / command[command.index("--out") + 1]
        metrics = json.loads((out / "metrics.json").read_text())
    first = next(line for line in result.stdout.splitlines() if line.strip())
    return {
        "wall_seconds": wall,
        "loadavg_before": load_before,
        "loadavg_after": list(os.getloadavg()),  # a shared machine stretches time, skews speed
        "first_line": first,
        "metrics": metrics,
        "console": result.stdout,
    }


def environment() -> dict[str, Any]:
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "commit": commit or None,
        "loadavg": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat the command (default 1)")
    parser.add_argument("--search", choices=sorted(SEARCHES), default="quickstart")
    parser.add_argument("--results", type=Path, help="JSON to write (default: bench/results/)")
    args = parser.parse_args(argv)
    results = args.results or RESULTS.with_name(f"{args.search}.json")
    command = readme_command(README.read_text(), args.search)
    runs = []
    for number in range(1, args.runs + 1):
        print(f"run {number}/{args.runs}: {shlex.join(command)}", flush=True)
        runs.append(run_once(command))
        m = runs[-1]["metrics"]
        print(
            f"  dense {m['dense']['top1']:.2%} -> pruned {m['pruned']['top1']:.2%}, "
            f"{m['macs_ratio']:.1%} of the MACs, {m['speedup']:.2f}x, "
            f"{runs[-1]['wall_seconds']:.0f} s",
            flush=True,
        )
    record = {
        "command": shlex.join(command),
        "produced_by": "python bench/quickstart.py"
        + (f" --search {args.search}" * (args.search != "quickstart"))
        + (f" --runs {args.runs}" * (args.runs > 1)),
        "environment": environment(),
        "runs": runs,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
