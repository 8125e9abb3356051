"""bf16 against fp32: the same scan in both number formats, side by side in one process.

``ScanConfig(precision="bf16")`` runs the PyTorch model's passes under bfloat16 autocast. It is
only worth having if it is faster AND gives the fp32 verdict, so every model here is scanned with
the same seed and settings in both formats, interleaved (fp32, bf16, fp32, bf16 ... with
``--repeats``) so that other load on the machine hits both alike. Per model and format: wall
time, label-steps, images/s through the model, norms, anomaly indices, the verdict and the
flagged / suspicious labels; and between the formats: the largest relative norm difference,
the largest anomaly-index difference and the overlap (IoU of the top pixels) of each flagged
label's reversed mask.

Models (each one runs only when its inputs are present):

* ``demo``: the demo's backdoored 16x16 digits CNN (trained here, seed 0; the demo's scan
  settings);
* ``badnet``: the third-party ``badnet-MNIST.pth`` on the first 1,000 MNIST test images, the
  paper's settings (``../shared/data``);
* ``gtsrb_infected`` / ``gtsrb_clean``: the GTSRB paper models of ``paper_models.py`` (PyTorch,
  43 labels, trained and cached on first use), ``--gtsrb-preset`` (``fast`` by default: at the
  paper's settings one fp32 scan takes about an hour on two CPU cores). With ``--formats bf16``
  and ``--gtsrb-preset paper`` the fp32 side is the stored paper-settings run of
  ``paper_detection.py`` (``benchmarks/results/paper_detection.json``, same seed and settings,
  the paper's verdict rule), so only the bf16 scan runs.

``--steps N`` times a fixed amount of work instead (N steps per label, no early stop, the
paper's verdict rule): the speed of the two formats on the same model without a whole scan.

The wall time of a scan that shared the cores with other work is longer than a quiet run's; the
process's CPU seconds are recorded beside it (``cpu_s``).

    python benchmarks/precision.py [--models demo,badnet,...] [--device cpu] [--repeats 1]

Prints a table and writes ``benchmarks/results/precision.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch  # noqa: E402

import neuralcleanse as nc  # noqa: E402
from badnet import load_badnet, scan_kwargs  # noqa: E402
from scan_cache import save_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "precision.json"
MODELS = ("demo", "badnet", "gtsrb_infected", "gtsrb_clean")
PRECISIONS = ("fp32", "bf16")


def cpu_flags() -> list[str]:
    """The CPU's reduced-precision units, as the kernel names them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16")


def demo_case() -> dict[str, Any]:
    """The demo's model, data and scan settings."""
    from neuralcleanse.frontends import demo

    data = demo.load_digits_splits(0)
    model = demo.train_backdoored_model(data, 0)
    return {"model": model, "x": data.x_clean, "y": data.y_clean, "target": demo.TARGET_LABEL,
            "settings": dict(demo.DEMO_SCAN), "scan_kwargs": {}}


def badnet_case(data_dir: Path) -> dict[str, Any] | None:
    """The third-party MNIST BadNet on the first 1,000 MNIST test images."""
    loaded = load_badnet(data_dir)
    if loaded is None:
        return None
    model, x, y = loaded
    return {"model": model, "x": x, "y": y, "target": None, "settings": {},
            "scan_kwargs": scan_kwargs()}


def gtsrb_case(name: str, data_dir: Path, cache: Path, preset: str) -> dict[str, Any] | None:
    """A GTSRB paper model (trained and cached by ``paper_models.py`` on first use)."""
    if not (data_dir / "gtsrb32.npz").is_file():
        return None
    import paper_models

    model, info = paper_models.load_or_train(name, data_dir, cache)
    x, y = paper_models.scan_images(name, data_dir, cache)
    settings = dict(nc.ScanConfig.preset(preset).to_dict())
    keep = ("mini_batches", "early_stop_patience")
    # the paper's verdict rule, as in the stored fp32 runs of paper_detection.py
    return {"model": model, "x": x, "y": y, "target": info.get("target"),
            "settings": {**{k: settings[k] for k in keep}, "verdict": "paper"},
            "scan_kwargs": {}, "model_info": info}


def stored_fp32(name: str) -> dict[str, Any] | None:
    """The stored paper-settings fp32 run of ``paper_detection.py`` (seed 0), if any."""
    path = ROOT / "benchmarks" / "results" / "paper_detection.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(name)
    if not entry or "norms" not in entry:
        return None
    return {"wall_s": entry["wall_s"], "cpu_s": None, "label_steps": entry["label_steps"],
            "images_per_s": None, "norms": entry["norms"],
            "anomaly_index": entry["anomaly_index"],
            "verdict": "backdoor" if entry["flagged_labels"] else "clean",
            "flagged": sorted(entry["flagged_labels"]), "suspicious": [], "masks": None,
            "model_info": entry.get("model"),
            "source": "benchmarks/results/paper_detection.json (paper_detection.py, seed 0)"}


def top_iou(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """IoU of the ``k`` largest pixels of two masks."""
    ta = set(np.argsort(a.ravel())[-k:].tolist())
    tb = set(np.argsort(b.ravel())[-k:].tolist())
    return len(ta & tb) / len(ta | tb)


def scan_once(case: dict[str, Any], precision: str, device: str, seed: int,
              steps: int | None = None) -> dict[str, Any]:
    """One scan (or ``steps`` fixed steps per label); its timing and its findings."""
    settings = dict(case["settings"])
    if steps:
        settings.update(steps=steps, early_stop=False, verdict="paper")
    config = nc.ScanConfig(seed=seed, progress=False, precision=precision, **settings)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    result = nc.scan(case["model"], case["x"], case["y"], config=config, device=device,
                     **case["scan_kwargs"])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
    confirm = result.confirmation or {}
    first = confirm.get("first_run", {}).get("label_steps")
    steps = int(first) if first is not None else sum(int(r.steps) for r in result.labels)
    steps += int(confirm.get("runs_label_steps") or 0)
    per_step = (config.mini_batches or int(np.ceil(len(case["x"]) / config.batch_size))) \
        * config.batch_size
    return {
        "wall_s": round(wall, 2), "cpu_s": round(cpu_s, 1), "label_steps": steps,
        "images_per_s": round(steps * per_step / wall, 1),
        "norms": [round(float(n), 4) for n in result.norms],
        "anomaly_index": [round(float(a), 4) for a in result.anomaly_index],
        "verdict": result.verdict, "flagged": list(result.flagged_labels),
        "suspicious": list(result.suspicious_labels),
        "masks": {int(r.label): r.mask for r in result.labels},
    }


def compare(fp32: dict[str, Any], bf16: dict[str, Any]) -> dict[str, Any]:
    """How far the bf16 run is from the fp32 one."""
    n32, n16 = np.asarray(fp32["norms"]), np.asarray(bf16["norms"])
    a32, a16 = np.asarray(fp32["anomaly_index"]), np.asarray(bf16["anomaly_index"])
    ious: dict[str, float] | None = {} if fp32["masks"] is not None else None
    for label in sorted(set(fp32["flagged"]) | set(bf16["flagged"])) if ious is not None else []:
        m32, m16 = fp32["masks"][label], bf16["masks"][label]
        k = max(1, int(round(float(m32.sum()))))
        ious[str(label)] = round(top_iou(m32, m16, k), 3)
    return {"same_verdict": fp32["verdict"] == bf16["verdict"]
            and fp32["flagged"] == bf16["flagged"],
            "max_norm_rel_diff": round(float(np.max(np.abs(n16 - n32) / n32)), 4),
            "max_index_diff": round(float(np.max(np.abs(a16 - a32))), 4),
            "flagged_mask_top_iou": ious,  # None: the stored fp32 run kept no masks
            "speedup": round(fp32["wall_s"] / bf16["wall_s"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,badnet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="scans per format (interleaved); the fastest wall time counts")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path,
                        default=ROOT / "benchmarks" / "cache" / "paper_models")
    parser.add_argument("--gtsrb-preset", default="fast", choices=("fast", "paper"))
    parser.add_argument("--steps", type=int, default=None,
                        help="time N fixed steps per label (no early stop) instead of a scan")
    parser.add_argument("--formats", default="fp32,bf16",
                        help="fp32,bf16 (both scanned) or bf16 (GTSRB at --gtsrb-preset paper: "
                             "fp32 from the stored paper_detection.py run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(wanted) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    out: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "cpu_units": cpu_flags(),
                    "device": args.device, "torch": torch.__version__,
                    "cuda_device": (torch.cuda.get_device_name()
                                    if args.device.startswith("cuda") else None)},
        "seed": args.seed, "repeats": args.repeats, "models": {}}
    if args.out.is_file():  # keep the other models' entries
        previous = json.loads(args.out.read_text())
        if previous.get("machine", {}).get("device") == args.device:
            out["models"].update(previous.get("models", {}))
    rows = []
    for name in wanted:
        if name == "demo":
            case = demo_case()
        elif name == "badnet":
            case = badnet_case(args.data)
        else:
            case = gtsrb_case(name, args.data, args.cache, args.gtsrb_preset)
        if case is None:
            print(f"{name}: skipped, its data is not in {args.data}")
            continue
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        if set(formats) - set(PRECISIONS) or "bf16" not in formats:
            raise SystemExit("--formats must be fp32,bf16 or bf16")
        runs: dict[str, dict[str, Any]] = {}
        if "fp32" not in formats:
            stored = stored_fp32(name) if (name.startswith("gtsrb")
                                           and args.gtsrb_preset == "paper") else None
            if stored is None:
                raise SystemExit(f"{name}: no stored fp32 run to compare with; scan both")
            runs["fp32"] = stored
        for _ in range(args.repeats):
            for precision in formats:
                run = scan_once(case, precision, args.device, args.seed, args.steps)
                if precision not in runs or run["wall_s"] < runs[precision]["wall_s"]:
                    runs[precision] = run
        diff = compare(runs["fp32"], runs["bf16"])
        entry = {"settings": case["settings"], "fixed_steps": args.steps,
                 "true_target": case["target"], **diff}
        if "model_info" in runs["fp32"]:  # the stored run's model may be another training
            entry["model_info"] = case.get("model_info")
            entry["fp32_model_info"] = runs["fp32"]["model_info"]
        for precision, run in runs.items():
            entry[precision] = {k: v for k, v in run.items()
                                if k not in ("masks", "model_info")}
            rows.append((name, precision, run))
        entry["preset"] = args.gtsrb_preset if name.startswith("gtsrb") else None
        out["models"][name] = entry
    print(f"{'model':<16} {'format':<6} {'wall s':>8} {'label-steps':>11} {'img/s':>8} "
          f"{'verdict':<10} flagged  suspicious")
    for name, precision, run in rows:
        rate = f"{run['images_per_s']:8.0f}" if run["images_per_s"] else f"{'-':>8}"
        print(f"{name:<16} {precision:<6} {run['wall_s']:8.1f} {run['label_steps']:11d} "
              f"{rate} {run['verdict']:<10} {run['flagged']!s:<8} "
              f"{run['suspicious']}")
    for name in wanted:
        if name in out["models"]:
            e = out["models"][name]
            print(f"{name}: bf16 speed-up {e['speedup']:.2f}x, same verdict {e['same_verdict']}, "
                  f"norms within {e['max_norm_rel_diff']:.1%}, indices within "
                  f"{e['max_index_diff']:.2f}, flagged-mask IoU {e['flagged_mask_top_iou']}")
    save_results(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
