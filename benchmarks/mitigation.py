"""Mitigation benchmark: filtering, pruning and unlearning on two backdoored models.

For each model the benchmark scans it with Neural Cleanse (cached), mitigates the flagged
label(s) with each method at its default settings, and measures on held-out test images:
clean accuracy, the attack success rate (ASR) of the *real* trigger and of the *reversed*
trigger, before and after, and the wall time of the mitigation.

Models:
- ``mnist_badnet``: the third-party ``badnet-MNIST.pth`` (5x5 white square at rows and columns
  23-27 -> label 1). Mitigation data: the first 5,000 MNIST training images (the scan uses the
  first 2,000 of them); test: the 10,000 MNIST test images.
- ``gtsrb_badnet33``: the ``gtsrb_infected`` model of ``paper_models.py`` (the paper's GTSRB CNN
  at a quarter of its width), trained there with 10 % of the training images poisoned by a 4x4
  white square at the bottom-right relabelled 33, as in the paper. The trained model and its scan
  are cached under ``benchmarks/cache/paper_models`` and shared with ``paper_detection.py``.
  Mitigation data: 5,000 held-back clean training images; test: the GTSRB test set.

Results go to ``benchmarks/results/mitigation.json`` as ``{model: {method: {...}}}``; running a
subset (``--models``) keeps the other models' entries.

Usage::

    python benchmarks/mitigation.py [--models mnist_badnet,gtsrb_badnet33] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import neuralcleanse as nc
import paper_models
from neuralcleanse.backends.torch.architectures import MNIST_BADNET_PREPROCESSING, MnistBadNet
from neuralcleanse.frontends.api import prepare
from neuralcleanse.mitigation.metrics import predicted_labels
from scan_cache import cached_scan, environment, save_results

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "mitigation.json"
DEFAULT_CACHE = ROOT / "benchmarks" / "cache"
MODELS = ("mnist_badnet", "gtsrb_badnet33")
METHODS = ("filtering", "pruning", "unlearning")


@dataclass
class Case:
    """One backdoored model and its data, ready to scan and mitigate."""

    name: str
    model: nn.Module
    target: int
    real_trigger: Callable[[np.ndarray], np.ndarray]
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_scan: np.ndarray
    y_scan: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    wrap: dict[str, Any]
    scan_options: dict[str, Any]
    notes: dict[str, Any]
    scan_name: str = ""  # name under which the scan is cached (default: ``name``)
    scan_cache: Path | None = None  # folder of the cached scan (default: --cache)


# -- MNIST: the third-party BadNet ----------------------------------------------------------
def mnist_trigger(x: np.ndarray) -> np.ndarray:
    """The published trigger: a white 5x5 square at rows and columns 23-27."""
    out = np.array(x, dtype=np.float32, copy=True)
    out[..., 23:28, 23:28] = 255.0
    return out


def mnist_case(data: Path) -> Case:
    model = MnistBadNet()
    model.load_state_dict(torch.load(data / "badnet-MNIST.pth", map_location="cpu",
                                     weights_only=True))
    model.eval()
    with np.load(data / "mnist.npz") as d:
        x_fit = d["x_train"][:5000].astype(np.float32)[:, None]
        y_fit = d["y_train"][:5000].astype(np.int64)
        x_test = d["x_test"].astype(np.float32)[:, None]
        y_test = d["y_test"].astype(np.int64)
    return Case("mnist_badnet", model, 1, mnist_trigger, x_fit, y_fit, x_fit[:2000],
                y_fit[:2000], x_test, y_test,
                wrap={"output": "probabilities", "preprocessing": MNIST_BADNET_PREPROCESSING},
                scan_options={}, notes={"model": "third-party badnet-MNIST.pth",
                                        "fit_images": "MNIST train[:5000]",
                                        "scan_images": "MNIST train[:2000]",
                                        "test_images": "MNIST test (10,000)"})


# -- GTSRB: the poisoned model of the paper reproduction ------------------------------------
def gtsrb_case(data: Path, cache: Path) -> Case:
    """The ``gtsrb_infected`` model of ``paper_models.py`` (trained there on first use)."""
    models = cache / "paper_models"
    model, info = paper_models.load_or_train("gtsrb_infected", data, models)
    split = paper_models.load_split(data, "gtsrb", channels_first=True)
    x_scan, y_scan = paper_models.scan_images("gtsrb_infected", data, models)
    return Case("gtsrb_badnet33", model, paper_models.DATASET_TARGET["gtsrb"],
                lambda x: paper_models.stamp(x, channels_first=True), split.x_clean,
                split.y_clean, x_scan, y_scan, split.x_test, split.y_test, wrap={},
                scan_options={"seed": 0},
                notes={"model": "gtsrb_infected of benchmarks/paper_models.py", **info,
                       "fit_images": f"{len(split.x_clean)} clean training images held back "
                                     "from training",
                       "scan_images": f"the first {len(x_scan)} of them",
                       "test_images": f"GTSRB test ({len(split.x_test):,})"},
                scan_name="gtsrb_infected", scan_cache=models / "scans")


# -- measuring ------------------------------------------------------------------------------
def real_asr(predict: Callable[[np.ndarray], np.ndarray], case: Case) -> float:
    """Share of real-triggered test images of other classes predicted as the target."""
    others = case.y_test != case.target
    labels = predicted_labels(predict(case.real_trigger(case.x_test[others])))
    return float(np.mean(labels == case.target))


def run_case(case: Case, cache: Path, methods: tuple[str, ...]) -> dict[str, Any]:
    scan, cached = cached_scan(case.scan_cache or cache, case.scan_name or case.name, case.model,
                               case.x_scan, case.y_scan, wrap=case.wrap,
                               options=case.scan_options)
    flagged = list(scan.flagged_labels)
    labels = flagged if case.target in flagged else [*flagged, case.target]
    print(f"{case.name}: flagged {flagged} (target {case.target}); scan "
          f"{scan.wall_seconds:.0f} s{' (cached)' if cached else ''}", flush=True)
    original = prepare(case.model, case.x_test[:64], **case.wrap)[0]
    real_before = real_asr(original.predict, case)
    out: dict[str, Any] = {}
    for method in methods:
        started = time.perf_counter()
        result = nc.mitigate(case.model, case.x_fit, case.y_fit, scan, method, labels=labels,
                             x_test=case.x_test, y_test=case.y_test, **case.wrap)
        wall = time.perf_counter() - started
        m = result.measurements
        entry: dict[str, Any] = {
            "clean_acc_before": m.clean_acc_before, "clean_acc_after": m.clean_acc_after,
            "real_asr_before": real_before, "real_asr_after": real_asr(result.predict, case),
            "reversed_asr_before": m.reversed_asr_before[case.target],
            "reversed_asr_after": m.reversed_asr_after[case.target],
            "target_class_acc_before": m.label_acc_before[case.target],
            "target_class_acc_after": m.label_acc_after[case.target],
            "wall_s": wall,
        }
        # Accuracy on the test images whose true label is not the target: shows whether a
        # loss of clean accuracy falls on the target class's own images.
        others = case.y_test != case.target
        for key, predict in (("before", original.predict), ("after", result.predict)):
            labels_pred = predicted_labels(predict(case.x_test[others]))
            entry[f"clean_acc_other_classes_{key}"] = float(
                np.mean(labels_pred == case.y_test[others]))
        report = result.report
        if method == "filtering":
            others = case.y_test != case.target
            real_x = case.real_trigger(case.x_test[others])
            entry.update(false_positive_rate=report.false_positive_rate,
                         detection_rate=report.detection_rate,
                         real_detection_rate=float(result.model.is_flagged(real_x).mean()),
                         target_fpr=report.target_fpr, layer=report.layer,
                         n_neurons=report.n_neurons)
        elif method == "pruning":
            entry.update(fraction_pruned=report.fraction, reached_target=report.reached_target,
                         layer=report.layer, n_neurons=report.n_neurons,
                         curve=[{"fraction": p.fraction,
                                 "reversed_asr": p.test_asr[case.target],
                                 "clean_acc": p.test_clean_acc,
                                 "target_class_acc": p.test_label_acc[case.target]}
                                for p in report.curve])
        else:
            entry.update(epochs=report.epochs, learning_rate=report.learning_rate,
                         stamped_fraction=report.stamped_fraction)
        entry.update(flagged_labels=flagged, target_label=case.target,
                     target_flagged=case.target in flagged, mitigated_labels=labels,
                     n_fit=len(case.x_fit), n_test=len(case.x_test),
                     scan_wall_s=scan.wall_seconds, scan_cached=cached,
                     scan_device=scan.model_info.get("device"),
                     scan_config={k: scan.config.get(k) for k in ("steps", "mini_batches",
                                                                  "batch_size", "seed")},
                     scan_norms=[round(float(v), 3) for v in scan.norms],
                     anomaly_index=round(float(scan.anomaly_index[case.target]), 3),
                     setup=case.notes)
        print(f"  {method:10s} {result.summary()}; real-trigger ASR {real_before:.1%} -> "
              f"{entry['real_asr_after']:.1%} ({wall:.1f} s)", flush=True)
        out[method] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--scan-steps", type=int, default=None,
                        help="override the scan's steps (default: the paper's 1000)")
    parser.add_argument("--scan-mini-batches", type=int, default=None,
                        help="override the scan's mini-batches per step (default: 31)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    methods = tuple(m for m in args.methods.split(",") if m)
    bad = [m for m in models if m not in MODELS] + [m for m in methods if m not in METHODS]
    if bad or not models or not methods:
        parser.error(f"unknown model or method: {bad}; models are {MODELS}, methods {METHODS}")
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (the shared data is needed)")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in models:
        case = mnist_case(args.data) if name == "mnist_badnet" else gtsrb_case(args.data,
                                                                               args.cache)
        if args.scan_steps is not None:
            case.scan_options["steps"] = args.scan_steps
        if args.scan_mini_batches is not None:
            case.scan_options["mini_batches"] = args.scan_mini_batches
        entry = run_case(case, args.cache, methods)
        for method in entry.values():
            method["environment"] = environment()
        results.setdefault(name, {}).update(entry)
        save_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
