"""README's figures are generated from the committed results, and README says what a new user
needs: every bundled space, where each example's data comes from, and a .gitignore that covers
the folders its own commands create."""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "bench" / "readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_agrees_with_the_committed_results() -> None:
    readme = generator()
    text = README.read_text()
    fresh = readme.update(text)
    diff = "\n".join(
        difflib.unified_diff(text.splitlines(), fresh.splitlines(), "README.md", "generated", n=0)
    )
    assert fresh == text, f"README.md is stale; run python bench/readme.py\n{diff[:3000]}"


def test_every_renderer_has_its_block_in_readme() -> None:
    readme = generator()
    names = readme.blocks(README.read_text())
    assert sorted(names) == sorted(readme.RENDERERS)
    assert len(names) == len(set(names))


def test_a_changed_result_makes_readme_stale(tmp_path: Path) -> None:
    """The blocks really come from the files: change a figure there and README disagrees."""
    readme = generator()
    results = tmp_path / "results"
    shutil.copytree(readme.RESULTS, results)
    record = json.loads((results / "quickstart.json").read_text())
    dense = record["runs"][0]["metrics"]["dense"]
    before = readme.pct(dense["top1"])
    assert before in README.read_text()
    dense["top1"] = 0.1234
    (results / "quickstart.json").write_text(json.dumps(record))
    compare = json.loads((results / "compare" / "compare.json").read_text())
    compare["rows"][0]["top1"] = 0.4321
    (results / "compare" / "compare.json").write_text(json.dumps(compare))
    fresh = readme.update(README.read_text(), results)
    assert "12.34 %" in fresh and "43.21%" in fresh
    assert fresh != README.read_text()


def test_text_outside_the_blocks_is_left_alone() -> None:
    readme = generator()
    text = (
        "# Title\nhand-written 1.23 %\n"
        "<!-- generated: step-time (bench/readme.py) -->\nstale\n<!-- /generated: step-time -->\n"
        "## Someone else's section\n| a | 9.99 % |\n"
    )
    fresh = readme.update(text)
    assert fresh.startswith("# Title\nhand-written 1.23 %\n")
    assert fresh.endswith(
        "<!-- /generated: step-time -->\n## Someone else's section\n| a | 9.99 % |\n"
    )
    assert "stale" not in fresh and "HiAP / dense training step" in fresh


def test_a_block_without_a_renderer_is_an_error() -> None:
    readme = generator()
    with pytest.raises(SystemExit, match="'nope' has no renderer"):
        readme.update("<!-- generated: nope -->\nx\n<!-- /generated: nope -->\n")


def test_the_quickstart_result_is_from_the_command_readme_shows() -> None:
    record = json.loads((ROOT / "bench" / "results" / "quickstart.json").read_text())
    text = README.read_text()
    assert f"&& {record['command']}\n" in text
    for run in record["runs"]:
        assert run["first_line"].startswith("automl_hiap search: digits.yaml")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_lists_every_bundled_space() -> None:
    from automl_hiap.config import bundled_spaces

    section = _section(README.read_text(), "## Search-space files")
    missing = [name for name in bundled_spaces() if f"`{name}`" not in section]
    assert missing == [], f"README's Search-space files section leaves out {missing}"


def test_readme_says_where_each_data_format_comes_from_and_its_keys() -> None:
    from typing import get_args

    from automl_hiap.config import DataConfig

    text = README.read_text()
    data = _section(text, "### Data")
    formats = get_args(DataConfig.model_fields["format"].annotation)
    for name in formats:
        assert f"| `{name}` |" in data, f"README's Data table has no row for {name}"
    for path in (ROOT / "search_spaces").glob("*.yaml"):  # every variable a bundled file reads
        for variable in set(re.findall(r"\$\{(\w+)", path.read_text())):
            assert variable in data, (
                f"{path.name} reads ${variable}; README's Data section does not say so"
            )
    for key in ("cifar-10-batches-py", "wnids.txt", "val_annotations.txt", "train/<class>/"):
        assert key in data


def test_gitignore_covers_what_readme_commands_create(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    text = README.read_text()
    # a benchmark writing into bench/results/ writes what is committed, not what is ignored
    created = set(re.findall(r"--out (?!bench/results/)(?:\$?\w*/)?([A-Za-z_][\w-]*)/", text))
    created |= {"runs", "deploy", "exports", "mlruns"}  # export's default: SOURCE/exports/
    probes = [f"{name}/probe.txt" for name in sorted(created)] + ["mlflow.db"]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True, text=True
    )
    ignored = set(result.stdout.split())
    assert sorted(set(probes) - ignored) == []
