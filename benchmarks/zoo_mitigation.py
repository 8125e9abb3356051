"""Mitigation over the model zoo: the three methods on every backdoored model the scan caught.

For every backdoored zoo model (``benchmarks/zoo.py``) whose real trigger took (``effective`` in
the detection results) and whose true target is flagged by the confirmed rule in
``benchmarks/results/zoo_detection.json`` (one preset, ``fast`` by default), this rebuilds the
:class:`~neuralcleanse.ScanResult` that ``scan`` with the default (confirmed) verdict returns from
the cached searches of ``zoo_detection.py`` (the first run plus the further seeds of the
borderline labels, combined by the library's own ``apply_confirmation``) and runs
:func:`neuralcleanse.mitigate` with each method at the library's default settings on the flagged
labels, fitted on the clean images the scan used (``clean-<dataset>.npz``) and measured on the
zoo's held-out test split (rebuilt with ``zoo.load_split``, passed as ``x_test``/``y_test``).

Per model and method, on the test split:

* real-trigger success before and after: test images stamped with the REAL trigger (the zoo's
  ``<name>-trigger.npz``): images of other classes sent to the target; for source-specific
  models only the source class's images; for two-trigger models each trigger toward its own
  target; for all-to-all every image toward ``y + 1``. A refused input is no success. The score
  of a model is its worst flagged trigger (the triggers of unflagged targets are reported apart);
* clean accuracy before and after (a refused clean input counts as an error), and the accuracy
  on the images of the flagged true target(s) (the worst one);
* filtering: the share of clean test images refused (FPR) and of real-triggered ones refused;
* the reversed trigger's own success and refusal (the library's measurements), so that a real
  trigger that survives can be told apart from a reversed trigger that survives.

Diagnostics per model: overlap (IoU) of the reversed mask's top pixels (as many as the real
mask has) with the real mask and the share of the reversed mask's L1 mass on the real patch;
the unlearning budget (optimiser updates); the overlap of the trigger neurons the filter picked
from the reversed trigger with the neurons the real trigger excites most.

Summaries per trigger family and overall: medians and the share of models meeting the targets
of issue 14 (unlearning: real-trigger success < 5 % with clean accuracy within 3 points;
filtering: >= 95 % of real-triggered inputs refused at the 5 % FPR operating point).

    python benchmarks/zoo_mitigation.py [--zoo DIR] [--detection FILE] [--runs DIR]
        [--preset fast] [--verdict detection|library] [--methods unlearning,filtering,pruning]
        [--only TEXT] [--probes] [--threads 2] [--half tune|validate|all]
        [--set METHOD.OPTION=VALUE ...] [--out FILE]

``--verdict library`` flags labels with the library's current default verdict settings instead
of the detection JSON's rule (same searches). ``--probes`` adds, where a method misses its
target, unlearning and filtering with the real trigger (an oracle) and unlearning with five
times the epochs. One model at a time, on the CPU: the 39 flagged models of the fast preset
take about 2.5 minutes with the probes on two idle cores. Prints two Markdown tables (results,
diagnostics) and writes ``benchmarks/results/zoo_mitigation.json`` (or ``--out``).

Choosing defaults without overfitting: ``--half tune`` keeps the models whose zoo index (the
name's leading number) is even, ``--half validate`` the odd ones; settings are swept on the tune
half (``--set unlearning.learning_rate=1e-3 --set filtering.top_fraction=0.1``: options passed to
:func:`neuralcleanse.mitigate` for that method, recorded in the JSON as ``overrides``) and the
chosen ones reported on both. With ``--half all`` (the default) the summaries also have a row per
half.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import neuralcleanse as nc  # noqa: E402
import zoo  # noqa: E402
from neuralcleanse.core.config import ScanConfig  # noqa: E402
from neuralcleanse.core.results import LabelResult, ScanResult  # noqa: E402
from neuralcleanse.frontends.api import prepare  # noqa: E402
from neuralcleanse.mitigation import filtering, pruning, unlearning  # noqa: E402
from neuralcleanse.mitigation.metrics import DEFAULT_TEST_FRACTION, predicted_labels  # noqa: E402
from neuralcleanse.mitigation.stamping import stamped_others  # noqa: E402
from neuralcleanse.search.confirm import apply_confirmation, plan_confirmation  # noqa: E402
from zoo_detection import PATCH_FAMILIES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZOO = ROOT / "benchmarks" / "cache" / "zoo"
DEFAULT_RUNS = ROOT / "benchmarks" / "cache" / "zoo-scans"
DEFAULT_DETECTION = ROOT / "benchmarks" / "results" / "zoo_detection.json"
RESULTS = ROOT / "benchmarks" / "results" / "zoo_mitigation.json"
METHODS = ("unlearning", "filtering", "pruning")
#: The targets of issue 14 (item 5).
UNLEARN_MAX_ASR = 0.05
UNLEARN_MAX_ACC_DROP = 0.03
UNLEARN_MIN_SHARE = 0.90
FILTER_MIN_REFUSED = 0.95
FILTER_FPR = 0.05
#: Sampling slack on the held-out FPR (the threshold is calibrated on the fitting images at
#: ``target_fpr`` = 5 %; on 360 test images one standard error of a 5 % rate is 1.1 points).
FILTER_FPR_SLACK = 0.01
FILTER_MIN_SHARE = 0.80
#: The library's defaults, recorded with the results.
DEFAULTS = {
    "unlearning": {"epochs": unlearning.DEFAULT_EPOCHS,
                   "min_updates": unlearning.DEFAULT_MIN_UPDATES,
                   "learning_rate": unlearning.DEFAULT_LEARNING_RATE,
                   "stamped_fraction": unlearning.DEFAULT_STAMPED_FRACTION,
                   "batch_size": unlearning.DEFAULT_BATCH_SIZE,
                   "rounds": unlearning.DEFAULT_ROUNDS},
    "filtering": {"score": filtering.DEFAULT_SCORE, "top_fraction": None,
                  "ranking": filtering.DEFAULT_RANKING, "max_neurons": None,
                  "target_fpr": filtering.DEFAULT_TARGET_FPR, "layer": "final_layer_input"},
    "pruning": {"max_fraction": pruning.DEFAULT_MAX_FRACTION,
                "target_asr": pruning.DEFAULT_TARGET_ASR,
                "step_fraction": pruning.DEFAULT_STEP_FRACTION, "layer": "final_layer_input"},
    # fitted on all the scan's clean images; measured on the zoo's test split (x_test=), so
    # the library's held-out split (test_fraction) is not used
    "fit_on": "the scan's clean images (clean-<dataset>.npz)",
    "measured_on": "the zoo's test split (zoo.load_split)",
    "unused_test_fraction": DEFAULT_TEST_FRACTION,
}
#: Options given with --set, per method (passed to nc.mitigate on top of the defaults).
OVERRIDES: dict[str, dict[str, Any]] = {}


def parse_set(text: str) -> tuple[str, str, Any]:
    """``METHOD.OPTION=VALUE`` -> (method, option, value); the value as JSON when it parses."""
    key, sep, raw = text.partition("=")
    method, dot, option = key.strip().partition(".")
    if not sep or not dot or method not in METHODS or not option:
        raise SystemExit(f"--set {text!r}: expected METHOD.OPTION=VALUE with METHOD one of "
                         f"{', '.join(METHODS)}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return method, option, value


def half_of(name: str) -> str:
    """``tune`` for an even zoo index (the name's first number: ``012-...``, ``p2-012-...``),
    ``validate`` for an odd one."""
    index = next(part for part in name.split("-") if part.isdigit())
    return "tune" if int(index) % 2 == 0 else "validate"


# -- the scan a user would have --------------------------------------------------------------
def verdict_settings(rule: dict[str, Any] | None) -> dict[str, Any]:
    """The ScanConfig verdict fields of a zoo_detection rule (``None``: the library's defaults)."""
    if rule is None:
        default = ScanConfig()
        return {"confirm_seeds": default.confirm_seeds, "confirm_margin": default.confirm_margin,
                "max_norm_ratio": default.max_norm_ratio,
                "small_norm_ratio": default.small_norm_ratio,
                "anomaly_threshold": default.anomaly_threshold}
    if rule.get("rule") != "confirmed" or rule.get("scale", "linear") != "linear":
        raise SystemExit(f"the detection JSON's rule {rule} is not the library's confirmed rule")
    return {"confirm_seeds": int(rule.get("seeds", 2)),
            "confirm_margin": float(rule.get("margin", 1.0)),
            "max_norm_ratio": float(rule.get("ratio") or 1.0),
            "small_norm_ratio": float(rule.get("small_ratio", 0.0)),
            "anomaly_threshold": float(rule.get("threshold", 2.0))}


def confirmed_result(runs: Path, name: str, seed: int, rule: dict[str, Any] | None
                     ) -> ScanResult:
    """The ScanResult of ``scan`` with the confirmed verdict, from zoo_detection's searches.

    The first run (``seed-<seed>``) holds every label; the further runs (``seed-<seed + k>``)
    the labels zoo_detection re-searched (a superset of the ones this rule plans). Each label's
    search depends only on the model, data, settings, label and seed, so this equals a fresh
    scan's result.
    """
    first = ScanResult.from_dict(json.loads((runs / f"seed-{seed}" / "models" / name
                                             / "report.json").read_text()))
    cfg = ScanConfig.from_dict(first.config).replace(verdict="confirmed", **verdict_settings(rule))
    planned = plan_confirmation(first, cfg)
    extra: dict[int, list[LabelResult]] = {t: [] for t in planned}
    for k in range(1, cfg.confirm_seeds + 1):
        path = runs / f"seed-{seed + k}" / "models" / name / "report.json"
        further = {r.label: r for r in ScanResult.from_dict(json.loads(path.read_text())).labels}
        for t in planned:
            extra[t].append(further[t])
    return apply_confirmation(first, extra, cfg, 0.0)


def matches_library(runs: Path, name: str, result: ScanResult) -> bool | None:
    """Whether zoo_detection's ``--verify`` scan (the library's own) has the same flags and norms.

    ``None`` when that model was not verified.
    """
    path = runs / "verify" / "models" / name / "report.json"
    if not path.is_file():
        return None
    lib = json.loads(path.read_text())
    norms = {r["label"]: r["norm"] for r in lib["labels"]}
    return (sorted(lib["flagged_labels"]) == sorted(result.flagged_labels)
            and all(math.isclose(norms[r.label], r.norm, rel_tol=1e-6) for r in result.labels))


# -- real triggers -----------------------------------------------------------------------------
def load_triggers(path: Path) -> list[zoo.Trigger]:
    """The real trigger(s) of a zoo model (channels-first pattern)."""
    with np.load(path) as data:
        return [zoo.Trigger(m.astype(np.float32), p.astype(np.float32), int(t))
                for m, p, t in zip(data["masks"], data["patterns"], data["targets"])]


def real_sets(entry: dict[str, Any], split: zoo.Split, triggers: list[zoo.Trigger],
              flagged: set[int]) -> list[dict[str, Any]]:
    """Per real trigger: its stamped test images (channels first) and the labels it wants."""
    x, y = split.x_test, split.y_test
    n = entry["nb_classes"]
    out = []
    for trig in triggers:
        if entry["family"] == "all-to-all":
            keep = np.ones(len(y), bool)
            want = (y + 1) % n
            is_flagged = bool(flagged)
        elif entry["family"] == "source-specific":
            keep = y == entry["source"]
            want = np.full(int(keep.sum()), trig.target)
            is_flagged = trig.target in flagged
        else:
            keep = y != trig.target
            want = np.full(int(keep.sum()), trig.target)
            is_flagged = trig.target in flagged
        out.append({"target": trig.target, "x": trig.stamp(x[keep]), "want": want,
                    "flagged": is_flagged})
    return out


# -- measuring ---------------------------------------------------------------------------------
class Model:
    """One zoo model, its data in the model's layout and its real-trigger test sets."""

    def __init__(self, entry: dict[str, Any], zoo_dir: Path, split: zoo.Split,
                 result: ScanResult, flagged: list[int]) -> None:
        self.entry = entry
        loaded = nc.load_model(zoo_dir / entry["file"], arch=entry["arch_spec"],
                               arch_kwargs=entry["arch_kwargs"])
        self.model = loaded.model
        self.channels_first = loaded.channels_first_default
        with np.load(zoo_dir / entry["data"]) as d:
            x_clean, self.y_clean = d["x"].astype(np.float32), d["y"].astype(np.int64)
        self.same_clean = bool(np.array_equal(x_clean, split.x_clean))
        self.x_clean_nchw = x_clean
        self.x_clean = self.layout(x_clean)
        self.x_test, self.y_test = self.layout(split.x_test), split.y_test
        self.result = result
        self.flagged = set(flagged)
        triggers = load_triggers(zoo_dir / entry["trigger_file"])
        self.triggers = triggers
        self.real = real_sets(entry, split, triggers, self.flagged)
        for r in self.real:
            r["x"] = self.layout(r["x"])
        self.clf = prepare(self.model, self.x_clean[:64], output="logits",
                           clip_values=(0.0, 1.0))[0]
        self.true_flagged = sorted(self.flagged & set(entry["targets"]))

    def layout(self, x: np.ndarray) -> np.ndarray:
        """Channels-first images in the model's layout."""
        return x if self.channels_first else np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def snapshot(self, predict: Any, refuse: Any = None) -> dict[str, Any]:
        """Clean accuracy, real-trigger success and refusals, target-class accuracy."""
        pred = predicted_labels(predict(self.x_test))
        correct = pred == self.y_test
        out: dict[str, Any] = {"clean_acc": float(correct.mean())}
        out["target_acc"] = {str(t): float(correct[self.y_test == t].mean())
                             for t in self.true_flagged}
        out["real_asr"] = [float(np.mean(predicted_labels(predict(r["x"])) == r["want"]))
                           for r in self.real]
        if refuse is not None:
            out["fpr"] = float(refuse(self.x_test).mean())
            out["real_refused"] = [float(refuse(r["x"]).mean()) for r in self.real]
        return out


def worst(values: list[float], real: list[dict[str, Any]], flagged: bool = True,
          high: bool = True) -> float | None:
    """The worst value over the (flagged) real triggers: highest success, lowest refusal."""
    picked = [v for v, r in zip(values, real) if r["flagged"] == flagged]
    if not picked:
        return None
    return float(max(picked) if high else min(picked))


def mitigate_one(m: Model, method: str, before: dict[str, Any]) -> dict[str, Any]:
    """One mitigation with default settings, measured."""
    started = time.perf_counter()
    res = nc.mitigate(m.model, m.x_clean, m.y_clean, m.result, method, x_test=m.x_test,
                      y_test=m.y_test, labels=sorted(m.flagged), output="logits",
                      clip_values=(0.0, 1.0), seed=0, **OVERRIDES.get(method, {}))
    wall = time.perf_counter() - started
    filt = res.input_filter
    after = m.snapshot(res.predict, filt.is_flagged if filt is not None else None)
    meas = res.measurements
    entry: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "labels": res.labels,
        "real_asr_before": before["real_asr"], "real_asr_after": after["real_asr"],
        "real_asr_after_worst": worst(after["real_asr"], m.real),
        "real_asr_after_unflagged": worst(after["real_asr"], m.real, flagged=False),
        "clean_acc_before": before["clean_acc"], "clean_acc_after": after["clean_acc"],
        "clean_acc_drop": before["clean_acc"] - after["clean_acc"],
        "target_acc_before": before["target_acc"], "target_acc_after": after["target_acc"],
        "target_acc_before_worst": min(before["target_acc"].values(), default=None),
        "target_acc_after_worst": min(after["target_acc"].values(), default=None),
        "reversed_asr_before": {str(k): v for k, v in meas.reversed_asr_before.items()},
        "reversed_asr_after": {str(k): v for k, v in meas.reversed_asr_after.items()},
    }
    # cross-check: the library measures clean accuracy on the same test split
    entry["library_clean_acc_after"] = meas.clean_acc_after
    report = res.report
    if method == "filtering":
        entry.update(fpr=after["fpr"], real_refused=after["real_refused"],
                     real_refused_worst=worst(after["real_refused"], m.real, high=False),
                     reversed_refused=report.detection_rate,
                     fpr_target_class=(float(filt.is_flagged(m.x_test[np.isin(
                         m.y_test, m.true_flagged)]).mean()) if m.true_flagged else None),
                     n_neurons=report.n_neurons,
                     neurons={str(k): v for k, v in report.neurons.items()})
        entry["meets_target"] = bool(
            entry["real_refused_worst"] is not None
            and entry["real_refused_worst"] >= FILTER_MIN_REFUSED
            and entry["fpr"] <= FILTER_FPR + FILTER_FPR_SLACK)
    else:
        entry["meets_target"] = bool(
            entry["real_asr_after_worst"] is not None
            and entry["real_asr_after_worst"] < UNLEARN_MAX_ASR
            and entry["clean_acc_drop"] <= UNLEARN_MAX_ACC_DROP)
    if method == "unlearning":
        entry.update(n_fit=report.n_train, n_stamped=report.n_stamped, epochs=report.epochs,
                     updates=report.updates)
        rev_after = max(meas.reversed_asr_after.values())
        if not entry["meets_target"]:
            entry["why"] = ("reversed trigger unlearned, real trigger not"
                            if rev_after < UNLEARN_MAX_ASR and entry["real_asr_after_worst"]
                            and entry["real_asr_after_worst"] >= UNLEARN_MAX_ASR
                            else "reversed trigger still works" if rev_after >= UNLEARN_MAX_ASR
                            else "clean accuracy lost")
    if method == "pruning":
        entry.update(fraction_pruned=report.fraction, reached_target=report.reached_target,
                     n_neurons=report.n_neurons)
    return entry


# -- diagnostics -------------------------------------------------------------------------------
def real_as_label_results(m: Model) -> list[LabelResult]:
    """The real triggers as reversed ones would be given (the oracle of the probes)."""
    out = []
    for trig in m.triggers:
        pattern = trig.pattern if m.channels_first else trig.pattern.transpose(1, 2, 0)
        out.append(LabelResult(label=trig.target, mask=trig.mask, pattern=pattern,
                               norm=float(trig.mask.sum()), attack_success_rate=1.0,
                               converged=True, steps=0, seconds=0.0, final_cost=0.0))
    return out


def probes(m: Model, missed: set[str]) -> dict[str, Any]:
    """What separates "the reversed trigger does not transfer" from "the budget is too small".

    Run on the models where a method missed its target (``missed``):

    * ``unlearning_real``: unlearning at the default budget with the REAL trigger(s) stamped
      instead of the reversed ones (an oracle: the best a reversed trigger could do);
    * ``unlearning_5x``: the reversed triggers with five times the epochs and ``min_updates``
      (same learning rate);
    * ``filtering_real``: the filter fitted on the real trigger(s) at the defaults.

    Each reports the real-trigger success (worst of all real triggers), the clean-accuracy drop
    and, for the filter, the real-triggered share refused and the FPR.
    """
    out: dict[str, Any] = {}
    base = m.snapshot(m.clf.predict)
    oracle = real_as_label_results(m)
    by_label = {r.label: r for r in m.result.labels}
    reversed_triggers = [by_label[t] for t in sorted(m.flagged)]
    runs = {"unlearning_real": ("unlearning", oracle, {}),
            "unlearning_5x": ("unlearning", reversed_triggers, {
                "epochs": 5 * unlearn_setting("epochs"),
                "min_updates": 5 * unlearn_setting("min_updates")}),
            "filtering_real": ("filtering", oracle, {})}
    for key, (method, triggers, options) in runs.items():
        if method not in missed:
            continue
        res = nc.mitigate(m.model, m.x_clean, m.y_clean, triggers, method, x_test=m.x_test,
                          y_test=m.y_test, output="logits", clip_values=(0.0, 1.0), seed=0,
                          **{**OVERRIDES.get(method, {}), **options})
        filt = res.input_filter
        after = m.snapshot(res.predict, filt.is_flagged if filt is not None else None)
        every = [{**r, "flagged": True} for r in m.real]
        entry = {"real_asr_after_worst": worst(after["real_asr"], every),
                 "clean_acc_drop": base["clean_acc"] - after["clean_acc"]}
        if filt is not None:
            entry.update(real_refused_worst=worst(after["real_refused"], every, high=False),
                         fpr=after["fpr"])
        out[key] = entry
    return out


def unlearn_setting(name: str) -> Any:
    """An unlearning setting of this run: the --set value, else the library's default."""
    return OVERRIDES.get("unlearning", {}).get(name, DEFAULTS["unlearning"][name])


def pairs(m: Model) -> list[tuple[int, zoo.Trigger]]:
    """(flagged label, real trigger) pairs to compare: each flagged true target with its own
    trigger; for all-to-all, every flagged label with the one trigger."""
    if m.entry["family"] == "all-to-all":
        return [(t, m.triggers[0]) for t in sorted(m.flagged)]
    return [(t.target, t) for t in m.triggers if t.target in m.flagged]


def mask_overlap(m: Model) -> dict[str, Any]:
    """Per flagged true target: IoU of the reversed mask's top pixels with the real mask.

    The reversed mask's ``k`` largest pixels are taken, ``k`` the real patch's pixel count;
    ``mass_on_real`` is the share of the reversed mask's L1 norm that lies on the real patch.
    Not defined for the blended trigger (its mask covers the whole image).
    """
    by_label = {r.label: r for r in m.result.labels}
    out = {}
    for label, trig in pairs(m):
        rev = np.asarray(by_label[label].mask, np.float64)
        real = trig.mask > 0
        entry: dict[str, Any] = {"reversed_l1": float(rev.sum()),
                                 "real_l1": float(trig.mask.sum())}
        if m.entry["family"] != "blended":
            k = int(real.sum())
            top = np.zeros(rev.size, bool)
            top[np.argsort(-rev.ravel(), kind="stable")[:k]] = True
            top = top.reshape(rev.shape)
            entry["iou_top_k"] = float((top & real).sum() / (top | real).sum())
            entry["mass_on_real"] = float(rev[real].sum() / max(rev.sum(), 1e-12))
        out[str(label)] = entry
    return out


def filter_setting(name: str) -> Any:
    """A filtering setting of this run: the --set value, else the library's default."""
    return OVERRIDES.get("filtering", {}).get(name, DEFAULTS["filtering"][name])


def neuron_overlap(m: Model, keep_fraction: float, ranking: str) -> dict[str, Any]:
    """The filter layer's trigger neurons of the reversed vs the real trigger.

    Both gaps (mean activation on stamped minus on clean images) are measured on the clean
    images the mitigation is fitted on (the real trigger on the images it is meant for);
    ``top_overlap`` is the share of the reversed trigger's top ``keep`` neurons (the filter's
    choice) among the real trigger's top ``keep``, ``top_in_real_top10pct`` among its top tenth.
    """
    clf = m.clf
    clean = clf.neuron_activations(m.x_clean)
    by_label = {r.label: r for r in m.result.labels}
    n = clean.shape[1]
    keep = max(1, int(math.ceil(keep_fraction * n - 1e-9)))
    out: dict[str, Any] = {"n_neurons": n, "keep": keep}
    for label, trig in pairs(m):
        rev_x, _ = stamped_others(m.x_clean, m.y_clean, by_label[label], m.channels_first)
        rev_acts = clf.neuron_activations(rev_x)
        rev_gap = rev_acts.mean(0) - clean.mean(0)
        if m.entry["family"] == "source-specific":
            real_on = m.y_clean == m.entry["source"]
        elif m.entry["family"] == "all-to-all":
            real_on = np.ones(len(m.y_clean), bool)
        else:
            real_on = m.y_clean != trig.target
        real_x = m.layout(trig.stamp(m.x_clean_nchw[real_on]))
        real_gap = clf.neuron_activations(real_x).mean(0) - clean.mean(0)
        top_rev = set(filtering.rank_trigger_neurons(
            rev_acts, clean, m.y_clean, label, ranking)[:keep].tolist())
        top_real = set(np.argsort(-real_gap, kind="stable")[:keep].tolist())
        top10_real = set(np.argsort(-real_gap, kind="stable")[:max(keep, n // 10)].tolist())
        out[str(label)] = {
            "top_overlap": len(top_rev & top_real) / keep,
            "top_in_real_top10pct": len(top_rev & top10_real) / keep,
            "gap_correlation": float(np.corrcoef(rev_gap, real_gap)[0, 1]),
        }
    return out


# -- summaries ---------------------------------------------------------------------------------
def median(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def summarise(models: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Medians and target shares of a group of models, per method."""
    out: dict[str, Any] = {"models": len(models)}
    for method in methods:
        having = [m for m in models if method in m["methods"]]
        rows = [m["methods"][method] for m in having]
        if not rows:
            continue
        s: dict[str, Any] = {
            "n": len(rows),
            "real_asr_before": median([worst(r["real_asr_before"], m["real"])
                                       for r, m in zip(rows, having)]),
            "real_asr_after": median([r["real_asr_after_worst"] for r in rows]),
            "clean_acc_drop": median([r["clean_acc_drop"] for r in rows]),
            "target_acc_before": median([r["target_acc_before_worst"] for r in rows]),
            "target_acc_after": median([r["target_acc_after_worst"] for r in rows]),
            "meets_target": float(np.mean([r["meets_target"] for r in rows])),
            "real_asr_below_5pct": float(np.mean([(r["real_asr_after_worst"] or 0) < 0.05
                                                  for r in rows])),
            "wall_s": median([r["wall_s"] for r in rows]),
        }
        if method == "filtering":
            s.update(fpr=median([r["fpr"] for r in rows]),
                     real_refused=median([r["real_refused_worst"] for r in rows]),
                     reversed_refused=median([r["reversed_refused"] for r in rows]))
        if method == "unlearning":
            s["updates"] = median([r["updates"] for r in rows])
            whys = [r["why"] for r in rows if "why" in r]
            s["why_missed"] = {w: whys.count(w) for w in sorted(set(whys))}
        out[method] = s
    ious = [v.get("iou_top_k") for m in models for v in m["masks"].values()]
    out["mask_iou_top_k"] = median(ious)
    out["mask_mass_on_real"] = median([v.get("mass_on_real") for m in models
                                       for v in m["masks"].values()])
    out["filter_neuron_in_real_top10pct"] = median([
        v["top_in_real_top10pct"] for m in models for k, v in m["neurons"].items()
        if isinstance(v, dict)])
    with_probes = [m["probes"] for m in models if "probes" in m]
    if with_probes:
        out["probes"] = {}
        for key in ("unlearning_real", "unlearning_5x", "filtering_real"):
            vals = [p[key] for p in with_probes if key in p]
            if not vals:
                continue
            entry = {"n": len(vals),
                     "real_asr_after": median([v["real_asr_after_worst"] for v in vals]),
                     "clean_acc_drop": median([v["clean_acc_drop"] for v in vals])}
            if key.startswith("filtering"):
                entry.update(real_refused=median([v["real_refused_worst"] for v in vals]),
                             fpr=median([v["fpr"] for v in vals]),
                             meets_target=float(np.mean([
                                 v["real_refused_worst"] >= FILTER_MIN_REFUSED
                                 and v["fpr"] <= FILTER_FPR + FILTER_FPR_SLACK for v in vals])))
            else:
                entry["meets_target"] = float(np.mean([
                    v["real_asr_after_worst"] < UNLEARN_MAX_ASR
                    and v["clean_acc_drop"] <= UNLEARN_MAX_ACC_DROP for v in vals]))
            out["probes"][key] = entry
    return out


def pct(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def table(summary: dict[str, Any], methods: list[str]) -> str:
    """The Markdown table: one row per group and method."""
    lines = ["| group | method | models | real-trigger success before → after | clean acc. "
             "drop | target-class acc. before → after | filter FPR | real trigger refused "
             "| meets target |", "|---|---|---|---|---|---|---|---|---|"]
    for group, s in summary.items():
        for method in methods:
            if method not in s:
                continue
            r = s[method]
            lines.append(
                f"| {group} | {method} | {r['n']} | {pct(r['real_asr_before'])} → "
                f"{pct(r['real_asr_after'], 1)} | {pct(r['clean_acc_drop'], 1)} | "
                f"{pct(r['target_acc_before'])} → {pct(r['target_acc_after'])} | "
                f"{pct(r.get('fpr'), 1)} | {pct(r.get('real_refused'), 1)} | "
                f"{pct(r['meets_target'])} |")
    return "\n".join(lines)


def diagnostics_table(summary: dict[str, Any]) -> str:
    """The Markdown table of the diagnostics: mask overlap, unlearning budget, probes."""
    lines = ["| group | mask IoU (top-k px) | mask L1 on real patch | unlearning updates | "
             "unlearning misses: budget / transfer / accuracy | on the misses: unlearn with "
             "the real trigger (oracle) | unlearn 5x epochs | filter fitted on the real trigger "
             "(oracle) |",
             "|---|---|---|---|---|---|---|---|"]

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    for group, s in summary.items():
        unl = s.get("unlearning", {})
        why = unl.get("why_missed", {})
        misses = " / ".join(str(why.get(w, 0)) for w in (
            "reversed trigger still works", "reversed trigger unlearned, real trigger not",
            "clean accuracy lost"))
        updates = f"{unl['updates']:.0f}" if unl.get("updates") is not None else "–"
        pr = s.get("probes", {})
        cells = []
        for key in ("unlearning_real", "unlearning_5x", "filtering_real"):
            v = pr.get(key)
            if v is None:
                cells.append("–")
                continue
            text = (f"refused {pct(v['real_refused'], 1)}" if "real_refused" in v
                    else f"{pct(v['real_asr_after'], 1)}")
            cells.append(f"{text}; meets target on {pct(v['meets_target'])} of {v['n']}")
        lines.append(f"| {group} | {num(s.get('mask_iou_top_k'))} | "
                     f"{pct(s.get('mask_mass_on_real'))} | {updates} | "
                     f"{misses if unl else '–'} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Mitigate every flagged backdoored zoo model; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO)
    parser.add_argument("--detection", type=Path, default=DEFAULT_DETECTION)
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--seed", type=int, default=0, help="the detection run's first seed")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--only", default=None, help="only models whose name contains this")
    parser.add_argument("--verdict", choices=("detection", "library"), default="detection",
                        help="which labels are flagged: the detection JSON's confirmed rule, "
                             "or the library's current default verdict settings applied to "
                             "the same searches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probes", action="store_true",
                        help="where a method misses its target, also unlearn and filter with "
                             "the real trigger (an oracle) and unlearn with 5x the epochs, to "
                             "tell transfer from budget")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--half", choices=("tune", "validate", "all"), default="all",
                        help="tune: models with an even zoo index; validate: odd; all: both "
                             "(summarised apart too)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                        help="an option passed to nc.mitigate for that method (repeatable)")
    args = parser.parse_args(argv)
    OVERRIDES.clear()
    for text in args.set:
        method, option, value = parse_set(text)
        OVERRIDES.setdefault(method, {})[option] = value
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(args.threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    detection = json.loads(args.detection.read_text())
    index = {e["name"]: e for e in json.loads((args.zoo / "index.json").read_text())}
    rule = detection["rules"]["confirmed"] if args.verdict == "detection" else None
    runs = args.runs / args.preset
    chosen, skipped = [], []
    for d in detection["models"][args.preset]:
        if d["family"] == "clean" or (args.only and args.only not in d["name"]):
            continue
        if args.half != "all" and half_of(d["name"]) != args.half:
            continue
        if not d["effective"]:
            skipped.append({"name": d["name"], "why": "real trigger did not take"})
            continue
        result = confirmed_result(runs, d["name"], args.seed, rule)
        flagged = sorted(d["rules"]["confirmed"]["flagged"] if rule is not None
                         else result.flagged_labels)
        if not set(flagged) & set(d["targets"]):
            skipped.append({"name": d["name"], "why": "true target not flagged",
                            "flagged": flagged})
        else:
            chosen.append((d, result, flagged))
    print(f"{len(chosen)} flagged backdoored models ({len(skipped)} skipped); methods "
          f"{', '.join(methods)}", flush=True)
    splits: dict[str, zoo.Split] = {}
    results = []
    for i, (d, result, flagged) in enumerate(chosen):
        t0 = time.perf_counter()
        entry = index[d["name"]]
        if entry["dataset"] not in splits:
            splits[entry["dataset"]] = zoo.load_split(entry["dataset"])
        m = Model(entry, args.zoo, splits[entry["dataset"]], result, flagged)
        same = sorted(result.flagged_labels) == flagged
        before = m.snapshot(m.clf.predict)
        row: dict[str, Any] = {
            "name": d["name"], "family": entry["family"], "dataset": entry["dataset"],
            "arch": entry["arch"], "framework": entry["framework"],
            "targets": entry["targets"], "flagged": sorted(m.flagged),
            "rebuilt_scan_agrees": same,
            "matches_library_scan": matches_library(runs, d["name"], result),
            "clean_data_is_scan_split": m.same_clean,
            "n_clean": len(m.y_clean), "n_test": len(m.y_test),
            "poison_rate": entry["poison_rate"], "size": entry["size"],
            "zoo_trigger_success": entry["trigger_success"],
            "real": [{"target": r["target"], "flagged": r["flagged"], "n": len(r["want"])}
                     for r in m.real],
            "masks": mask_overlap(m),
            "half": half_of(d["name"]),
            # the top tenth (the mean score's default) even where the filter weighs them all
            "neurons": neuron_overlap(m, filter_setting("top_fraction")
                                      or filtering.DEFAULT_TOP_FRACTION,
                                      filter_setting("ranking")),
            "methods": {},
        }
        for r, asr in zip(row["real"], before["real_asr"]):
            r["success_before"] = asr
        for method in methods:
            row["methods"][method] = mitigate_one(m, method, before)
        missed = {k for k, v in row["methods"].items() if not v["meets_target"]}
        if args.probes and missed & {"unlearning", "filtering"}:
            row["probes"] = probes(m, missed)
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        results.append(row)
        parts = []
        for method, r in row["methods"].items():
            text = f"{method} {pct(r['real_asr_after_worst'], 1)}"
            if method == "filtering":
                text += f" (refused {pct(r['real_refused_worst'], 1)}, FPR {pct(r['fpr'], 1)})"
            parts.append(text)
        iou = [v.get("iou_top_k") for v in row["masks"].values()]
        start = pct(worst(before["real_asr"], m.real), 1)
        print(f"[{i + 1}/{len(chosen)}] {d['name']:40s} real {start} -> {'; '.join(parts)}; "
              f"IoU {iou}; {row['wall_s']:.1f} s"
              + ("" if same else f"  ! the rebuilt scan flags {result.flagged_labels}"), flush=True)
    groups: dict[str, list[dict[str, Any]]] = {"all": results}
    groups["patch triggers"] = [r for r in results if r["family"] in PATCH_FAMILIES]
    for fam in sorted({r["family"] for r in results}):
        groups[fam] = [r for r in results if r["family"] == fam]
    if args.half == "all":
        for half in ("tune", "validate"):
            groups[f"{half} half"] = [r for r in results if r["half"] == half]
            groups[f"{half} half, patch"] = [r for r in groups[f"{half} half"]
                                             if r["family"] in PATCH_FAMILIES]
    summary = {g: summarise(ms, methods) for g, ms in groups.items() if ms}
    wall = time.perf_counter() - started
    out = {"zoo": str(args.zoo), "detection": str(args.detection), "runs": str(runs),
           "preset": args.preset, "verdict": args.verdict,
           "verdict_settings": verdict_settings(rule), "methods": methods, "defaults": DEFAULTS,
           "overrides": OVERRIDES, "half": args.half,
           "targets": {"unlearning": {"max_real_asr": UNLEARN_MAX_ASR,
                                      "max_clean_acc_drop": UNLEARN_MAX_ACC_DROP,
                                      "min_share": UNLEARN_MIN_SHARE},
                       "filtering": {"min_real_refused": FILTER_MIN_REFUSED,
                                     "fpr": FILTER_FPR, "fpr_slack": FILTER_FPR_SLACK,
                                     "min_share": FILTER_MIN_SHARE}},
           "threads": args.threads, "wall_seconds": round(wall, 1), "skipped": skipped,
           "summary": summary, "models": results}
    print(table(summary, methods))
    print()
    print(diagnostics_table(summary))
    print(f"{len(results)} models in {wall:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
