"""Reproduce the paper's detection results on the models of ``paper_models.py``.

Every model is scanned with the paper's settings (the package defaults) on 2,000 clean
held-back images; the MNIST models with 3 restarts (seeds 0, 1, 2), the GTSRB models once
(seed 0) unless ``--gtsrb-restarts`` asks for more. Then the ``fast`` preset runs with the
same seeds, and its verdict is compared with the paper preset's run of the same seed.

For each scan the benchmark also reports the scan's efficiency: the model's FLOPs per image of
one trigger step (forward + backward to the input; counted with ``torch.utils.flop_counter`` for
the PyTorch models, computed from the layer shapes for the Keras ones) x the images processed /
the wall time, over the fp32 matrix-multiply peak of the same device, measured here with
``torch.mm``.

Results go to ``benchmarks/results/paper_detection.json`` (``--out``); running a subset
(``--models``) keeps the other models' entries. Per model: ``flagged_labels``, ``true_target``
(null for clean models), ``anomaly_index`` and ``norms`` (lists indexed by label), ``wall_s``,
``label_steps``, and the details (per-label steps and seconds, restarts, efficiency, the fast
preset's runs).

Usage::

    python benchmarks/paper_detection.py [--models ...] [--presets paper,fast] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import neuralcleanse as nc
from neuralcleanse.core.config import FAST_PRESET

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import paper_models  # noqa: E402  (a sibling script)
from scan_cache import cached_scan, environment, save_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "paper_detection.json"
SCAN_IMAGES = 2000
PRESETS = ("paper", "fast")


def seeds_for(name: str, args: argparse.Namespace) -> list[int]:
    """The seeds of a model's runs: by default 3 for the MNIST models, 1 for GTSRB."""
    count = args.mnist_restarts if name.startswith("mnist") else args.gtsrb_restarts
    return list(range(count))


# -- efficiency -----------------------------------------------------------------------------
def matmul_peak_gflops(device: str, seconds: float = 3.0) -> float:
    """Best fp32 ``torch.mm`` throughput over a few seconds (GFLOP/s)."""
    import torch

    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - started) / 1e9)
    return best


def torch_step_flops(model: Any, image_shape: tuple[int, ...]) -> tuple[float, float]:
    """Counted FLOPs per image of a forward pass and of one trigger step (forward + backward
    to the input with frozen weights)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    twin = copy.deepcopy(model).cpu().eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    n = 8
    x = torch.rand(n, *image_shape) * 255
    with FlopCounterMode(display=False) as forward:
        twin(x)
    mask = torch.zeros(1, *image_shape[1:], requires_grad=True)
    pattern = torch.zeros(*image_shape, requires_grad=True)
    with FlopCounterMode(display=False) as step:
        m = torch.sigmoid(mask)
        stamped = (1 - m) * x + m * pattern
        loss = torch.nn.functional.cross_entropy(twin(stamped), torch.zeros(n, dtype=torch.long))
        loss.backward()
    return forward.get_total_flops() / n, step.get_total_flops() / n


def keras_forward_flops(model: Any) -> float:
    """FLOPs per image of a Keras model's convolutions and dense layers, from their shapes."""
    total = 0.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += 2.0 * h * w * kh * kw * c_in * c_out
        elif kind == "Dense":
            c_in, c_out = layer.kernel.shape
            total += 2.0 * c_in * c_out
    return total


def step_flops(model: Any, spec: paper_models.Spec, image_shape: tuple[int, ...]
               ) -> dict[str, Any]:
    if spec.framework == "torch":
        fwd, step = torch_step_flops(model, image_shape)
        how = "counted with torch.utils.flop_counter"
    else:
        fwd = keras_forward_flops(model)
        step = 2 * fwd  # the backward pass to the input costs what the forward pass costs
        how = "convolution and dense layer shapes; step = 2 x forward"
    return {"forward_flops_per_image": fwd, "step_flops_per_image": step, "flops_method": how}


# -- scanning -------------------------------------------------------------------------------
def images_per_step(result: nc.ScanResult) -> int:
    cfg = result.config
    n = result.data_info.get("n_images", SCAN_IMAGES)
    batches = cfg["mini_batches"] or -(-n // cfg["batch_size"])
    return int(batches * cfg["batch_size"])


def run_summary(result: nc.ScanResult, wall: float, label_steps: int, flops: dict[str, Any],
                peak: float) -> dict[str, Any]:
    images = label_steps * images_per_step(result)
    achieved = flops["step_flops_per_image"] * images / wall / 1e9
    return {"wall_s": round(wall, 2), "label_steps": label_steps, "images_processed": images,
            "achieved_gflops": round(achieved, 2), "efficiency": round(achieved / peak, 4)}


def scan_model(name: str, args: argparse.Namespace, peak: float,
               earlier: dict[str, Any]) -> dict[str, Any]:
    """Scan one model with the chosen presets; ``earlier`` is its entry from a previous run
    (the fast preset is compared with the paper preset's runs found there when the paper
    preset is not run now)."""
    spec = paper_models.SPECS[name]
    cache = args.cache
    model, info = paper_models.load_or_train(name, args.data, cache)
    x, y = paper_models.scan_images(name, args.data, cache, SCAN_IMAGES)
    flops = step_flops(model, spec, x.shape[1:])
    scans = cache / "scans"
    seeds = seeds_for(name, args)
    device = args.device if spec.framework == "torch" else None
    entry: dict[str, Any] = {
        "framework": spec.framework, "dataset": spec.dataset,
        "true_target": spec.target, "model": info, **flops,
        "environment": environment(device), "matmul_peak_gflops": round(peak, 1),
    }
    paper_runs: list[dict[str, Any]] = []
    if "paper" in args.presets:
        options: dict[str, Any] = {"seed": seeds[0], **args.overrides}
        if len(seeds) > 1:
            options["restarts"] = len(seeds)
        print(f"{name}: paper preset, seeds {seeds}", flush=True)
        result, cached = cached_scan(scans, name, model, x, y, options=options, device=device,
                                     refresh=args.refresh)
        label_steps = int(sum(r.steps for r in result.labels))
        entry.update(
            flagged_labels=list(result.flagged_labels),
            anomaly_index=[round(float(v), 4) for v in result.anomaly_index],
            norms=[round(float(v), 4) for v in result.norms],
            wall_s=round(result.wall_seconds, 2), scan_cached=cached,
            scan_device=result.model_info.get("device", "tensorflow"),
            per_label=[{"label": r.label, "steps": r.steps, "seconds": round(r.seconds, 3),
                        "converged": r.converged} for r in result.labels],
            slowest_labels=[r.label for r in sorted(result.labels, key=lambda r: -r.seconds)[:5]],
        )
        if result.restarts:
            info_r = result.restarts
            entry["label_steps"] = int(sum(info_r["label_steps"]))
            entry["restarts"] = {
                "n": info_r["n"], "seeds": info_r["seeds"],
                "flagged_per_run": info_r["flagged_per_run"],
                "flag_counts": info_r["flag_counts"],
                "anomaly_index_per_run": info_r["anomaly_index"],
                "max_anomaly_index_per_run": [round(max(r), 4) for r in info_r["anomaly_index"]],
                "anomaly_index_spread": info_r["anomaly_index_spread"],
                "wall_s_per_run": info_r["wall_seconds"],
                "label_steps_per_run": info_r["label_steps"],
            }
            for seed, flagged, wall, steps in zip(info_r["seeds"], info_r["flagged_per_run"],
                                                  info_r["wall_seconds"], info_r["label_steps"]):
                paper_runs.append({"seed": seed, "flagged_labels": flagged,
                                   **run_summary(result, wall, steps, flops, peak)})
        else:
            entry["label_steps"] = label_steps
            paper_runs.append({"seed": seeds[0], "flagged_labels": list(result.flagged_labels),
                               **run_summary(result, result.wall_seconds, label_steps, flops,
                                             peak)})
        entry["paper_runs"] = paper_runs
        print(f"  flagged {entry['flagged_labels']} (target {spec.target}); max anomaly index "
              f"{max(entry['anomaly_index']):.2f}; {entry['wall_s']:.0f} s; "
              f"{entry['label_steps']} label-steps; efficiency "
              f"{paper_runs[0]['efficiency']:.1%}{' (cached)' if cached else ''}", flush=True)
    if "fast" in args.presets:
        fast_runs = []
        for seed in seeds:
            cfg = nc.ScanConfig.fast(seed=seed, **args.overrides)
            result, cached = cached_scan(scans, name, model, x, y, options={"config": cfg},
                                         device=device, refresh=args.refresh)
            steps = int(sum(r.steps for r in result.labels))
            run = {"seed": seed, "flagged_labels": list(result.flagged_labels),
                   "max_anomaly_index": round(float(np.max(result.anomaly_index)), 4),
                   "target_anomaly_index": (None if spec.target is None else
                                            round(float(result.anomaly_index[spec.target]), 4)),
                   "scan_cached": cached,
                   **run_summary(result, result.wall_seconds, steps, flops, peak)}
            match = [p for p in paper_runs or earlier.get("paper_runs", []) if p["seed"] == seed]
            if match:
                run["same_verdict_as_paper"] = run["flagged_labels"] == match[0]["flagged_labels"]
                run["speedup"] = round(match[0]["wall_s"] / run["wall_s"], 2)
            fast_runs.append(run)
            print(f"  fast seed {seed}: flagged {run['flagged_labels']}; {run['wall_s']:.0f} s"
                  + (f"; speed-up {run['speedup']}x, same verdict "
                     f"{run['same_verdict_as_paper']}" if match else ""), flush=True)
        entry["fast"] = {"settings": FAST_PRESET, "runs": fast_runs}
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(paper_models.SPECS),
                        help=f"comma-separated subset of {', '.join(paper_models.SPECS)}")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help="comma-separated subset of paper,fast")
    parser.add_argument("--mnist-restarts", type=int, default=3,
                        help="seeds per MNIST model (default 3)")
    parser.add_argument("--gtsrb-restarts", type=int, default=1,
                        help="seeds per GTSRB model (default 1)")
    parser.add_argument("--device", default="cpu", help="PyTorch device (cpu, cuda)")
    parser.add_argument("--data", type=Path, default=paper_models.DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=paper_models.DEFAULT_CACHE,
                        help="folder of the trained models and cached scans")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=None,
                        help="cap the steps per label (a quick check, not the paper preset)")
    parser.add_argument("--refresh", action="store_true",
                        help="scan again even where a cached scan exists")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    args.presets = [p for p in args.presets.split(",") if p]
    bad = [n for n in names if n not in paper_models.SPECS]
    bad += [p for p in args.presets if p not in PRESETS]
    if bad or not names or not args.presets:
        parser.error(f"unknown model or preset: {bad}")
    args.overrides = {} if args.steps is None else {"steps": args.steps}
    peak = matmul_peak_gflops(args.device)
    print(f"fp32 matmul peak on {args.device}: {peak:.0f} GFLOP/s", flush=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in names:
        results[name] = {**results.get(name, {}),
                         **scan_model(name, args, peak, results.get(name, {}))}
        save_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
