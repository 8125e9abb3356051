"""The layout's promises: only the framework folders import a framework; they mirror each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "neuralcleanse"
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras", "safetensors")


def ruff() -> str:
    found = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(found).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return found


def lint(source: str, where: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ruff(), "check", "--no-cache", "--select", "TID251", "--stdin-filename", where, "-"],
        input=source, capture_output=True, text=True, cwd=ROOT, check=False)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("where", ["src/neuralcleanse/core/new.py",
                                   "src/neuralcleanse/frontends/cli/new.py",
                                   "src/neuralcleanse/mitigation/new.py",
                                   "src/neuralcleanse/backends/new.py"])
def test_lint_refuses_a_framework_import_outside_the_framework_folders(framework: str,
                                                                       where: str) -> None:
    for source in (f"import {framework}\n", f"def f():\n    from {framework} import x\n"):
        done = lint(source, where)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "TID251" in done.stdout


@pytest.mark.parametrize("where", ["src/neuralcleanse/backends/torch/new.py",
                                   "src/neuralcleanse/backends/tensorflow/new.py"])
def test_lint_allows_framework_imports_in_the_framework_folders(where: str) -> None:
    done = lint("import torch\nimport tensorflow\nimport keras\n", where)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_and_its_command_line_import_no_framework() -> None:
    code = ("import sys, neuralcleanse, neuralcleanse.frontends.cli, neuralcleanse.io.report, "
            "neuralcleanse.backends.loading, neuralcleanse.mitigation, "
            "neuralcleanse.search.reverse;"
            f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_the_framework_folders_use_the_same_module_names() -> None:
    torch_modules = {p.name for p in (PACKAGE / "backends" / "torch").glob("*.py")}
    tf_modules = {p.name for p in (PACKAGE / "backends" / "tensorflow").glob("*.py")}
    shared_jobs = {"classifier.py", "session.py", "differentiable.py", "loading.py",
                   "pruning.py"}
    assert shared_jobs <= torch_modules
    assert shared_jobs <= tf_modules
