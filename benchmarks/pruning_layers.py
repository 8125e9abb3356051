"""Why pruning misses its target: the pruning frontier per layer, with the real trigger as oracle.

For each backdoored model of ``mitigation.py`` the benchmark ranks the neurons of several layers
by their activation gap (mean on stamped minus mean on clean fitting images, the ranking
``neuralcleanse`` prunes by) and prunes growing shares of each layer. It ranks twice:

- ``reversed``: stamped with the scan's reversed trigger, as the library does;
- ``real``: stamped with the *real* trigger, an oracle no defender has. If even this ranking
  cannot push the real trigger's attack success below 5 % while keeping clean accuracy within
  3 points, pruning neurons of that layer cannot meet the target on that model, whatever trigger
  the scan finds.

At each share it measures, on the test images: clean accuracy, accuracy on the target class's
own images, and the attack success rate of the real and of the reversed trigger. For every
(layer, ranking) it reports the smallest share whose real-trigger ASR is below 5 % and the clean
accuracy there. The scans are the cached ones of ``mitigation.py`` (run it first, or this
scans).

Results go to ``benchmarks/results/pruning_layers.json``.

Usage::

    python benchmarks/pruning_layers.py [--models mnist_badnet,gtsrb_badnet33] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

import mitigation as bench
from neuralcleanse.frontends.api import prepare
from neuralcleanse.mitigation import rank_by_activation_gap, stamp
from neuralcleanse.mitigation.metrics import predicted_labels
from scan_cache import cached_scan, environment, save_results

DEFAULT_OUT = bench.ROOT / "benchmarks" / "results" / "pruning_layers.json"
FRACTIONS = (0.0, 0.02, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)
#: Layers compared per model: the default (the final layer's input) and conv outputs (ReLU),
#: by the names ``Classifier.layer_names()`` gives them.
LAYERS = {"mnist_badnet": (None, "conv2.1", "conv1.1"),
          "gtsrb_badnet33": (None, "14", "9", "4")}
ASR_GOAL = 0.05
ACC_DROP = 0.03


def sweep(case: bench.Case, cache: Path) -> dict[str, Any]:
    scan, _ = cached_scan(case.scan_cache or cache, case.scan_name or case.name, case.model,
                          case.x_scan, case.y_scan, wrap=case.wrap, options=case.scan_options)
    clf = prepare(case.model, case.x_test[:64], **case.wrap)[0]
    trigger = scan.label(case.target)
    t, cf = case.target, clf.channels_first

    def stamped(x: np.ndarray, kind: str) -> np.ndarray:
        return case.real_trigger(x) if kind == "real" else stamp(x, trigger.mask,
                                                                  trigger.pattern, cf)

    fit_others = case.x_fit[case.y_fit != t]
    test_others = case.x_test[case.y_test != t]
    test_real, test_reversed = stamped(test_others, "real"), stamped(test_others, "reversed")
    own = case.y_test == t

    def measure() -> dict[str, float]:
        pred = predicted_labels(clf.predict(case.x_test))
        return {"clean_acc": float(np.mean(pred == case.y_test)),
                "target_class_acc": float(np.mean(pred[own] == t)),
                "real_asr": float(np.mean(predicted_labels(clf.predict(test_real)) == t)),
                "reversed_asr": float(np.mean(predicted_labels(clf.predict(test_reversed))
                                              == t))}

    out: dict[str, Any] = {"target": t, "flagged_labels": list(scan.flagged_labels),
                           "layers": {}}
    for layer in LAYERS[case.name]:
        name = "final_layer_input" if layer is None else str(layer)
        entry: dict[str, Any] = {}
        for kind in ("reversed", "real"):
            clf.set_pruned_neurons(layer, np.zeros(0, dtype=np.int64))
            order = rank_by_activation_gap(clf, case.x_fit, stamped(fit_others, kind), layer)
            n = len(order)
            curve = []
            for fraction in FRACTIONS:
                k = int(round(fraction * n))
                clf.set_pruned_neurons(layer, order[:k])
                curve.append({"fraction": fraction, "n_pruned": k, **measure()})
            clf.set_pruned_neurons(layer, np.zeros(0, dtype=np.int64))
            base = curve[0]["clean_acc"]
            first = next((p for p in curve if p["real_asr"] < ASR_GOAL), None)
            entry[kind] = {
                "n_neurons": n, "curve": curve,
                "first_below_goal": first,
                "meets_target": bool(first is not None
                                     and first["clean_acc"] >= base - ACC_DROP),
            }
            summary = (f"first below {ASR_GOAL:.0%} at {first['fraction']:.0%} pruned: clean "
                       f"{first['clean_acc']:.1%} (from {base:.1%}), class {t} "
                       f"{first['target_class_acc']:.1%}" if first else
                       f"never below {ASR_GOAL:.0%} (at {FRACTIONS[-1]:.0%} pruned: "
                       f"{curve[-1]['real_asr']:.1%}, clean {curve[-1]['clean_acc']:.1%})")
            print(f"  {name:18s} {n:4d} neurons, ranked by the {kind:8s} trigger: real ASR "
                  f"{summary}", flush=True)
        out["layers"][name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(bench.MODELS),
                        help=f"comma-separated subset of {', '.join(bench.MODELS)}")
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=bench.DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in bench.MODELS]
    if bad or not models:
        parser.error(f"unknown model: {bad}; models are {bench.MODELS}")
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (the shared data is needed)")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in models:
        case = (bench.mnist_case(args.data) if name == "mnist_badnet"
                else bench.gtsrb_case(args.data, args.cache))
        print(f"{name} (target {case.target}):", flush=True)
        results[name] = {**sweep(case, args.cache), "environment": environment(),
                         "fractions": list(FRACTIONS), "asr_goal": ASR_GOAL,
                         "max_accuracy_drop": ACC_DROP}
        save_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
