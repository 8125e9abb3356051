"""What the benchmarks share: cached scans, the machine description and the results file.

The mitigation benchmark and the paper reproduction scan the same GTSRB model with the same
settings; both go through :func:`cached_scan`, so whichever runs first pays for the scan.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

import neuralcleanse as nc


def weights_bytes(model: Any) -> list[bytes]:
    """The raw bytes of a PyTorch or Keras model's weights, in a fixed order."""
    if hasattr(model, "state_dict"):
        return [v.detach().cpu().numpy().tobytes() for v in model.state_dict().values()]
    return [np.asarray(w).tobytes() for w in model.get_weights()]


def scan_key(name: str, model: Any, x: np.ndarray, y: np.ndarray,
             options: dict[str, Any]) -> str:
    """A short hash of everything that decides a scan's result (not the device)."""
    digest = hashlib.sha256(b"".join([
        name.encode(), json.dumps(options, sort_keys=True, default=str).encode(),
        np.ascontiguousarray(x).tobytes(), np.ascontiguousarray(y).tobytes(),
        *weights_bytes(model)]))
    return digest.hexdigest()[:16]


def cached_scan(cache: Path, name: str, model: Any, x: np.ndarray, y: np.ndarray, *,
                wrap: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                device: str | None = None, refresh: bool = False) -> tuple[nc.ScanResult, bool]:
    """Scan (or read the cached scan of) ``model``; returns ``(result, was_cached)``.

    Args:
        cache: Folder of the cached results (``<name>_scan_<key>.json``).
        name: The model's benchmark name (part of the key).
        model: A PyTorch module or a Keras model.
        x: Clean images; y: their labels.
        wrap: Options of :func:`neuralcleanse.scan` that describe the model (output, ...).
        options: Search options (ScanConfig fields, ``config``, ``restarts``).
        device: PyTorch device (not part of the key; recorded in the result's model info).
        refresh: Scan again even when a cached result exists.
    """
    wrap, options = dict(wrap or {}), dict(options or {})
    key_options = {k: (v.to_dict() if isinstance(v, nc.ScanConfig) else v)
                   for k, v in options.items()}
    path = cache / f"{name}_scan_{scan_key(name, model, x, y, key_options)}.json"
    if path.is_file() and not refresh:
        return nc.ScanResult.from_json(path), True
    if device is not None and hasattr(model, "state_dict"):
        wrap["device"] = device
    result = nc.scan(model, x, y, progress=False, **wrap, **options)
    cache.mkdir(parents=True, exist_ok=True)
    result.to_json(path)
    return result, False


def environment(device: str | None = None) -> dict[str, Any]:
    """Where a benchmark ran: CPUs, threads, accelerator and versions."""
    import torch

    out: dict[str, Any] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "machine": platform.machine(), "python": sys.version.split()[0],
                           "torch": torch.__version__, "neuralcleanse": nc.__version__,
                           "device": device or "cpu"}
    if device and device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write a benchmark's ``{model: {...}}`` results as indented JSON and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}", flush=True)
