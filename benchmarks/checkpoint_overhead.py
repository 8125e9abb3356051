"""What the mid-search checkpoints cost: the same scan without, with default and with per-step ones.

A scan that can be resumed mid-search (``scan --checkpoint-every``, or ``checkpoint=`` in the
API) takes a snapshot of the whole search state after every step (so that Ctrl-C can save the
last finished step) and writes it to disk every ``checkpoint_every_s`` seconds (300 by default).
This benchmark runs one model's scan three ways, interleaved in one process with the same seed
and a fixed amount of work (``early_stop=False``):

* ``none``: no checkpoint callback;
* ``default``: checkpoints written through :class:`~neuralcleanse.io.resume.PartialStore` every
  300 s (the CLI's default; a short run writes none, but pays for the per-step snapshot);
* ``every step``: written after every step (``checkpoint_every_s=0``, the worst case).

It times the snapshots (``_SearchState.state``) and the writes (``PartialStore.save_checkpoint``)
inside the scan, so the overhead is measured directly and does not drown in the noise of a
shared machine: ``overhead = (snapshot + write seconds) / wall seconds``. The share at the
default interval for a long scan is ``snapshot share + write seconds per checkpoint / 300``.
Checks that all three runs give identical norms.

    python benchmarks/checkpoint_overhead.py [--models badnet,gtsrb] [--steps 40]

(``gtsrb`` is the GTSRB paper model of ``paper_models.py``, when it is cached: 43 labels, so a
few steps are enough, e.g. ``--models gtsrb --steps 3``; a run keeps the other models' entries.)

Prints a table and writes ``benchmarks/results/checkpoint_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch  # noqa: E402

import neuralcleanse as nc  # noqa: E402
from badnet import load_badnet, scan_kwargs  # noqa: E402
from neuralcleanse.io.resume import PartialStore  # noqa: E402
from neuralcleanse.search import reverse  # noqa: E402
from scan_cache import save_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "checkpoint_overhead.json"
MODES = ("none", "default", "every step")
DEFAULT_INTERVAL_S = reverse.CHECKPOINT_EVERY_S


class Timers:
    """Seconds and calls spent in the snapshots and the writes (patched in for a run)."""

    def __init__(self) -> None:
        self.snapshot_s = 0.0
        self.snapshots = 0
        self.write_s = 0.0
        self.writes = 0
        self.bytes = 0

    def __enter__(self) -> Timers:
        self._state = reverse._SearchState.state
        self._save = PartialStore.save_checkpoint
        timers = self

        def state(search: Any, session: Any) -> dict[str, np.ndarray]:
            started = time.perf_counter()
            out = timers._state(search, session)
            timers.snapshot_s += time.perf_counter() - started
            timers.snapshots += 1
            return out

        def save(store: PartialStore, snapshot: dict[str, np.ndarray]) -> None:
            started = time.perf_counter()
            timers._save(store, snapshot)
            timers.write_s += time.perf_counter() - started
            timers.writes += 1
            timers.bytes = store.checkpoint_path.stat().st_size

        reverse._SearchState.state = state
        PartialStore.save_checkpoint = save
        return self

    def __exit__(self, *exc: object) -> None:
        reverse._SearchState.state = self._state
        PartialStore.save_checkpoint = self._save


def cases(data: Path) -> dict[str, dict[str, Any]]:
    """The models whose inputs are present."""
    out: dict[str, dict[str, Any]] = {}
    loaded = load_badnet(data)
    if loaded is not None:
        model, x, y = loaded
        out["badnet"] = {"model": model, "x": x, "y": y, "kwargs": scan_kwargs()}
    cache = ROOT / "benchmarks" / "cache" / "paper_models"
    if (cache / "gtsrb_infected.pt").is_file() and (data / "gtsrb32.npz").is_file():
        import paper_models

        model, _ = paper_models.load_or_train("gtsrb_infected", data, cache)
        x, y = paper_models.scan_images("gtsrb_infected", data, cache)
        out["gtsrb"] = {"model": model, "x": x, "y": y, "kwargs": {}}
    return out


def run(case: dict[str, Any], mode: str, steps: int, folder: Path) -> dict[str, Any]:
    """One scan with the checkpoints of ``mode``."""
    config = nc.ScanConfig(steps=steps, early_stop=False, verdict="paper", progress=False)
    with Timers() as timers:  # patched first: the callback below is the timed method
        options: dict[str, Any] = {}
        if mode != "none":
            store = PartialStore(folder / mode.replace(" ", "_"), "benchmark")
            options = {"checkpoint": store.save_checkpoint,
                       "checkpoint_every_s": 0.0 if mode == "every step" else DEFAULT_INTERVAL_S}
        started = time.perf_counter()
        result = nc.scan(case["model"], case["x"], case["y"], config=config, **case["kwargs"],
                         **options)
        wall = time.perf_counter() - started
    spent = timers.snapshot_s + timers.write_s
    return {"wall_s": round(wall, 3), "snapshot_s": round(timers.snapshot_s, 4),
            "snapshots": timers.snapshots, "write_s": round(timers.write_s, 4),
            "writes": timers.writes, "checkpoint_bytes": timers.bytes,
            "overhead": spent / wall, "norms": [float(n) for n in result.norms]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="badnet,gtsrb")
    parser.add_argument("--steps", type=int, default=40, help="steps per label (fixed)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    available = cases(args.data)
    out: dict[str, Any] = {"machine": {"platform": platform.platform(),
                                       "cpu_count": os.cpu_count(),
                                       "torch_threads": torch.get_num_threads()},
                           "default_interval_s": DEFAULT_INTERVAL_S, "models": {}}
    if args.out.is_file():  # keep the other models' entries (each records its steps)
        out["models"].update(json.loads(args.out.read_text()).get("models", {}))
    print(f"{'model':<8} {'checkpoints':<11} {'wall s':>8} {'snapshots':>9} {'snap ms':>8} "
          f"{'writes':>6} {'write ms':>8} {'file KB':>8} {'overhead':>8}")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in available:
            print(f"{name}: skipped (its model or data is absent)")
            continue
        runs: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                for mode in MODES:
                    r = run(available[name], mode, args.steps, Path(tmp))
                    if mode not in runs or r["wall_s"] < runs[mode]["wall_s"]:
                        runs[mode] = r
        same = all(runs[m]["norms"] == runs["none"]["norms"] for m in MODES)
        every = runs["every step"]
        per_write = every["write_s"] / max(every["writes"], 1)
        snap_share = runs["default"]["snapshot_s"] / runs["default"]["wall_s"]
        entry = {"steps": args.steps, "runs": {m: {k: v for k, v in r.items() if k != "norms"}
                          for m, r in runs.items()},
                 "identical_norms": same, "seconds_per_write": per_write,
                 "long_scan_overhead_at_default_interval": snap_share
                 + per_write / DEFAULT_INTERVAL_S}
        out["models"][name] = entry
        for mode in MODES:
            r = runs[mode]
            snap = 1000 * r["snapshot_s"] / max(r["snapshots"], 1)
            write = 1000 * r["write_s"] / max(r["writes"], 1)
            print(f"{name:<8} {mode:<11} {r['wall_s']:8.2f} {r['snapshots']:9d} {snap:8.2f} "
                  f"{r['writes']:6d} {write:8.2f} {r['checkpoint_bytes'] / 1024:8.0f} "
                  f"{r['overhead']:8.2%}")
        print(f"{name}: identical norms in all three runs: {same}; a long scan at the default "
              f"{DEFAULT_INTERVAL_S:.0f} s interval spends "
              f"{entry['long_scan_overhead_at_default_interval']:.3%} of its time on checkpoints")
    save_results(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
