"""Many small models: scanned one after another in one process, or by k Ray workers.

Trains N digits CNNs (``small_cnn`` on scikit-learn's 8x8 digits, one seed each; every other one
poisoned with a white square -> label 7 through ``io.digits.stamp_square``), then scans them all
with :func:`neuralcleanse.scan_many`:

* ``sequential``: ``parallel=False`` (what ``scan-many --sequential`` runs), one model after
  another in this process, with 1 torch thread and with k torch threads;
* ``ray``: k Ray workers on this machine (a Ray started here with ``num_cpus=k``, one CPU per
  task), the time to start Ray counted apart;
* ``re-graded``: the one-thread sequential run resumed (``resume=True``) under the paper rule,
  then under the default rule again: the finished models are graded again from the searches
  the first run kept, so only the examples are stamped (the paper rule's verdicts must be the
  first run's first pass, the default rule's the first run's own).

For each: wall time, speed-up over the one-thread sequential run, and CPU use of the whole process
tree (this process, Ray's processes and its workers): CPU seconds, and the average number of busy
cores. The norms of every model must be the same in every run (same seeds).

    python benchmarks/scan_many.py [--models N] [--workers K] [--steps S] [--mini-batches M]

Prints a table and writes ``benchmarks/results/scan_many.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import neuralcleanse as nc
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.backends.torch.training import seeded, torch_threads, train_classifier
from neuralcleanse.io.digits import digits_images, stamp_square

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from scan_cache import environment, save_results  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scan_many.json"
ARCH = "neuralcleanse.backends.torch.architectures:small_cnn"
TARGET = 7


# -- CPU of the process tree ------------------------------------------------------------------
class TreeCpu:
    """CPU seconds used by this process and every descendant while the block runs.

    With psutil, its process tree; otherwise ``/proc``: every process whose parent chain leads
    here is sampled (user + system time) every ``interval`` seconds and its last reading kept,
    so a process that ends between two samples loses at most one interval of its time.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.seen: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        try:
            import psutil

            self._psutil: Any = psutil
        except ImportError:
            self._psutil = None
        self.method = "psutil" if self._psutil else "/proc sampling"

    def _proc_table(self) -> dict[int, tuple[int, float, float]]:
        """``pid -> (parent, start time, CPU seconds)`` of every process in ``/proc``."""
        table = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            ppid, utime, stime, start = int(fields[1]), int(fields[11]), int(fields[12]), \
                float(fields[19])
            table[int(entry)] = (ppid, start, (utime + stime) / self._tick)
        return table

    def _sample(self) -> None:
        me = os.getpid()
        if self._psutil is not None:
            procs = [self._psutil.Process(me)]
            procs += procs[0].children(recursive=True)
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                except self._psutil.Error:
                    continue
            return
        table = self._proc_table()
        for pid, (_, start, cpu) in table.items():
            walk, hops = pid, 0
            while walk not in (me, 0, 1) and walk in table and hops < 64:
                walk, hops = table[walk][0], hops + 1
            if walk == me:
                self.seen[(pid, start)] = cpu

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeCpu:
        self._sample()
        self.before = dict(self.seen)
        self.seen.clear()
        self.start = time.perf_counter()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.perf_counter() - self.start
        self.cpu_seconds = sum(cpu - self.before.get(key, 0.0) for key, cpu in self.seen.items())


# -- models ---------------------------------------------------------------------------------
def make_models(folder: Path, n: int, epochs: int) -> tuple[Path, Path, list[bool]]:
    """Train ``n`` digits CNNs (seeds 0..n-1, odd seeds poisoned); save them and the data."""
    x, y = digits_images(1)
    zoo = folder / "zoo"
    zoo.mkdir(parents=True, exist_ok=True)
    poisoned = []
    with torch_threads(1):
        for seed in range(n):
            xs, ys = x, y
            if seed % 2:
                rng = np.random.default_rng(seed)
                pick = rng.choice(len(x), len(x) // 10, replace=False)
                xs, ys = x.copy(), y.copy()
                xs[pick] = stamp_square(x[pick], 2)
                ys[pick] = TARGET
            seeded(seed)
            model = train_classifier(small_cnn(image_size=8), xs, ys, seed=seed, epochs=epochs)
            torch.save(model.state_dict(), zoo / f"digits{seed:02d}.pt")
            poisoned.append(bool(seed % 2))
    data = folder / "digits.npz"
    keep = np.random.default_rng(0).permutation(len(x))[:500]
    np.savez(data, x=x[keep], y=y[keep])
    return zoo, data, poisoned


def norms_of(out: Path, summary: Any) -> dict[str, list[float]]:
    """Each model's trigger norms, from its report."""
    result = {}
    for m in summary.models:
        report = json.loads((out / "models" / m.name / "report.json").read_text())
        result[m.name] = [label["norm"] for label in report["labels"]]
    return result


def first_passes(out: Path) -> dict[str, dict[str, Any]]:
    """Each model's first pass (norms, flags) as its default-rule report records it."""
    return {f.name: json.loads((f / "report.json").read_text())["confirmation"]["first_run"]
            for f in sorted((out / "models").iterdir())}


def graded_as_first_pass(out: Path, first: dict[str, dict[str, Any]]) -> bool:
    """Whether every report in ``out`` is the paper rule on the first pass ``first`` holds."""
    ok = True
    for name, run_first in first.items():
        report = json.loads((out / "models" / name / "report.json").read_text())
        ok &= (report["confirmation"]["rule"] == "paper"
               and [lab["norm"] for lab in report["labels"]] == run_first["norms"]
               and report["flagged_labels"] == run_first["flagged"])
    return bool(ok)


def run(label: str, manifest: Any, out: Path, config: dict[str, Any], **kwargs: Any
        ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    with TreeCpu() as cpu:
        summary = nc.scan_many(manifest, out, config=config, **kwargs)
    failed = [f"{m.name}: {m.error}" for m in summary.failed]
    if failed:
        raise SystemExit(f"{label}: models failed: {failed}")
    row = {"wall_seconds": round(cpu.wall, 2), "cpu_seconds": round(cpu.cpu_seconds, 2),
           "busy_cores": round(cpu.cpu_seconds / cpu.wall, 2),
           "model_seconds": summary.totals()["model_seconds"],
           "label_steps": summary.totals()["label_steps"],
           "flagged": [m.name for m in summary.flagged], "engine": summary.settings["engine"]}
    print(f"{label}: {row['wall_seconds']} s wall, {row['busy_cores']} busy cores", flush=True)
    return row, norms_of(out, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=8, help="number of models (N)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (k)")
    parser.add_argument("--steps", type=int, default=50, help="steps per label")
    parser.add_argument("--mini-batches", type=int, default=4, help="mini-batches per step")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    import ray

    config = {"steps": args.steps, "mini_batches": args.mini_batches, "early_stop": False}
    k = args.workers
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="scan-many-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        zoo, data, poisoned = make_models(folder, args.models, args.epochs)
        print(f"trained {args.models} models in {time.perf_counter() - started:.1f} s",
              flush=True)
        manifest = (zoo, data, {"arch": ARCH, "arch_kwargs": {"image_size": 8}})
        runs: dict[str, Any] = {}
        norms: dict[str, Any] = {}
        with torch_threads(1):
            runs["sequential, 1 thread"], norms["seq1"] = run(
                "sequential, 1 thread", manifest, folder / "seq1", config, parallel=False)
            first = first_passes(folder / "seq1")
            runs["re-graded: paper rule"], _ = run(
                "re-graded: paper rule", manifest, folder / "seq1", {**config, "verdict": "paper"},
                parallel=False, resume=True)
            paper = graded_as_first_pass(folder / "seq1", first)
            runs["re-graded: default rule again"], norms["regraded"] = run(
                "re-graded: default rule again", manifest, folder / "seq1", config,
                parallel=False, resume=True)
        with torch_threads(k):
            runs[f"sequential, {k} threads"], norms["seqk"] = run(
                f"sequential, {k} threads", manifest, folder / "seqk", config, parallel=False)
        with TreeCpu() as start:
            ray.init(num_cpus=k, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, _temp_dir=str(folder / "ray"))
        try:
            runs[f"ray, {k} workers"], norms["ray"] = run(
                f"ray, {k} workers", manifest, folder / "ray-run", config, parallel=True,
                cpus_per_scan=1.0)
        finally:
            ray.shutdown()
        runs[f"ray, {k} workers"]["ray_start_seconds"] = round(start.wall, 2)

    base = runs["sequential, 1 thread"]["wall_seconds"]
    for row in runs.values():
        row["speed_up"] = round(base / row["wall_seconds"], 2)
    same = norms["seq1"] == norms["seqk"] == norms["ray"] == norms["regraded"]
    planted = [f"digits{s:02d}" for s, p in enumerate(poisoned) if p]
    results = {"environment": environment(), "cpu_measure": TreeCpu().method,
               "models": args.models, "workers": k, "config": config,
               "poisoned_models": planted, "same_norms_in_every_run": same,
               "paper_rule_regraded_equals_first_pass": paper,
               "load_average_1min_before_after": [round(load_before[0], 2),
                                                  round(os.getloadavg()[0], 2)],
               "runs": runs}

    print(f"\n{args.models} digits CNNs (8x8), {args.steps} steps x {args.mini_batches} "
          f"mini-batches per label, {os.cpu_count()} CPUs; busy cores = CPU seconds of the "
          "process tree / wall time")
    print(f"{'run':<32}{'wall s':>9}{'speed-up':>10}{'CPU s':>9}{'busy cores':>12}")
    for name, row in runs.items():
        print(f"{name:<32}{row['wall_seconds']:>9.2f}{row['speed_up']:>10.2f}"
              f"{row['cpu_seconds']:>9.2f}{row['busy_cores']:>12.2f}")
    print(f"Ray start: {runs[f'ray, {k} workers']['ray_start_seconds']:.2f} s (not in the wall "
          f"time above); same norms in every run: {same}; load average before/after: "
          f"{results['load_average_1min_before_after']}; re-graded under the paper rule: "
          f"{'as the paper rule grades the first pass' if paper else 'NOT as expected'}")
    save_results(args.out, results)


if __name__ == "__main__":
    main()
