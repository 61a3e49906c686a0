"""torchvision on CPU-only torch: the op schemas are defined only when its library can't load."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from automl_hiap import _compat

# loads _compat.py on its own, so the package's own import-time call has not run yet
LOAD_STANDALONE = f"""
import importlib.util, torch
spec = importlib.util.spec_from_file_location("compat_under_test", {_compat.__file__!r})
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_package_import_makes_timm_importable() -> None:
    result = run_python(
        """
        import automl_hiap, timm, torch
        from automl_hiap import _compat
        timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
        print(_compat._library is not None, torch.version.cuda is None)
        """
    )
    assert result.returncode == 0, result.stderr
    shim_used, cpu_torch = result.stdout.split()
    if shim_used == "True":
        assert cpu_torch == "True", "the shim must never act on a CUDA build of torch"


def test_unloadable_ops_on_cpu_torch_get_exactly_the_two_schemas() -> None:
    result = run_python(
        LOAD_STANDALONE
        + """
assert not hasattr(torch.ops.torchvision, "nms")
torch.version.cuda = None
compat.torchvision_ops_loadable = lambda: False
assert compat.ensure_torchvision_importable() is True
assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")
assert not hasattr(torch.ops.torchvision, "roi_align")
assert compat.ensure_torchvision_importable() is False  # idempotent
"""
    )
    if "assert not hasattr(torch.ops.torchvision" in result.stderr:
        pytest.skip("torchvision ops were already registered in a fresh interpreter")
    assert result.returncode == 0, result.stderr


def test_cuda_torch_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "_library", None)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    looked: list[int] = []
    monkeypatch.setattr(_compat, "torchvision_ops_loadable", lambda: looked.append(1) or False)
    assert _compat.ensure_torchvision_importable() is False
    assert looked == []  # decided before even looking at torchvision


def test_loadable_torchvision_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "_library", None)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(_compat, "torchvision_ops_loadable", lambda: True)
    assert _compat.ensure_torchvision_importable() is False


def test_importing_the_package_loads_neither_torch_nor_torchvision() -> None:
    result = run_python(
        """
        import sys, automl_hiap, automl_hiap.cli
        print(sorted({"torch", "timm", "torchvision"} & set(sys.modules)))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]"]


def test_the_hook_runs_the_fix_before_torchvision_and_then_steps_aside() -> None:
    result = run_python(
        """
        import sys
        from automl_hiap import _compat
        calls, real = [], _compat.ensure_torchvision_importable
        def spy():
            calls.append("torchvision" in sys.modules)
            return real()
        _compat.ensure_torchvision_importable = spy
        _compat.install_torchvision_hook()
        import torchvision
        print(calls, _compat._HOOK in sys.meta_path)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[False]", "False"]  # once, before torchvision, then gone


def test_public_names_resolve_lazily_and_match_all() -> None:
    import automl_hiap

    assert sorted(automl_hiap.__all__) == sorted(automl_hiap._HOME_OF)
    for name in automl_hiap.__all__:
        assert getattr(automl_hiap, name).__module__ == automl_hiap._HOME_OF[name]
    with pytest.raises(AttributeError, match="no_such_name"):
        automl_hiap.no_such_name  # noqa: B018
