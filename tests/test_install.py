"""A fresh environment with one framework's extra installs, scans that framework's model, and
lacks the other framework.

Each test builds a virtual environment from scratch with ``pip install -c constraints.txt
"<repo>[extra]"`` (dependencies resolved by pip, as a user's install would; the constraints keep
this machine on its local torch wheel), so they take minutes: they are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"

pytestmark = pytest.mark.slow

#: A network and data written by the fresh environment's own Python, then scanned by its CLI.
TORCH_SETUP = """
import numpy as np, torch
from pathlib import Path
Path("mynets.py").write_text(
    "import torch\\n"
    "def net(num_classes=3):\\n"
    "    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),\\n"
    "        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, num_classes))\\n")
import mynets
torch.manual_seed(0)
torch.save(mynets.net().state_dict(), "model.pt")
rng = np.random.default_rng(0)
np.savez("val.npz", x=rng.random((30, 1, 8, 8), dtype=np.float32), y=np.arange(30) % 3)
"""

KERAS_SETUP = """
import numpy as np, keras
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
                          keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
model.save("model.keras")
rng = np.random.default_rng(0)
np.savez("val.npz", x=rng.random((30, 8, 8, 1), dtype=np.float32), y=np.arange(30) % 3)
"""

#: Search settings that keep the scans to seconds (the outcome is not the point here).
#: The test session's PYTHONPATH (tests/, src/) and user site must not reach the fresh environment.
CLEAN_ENV = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
QUICK = ["--steps", "2", "--mini-batches", "1", "--batch-size", "8", "--no-progress"]


def run(args: list[str], cwd: Path, timeout: float, **env: str
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **CLEAN_ENV, **env})


def fresh_venv(where: Path, extra: str) -> Path:
    """A new virtual environment holding the package with one extra; returns its bin folder."""
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    bin_dir = where / "bin"
    done = run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                "--disable-pip-version-check", "-c", str(CONSTRAINTS), f"{ROOT}[{extra}]"],
               cwd=where, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return bin_dir


def imports(bin_dir: Path, module: str, cwd: Path) -> bool:
    return run([str(bin_dir / "python"), "-c", f"import {module}"], cwd=cwd,
               timeout=300).returncode == 0


def scan_report(bin_dir: Path, work: Path, argv: list[str], **env: str) -> dict:
    done = run([str(bin_dir / "neuralcleanse"), "scan", *argv, "--data", "val.npz",
                "--out", "report", *QUICK], cwd=work, timeout=600, **env)
    # 0: nothing flagged, 1: a label flagged; both mean the scan ran to the end
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((work / "report" / "report.json").read_text(encoding="utf-8"))


def test_only_the_torch_extra_scans_a_state_dict_without_tensorflow(tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", "torch")
    work = tmp_path / "work"
    work.mkdir()
    setup = run([str(bin_dir / "python"), "-c", textwrap.dedent(TORCH_SETUP)], cwd=work,
                timeout=300)
    assert setup.returncode == 0, setup.stderr[-3000:]
    report = scan_report(bin_dir, work, ["model.pt", "--arch", "mynets:net"], PYTHONPATH=".")
    assert report["nb_classes"] == 3
    assert [entry["label"] for entry in report["labels"]] == [0, 1, 2]
    assert report["model_info"]["framework"] == "pytorch"
    assert not imports(bin_dir, "tensorflow", work)
    assert not imports(bin_dir, "keras", work)
    assert imports(bin_dir, "safetensors", work)


def test_only_the_keras_extra_scans_a_keras_file_without_torch(tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", "keras")
    work = tmp_path / "work"
    work.mkdir()
    setup = run([str(bin_dir / "python"), "-c", textwrap.dedent(KERAS_SETUP)], cwd=work,
                timeout=300)
    assert setup.returncode == 0, setup.stderr[-3000:]
    report = scan_report(bin_dir, work, ["model.keras"])
    assert report["nb_classes"] == 3
    assert [entry["label"] for entry in report["labels"]] == [0, 1, 2]
    assert report["model_info"]["framework"] == "tensorflow"
    assert not imports(bin_dir, "torch", work)
    assert not imports(bin_dir, "safetensors", work)

