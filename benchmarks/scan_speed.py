"""Speed of a default Neural Cleanse scan: all labels stacked vs one label at a time.

Scans the third-party ``badnet-MNIST.pth`` on the first 1000 MNIST test images with the paper's
settings, in one process, and compares the throughput through the model with the model's bare
forward+backward throughput at the same batch size.

    python benchmarks/scan_speed.py [--steps N] [--device cpu|cuda] [--mode batched|one_label|both]
        [--precision fp32|bf16|both]

The verdict rule is the paper's (one run, no confirmation), so the numbers are those of one
search. ``--precision both`` adds the batched search in bf16 (``ScanConfig.precision``) and the
bare model's throughput under the same autocast.

Prints a table and writes ``benchmarks/results/scan_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

import neuralcleanse as nc
from badnet import load_badnet
from neuralcleanse.backends.torch.architectures import MNIST_BADNET_PREPROCESSING
from neuralcleanse.backends.torch.session import to_channels_last

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "scan_speed.json"


class PeakMemory:
    """Peak resident memory of this process (and CUDA memory) while the block runs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_rss = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._rss())
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())
        self.peak_cuda = (torch.cuda.max_memory_allocated() if self.device.startswith("cuda")
                          else 0)


def bare_throughput(model: torch.nn.Module, batch: int, device: str, seconds: float = 3.0,
                    precision: str = "fp32") -> float:
    """Images per second of the model alone: forward + backward to the input, same batch."""
    sub, div = MNIST_BADNET_PREPROCESSING
    x = torch.rand(batch, 1, 28, 28, device=device) * 255
    if torch.device(device).type == "cpu":  # the layout the CPU search feeds the model
        x = to_channels_last(x)
    for p in model.parameters():
        p.requires_grad_(False)

    def once() -> None:
        xx = x.clone().requires_grad_(True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            out = model((xx - sub) / div)
        out.float().clamp_min(1e-12).log()[:, 1].sum().backward()

    for _ in range(3):
        once()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        n += batch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def run_mode(mode: str, model: torch.nn.Module, x: np.ndarray, y: np.ndarray,
             args: argparse.Namespace, precision: str = "fp32") -> dict:
    config = nc.ScanConfig(steps=args.steps, label_batch=1 if mode == "one_label" else None,
                           progress=not args.quiet, verdict="paper", precision=precision)
    with PeakMemory(args.device) as mem:
        start = time.perf_counter()
        result = nc.scan(model, x, y, config=config, output="probabilities",
                         preprocessing=MNIST_BADNET_PREPROCESSING, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    label_steps = [r.steps for r in result.labels]
    images = sum(label_steps) * config.mini_batches * config.batch_size
    stack = 1 if mode == "one_label" else min(10, len(result.labels))
    return {
        "wall_s": wall,
        "label_steps": label_steps,
        "total_label_steps": int(sum(label_steps)),
        "images": int(images),
        "images_per_s": images / wall,
        "model_batch": stack * config.batch_size,
        "precision": precision,
        "bare_images_per_s": bare_throughput(model, stack * config.batch_size, args.device,
                                             precision=precision),
        "peak_rss_mb": mem.peak_rss / 2**20,
        "peak_cuda_mb": mem.peak_cuda / 2**20,
        "flagged_labels": result.flagged_labels,
        "anomaly_index": [round(float(a), 4) for a in result.anomaly_index],
        "norms": [round(float(n), 3) for n in result.norms],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["batched", "one_label", "both"], default="both")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32",
                        help="both: the batched search in fp32 and in bf16")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder with badnet-MNIST.pth and mnist_test_first1000.npz")
    args = parser.parse_args()
    loaded = load_badnet(args.data)
    if loaded is None:
        raise SystemExit(f"{args.data} lacks badnet-MNIST.pth or mnist_test_first1000.npz: "
                         "this benchmark needs ../shared/data")
    model, x, y = loaded
    model = model.to(args.device)

    modes = ["batched", "one_label"] if args.mode == "both" else [args.mode]
    precisions = {"both": ["fp32", "bf16"]}.get(args.precision, [args.precision])
    out: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                             "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "device": args.device,
                             "cuda_device": (torch.cuda.get_device_name() if
                                             args.device.startswith("cuda") else None)},
                 "steps": args.steps}
    runs = []  # (row name, key in out)
    for mode in modes:
        for precision in precisions if mode == "batched" else precisions[:1]:
            key = mode if precision == precisions[0] else f"{mode}_{precision}"
            out[key] = run_mode(mode, model, x, y, args, precision)
            runs.append(key)
    if "batched" in out and "one_label" in out:
        out["speed_ratio"] = out["one_label"]["wall_s"] / out["batched"]["wall_s"]
    if "batched_bf16" in out:
        out["bf16_speedup"] = out["batched"]["wall_s"] / out["batched_bf16"]["wall_s"]

    header = (f"{'mode':<13} {'format':<6} {'wall s':>8} {'label-steps':>11} {'img/s':>8} "
              f"{'bare img/s':>10} {'model/bare':>10} {'peak RSS MB':>11} flagged")
    print(header)
    for key in runs:
        r = out[key]
        print(f"{key:<13} {r['precision']:<6} {r['wall_s']:8.1f} {r['total_label_steps']:11d} "
              f"{r['images_per_s']:8.0f} {r['bare_images_per_s']:10.0f} "
              f"{r['images_per_s'] / r['bare_images_per_s']:10.0%} {r['peak_rss_mb']:11.0f} "
              f"{r['flagged_labels']}")
    if "speed_ratio" in out:
        print(f"speed-up of the all-labels search: {out['speed_ratio']:.2f}x")
    if "bf16_speedup" in out:
        print(f"speed-up of bf16 over fp32 (batched): {out['bf16_speedup']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
