"""How often the verdict is right: every model of the zoo scanned with ``scan-many``, scored.

Reads the zoo that ``benchmarks/zoo.py`` trained (its ``index.json``) and scans every model with
:func:`neuralcleanse.scan_many` in two passes, for each preset asked for:

1. every label of every model with the run's seed (the paper's single run);
2. the labels a confirmation could re-search (first-run anomaly index above
   ``threshold - WIDE_MARGIN``, and each model's smallest trigger) with the next seeds.

Each label's search depends only on the model, the data, the settings, the label and the seed
(not on which other labels run beside it), so these passes hold exactly the searches that a
``scan`` with the confirmed verdict runs, and every rule below is scored on the same searches:

* ``paper``: the first run alone, flagged when the anomaly index is above 2 (the paper's rule);
* ``confirmed``: the labels near or above the threshold re-searched with ``confirm_seeds`` more
  seeds and judged on their median norm (``neuralcleanse.core.verdict``; the library's default).

Per trigger family and overall: detection rate (a true target flagged), exact rate (flagged ==
targets), false alarms on clean models (anything flagged), "suspicious" verdicts, ROC AUC of the
largest anomaly index (clean against backdoored), extra label-steps of the confirmation, and wall
time per model. Models whose real trigger succeeds on fewer than ``MIN_TRIGGER_SUCCESS`` of the
stamped test images are not counted as backdoored (their backdoor did not take); their number is
reported. Patch models are also grouped by whether the method's premise holds for them: the real
trigger's mask (its L1 norm) is smaller than the smallest natural trigger the search found for a
label that is not a target (:func:`premise`).

    python benchmarks/zoo_detection.py [--zoo DIR] [--presets fast,paper] [--workers 2]
        [--paper-every K] [--only TEXT] [--verify N] [--score-only]

``--verify N`` scans N zoo models with :func:`neuralcleanse.scan` (the library's own
confirmation) and checks that verdicts and flagged labels equal the scored ones.
Prints a Markdown table and writes ``benchmarks/results/zoo_detection.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import neuralcleanse as nc  # noqa: E402
from neuralcleanse.core.outliers import anomaly_indices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZOO = ROOT / "benchmarks" / "cache" / "zoo"
DEFAULT_RUNS = ROOT / "benchmarks" / "cache" / "zoo-scans"
RESULTS = ROOT / "benchmarks" / "results" / "zoo_detection.json"
#: Labels re-searched in pass 2: first-run index above ``threshold - WIDE_MARGIN`` (any rule with
#: a margin up to this one is scored exactly from these searches).
WIDE_MARGIN = 1.5
#: ... and labels whose first-run norm is at most this share of the median (rules with a
#: ``small_ratio`` up to this one are scored exactly).
WIDE_SMALL_RATIO = 0.4
#: Further seeds searched in pass 2 (rules with up to this many are scored exactly).
FURTHER_SEEDS = 2
#: A backdoor counts only when its real trigger reaches this success rate on stamped test images.
MIN_TRIGGER_SUCCESS = 0.8
THRESHOLD = 2.0
#: ``--score-only``: read the reports the passes wrote before, scan nothing.
SCORE_ONLY = False
PATCH_FAMILIES = ("patch-white", "patch-colour", "patch-random", "two-triggers")
#: Patch models grouped by the share of the image one patch covers.
AREA_GROUPS = (("patch area < 4 %", 0.0, 0.04), ("patch area 4-10 %", 0.04, 0.10),
               ("patch area >= 10 %", 0.10, 1.0))


# -- scanning -----------------------------------------------------------------------------------
def manifest_for(entries: list[dict[str, Any]], zoo: Path,
                 labels: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """A scan-many manifest of zoo models (optionally only some labels of each)."""
    models = []
    for e in entries:
        if labels is not None and not labels.get(e["name"]):
            continue
        item: dict[str, Any] = {"name": e["name"], "model": str(zoo / e["file"]),
                                "data": str(zoo / e["data"]), "output": "logits",
                                "clip_values": [0.0, 1.0]}
        if e["framework"] == "torch":
            item["arch"] = e["arch_spec"]
            item["arch_kwargs"] = e["arch_kwargs"]
        else:
            item["data_layout"] = "nchw"
        if labels is not None:
            item["labels"] = labels[e["name"]]
        models.append(item)
    return {"models": models}


def run_pass(entries: list[dict[str, Any]], zoo: Path, out: Path, preset: str, seed: int,
             workers: int, labels: dict[str, list[int]] | None = None,
             rule: str = "paper", always_scan: bool = False) -> dict[str, Any]:
    """Scan with scan-many (resumable: a finished model is not scanned again); read reports.

    The two passes are plain runs (``rule="paper"``); the rules are scored from them.
    """
    manifest = manifest_for(entries, zoo, labels)
    if not manifest["models"]:
        return {}
    if SCORE_ONLY and not always_scan:
        return {item["name"]: json.loads(path.read_text()) for item in manifest["models"]
                if (path := out / "models" / item["name"] / "report.json").is_file()}
    config: dict[str, Any] = {"preset": preset, "seed": seed, "verdict": rule}
    started = time.perf_counter()
    summary = nc.scan_many(manifest, out, config=config, cpus_per_scan=1.0, resume=True,
                           parallel=workers > 1)
    print(f"  {preset} seed {seed}: {len(manifest['models'])} models in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    reports = {}
    for outcome in summary.models:
        path = out / "models" / outcome.name / "report.json"
        if path.is_file():
            reports[outcome.name] = json.loads(path.read_text())
        else:
            print(f"  ! {outcome.name}: {outcome.status} {outcome.error}")
    return reports


def first_run_facts(report: dict[str, Any]) -> dict[str, Any]:
    """Norms, indices, steps of a first-run report (per scanned label, label order)."""
    labels = sorted(report["labels"], key=lambda r: r["label"])
    return {"labels": [r["label"] for r in labels], "norms": [r["norm"] for r in labels],
            "anomaly_index": [r["anomaly_index"] for r in labels],
            "steps": [r["steps"] for r in labels], "wall_seconds": report["wall_seconds"]}


def wide_candidates(facts: dict[str, Any]) -> list[int]:
    """The labels pass 2 re-searches."""
    return candidates(facts, WIDE_MARGIN, THRESHOLD, WIDE_SMALL_RATIO)


def candidates(facts: dict[str, Any], margin: float, threshold: float,
               small_ratio: float = 0.0) -> list[int]:
    """Labels with a first-run index above ``threshold - margin``, plus the smallest trigger.

    With ``small_ratio``, also the labels whose first-run norm is at most that share of the
    median norm.
    """
    norms, index = np.array(facts["norms"]), np.array(facts["anomaly_index"])
    labels = facts["labels"]
    chosen = {labels[int(np.argmin(norms))]}
    chosen |= {t for t, a in zip(labels, index) if a > threshold - margin}
    chosen |= {t for t, n in zip(labels, norms) if n <= small_ratio * np.median(norms)}
    return sorted(chosen, key=lambda t: norms[labels.index(t)])


# -- rules --------------------------------------------------------------------------------------
def judge(facts: dict[str, Any], runs: dict[int, list[float]], rule: str, margin: float = 1.0,
          seeds: int = 2, threshold: float = THRESHOLD, ratio: float | None = None,
          scale: str = "linear", small_ratio: float = 0.0) -> dict[str, Any]:
    """A rule's verdict from the first run and the further runs of some labels.

    ``runs[label]`` holds the further seeds' norms in seed order. With the library's settings
    (``threshold`` 2, no ``ratio``) this mirrors :mod:`neuralcleanse.core.verdict`
    (``--verify`` checks it against the library). ``ratio`` adds a second condition: a label
    is flagged only when its norm is also at most ``ratio`` times the median norm (a label
    that passes the index test but not this one is suspicious). ``scale="log"`` takes the
    anomaly index of the confirmed norms' logarithms (not in the library: a candidate).
    ``small_ratio`` flags, besides, every candidate whose confirmed norm is at most that share
    of the median norm, whatever its index (labels that small are candidates too).
    """
    labels, norms = facts["labels"], np.array(facts["norms"], dtype=float)
    first = np.array(facts["anomaly_index"], dtype=float)
    if rule == "paper":
        confirmed, chosen, extra_steps = norms.copy(), [], 0
    else:
        chosen = candidates(facts, margin, threshold, small_ratio)
        confirmed = norms.copy()
        extra_steps = 0
        for t in chosen:
            values = [norms[labels.index(t)], *runs[t][:seeds]]
            confirmed[labels.index(t)] = float(np.median(values))
            extra_steps += sum(runs_steps(facts, t)[:seeds])
    judged = np.log(confirmed) if scale == "log" else confirmed
    report = anomaly_indices(judged, threshold, labels=np.array(labels))
    median = float(np.median(confirmed))
    by_index = list(report.flagged)
    flagged = [t for t in by_index
               if ratio is None or confirmed[labels.index(t)] <= ratio * median]
    small = [t for t in chosen if confirmed[labels.index(t)] <= small_ratio * median]
    flagged = sorted(set(flagged) | set(small), key=lambda t: confirmed[labels.index(t)])
    base = anomaly_indices(norms, threshold, labels=np.array(labels))
    suspicious = set(by_index) - set(flagged)
    for t in chosen:
        single = [(base.median - v) / base.mad if base.mad else 0.0 for v in runs[t][:seeds]]
        if first[labels.index(t)] > threshold or any(a > threshold for a in single):
            suspicious.add(t)
    suspicious -= set(flagged)
    verdict = "backdoor" if flagged else "suspicious" if suspicious else "clean"
    return {"flagged": flagged,
            "suspicious": sorted(suspicious, key=lambda t: confirmed[labels.index(t)]),
            "max_index": float(report.anomaly_index.max()),
            "min_ratio": float(confirmed.min() / median) if median > 0 else 1.0,
            "extra_steps": int(extra_steps), "verdict": verdict}


def premise(entry: dict[str, Any], zoo: Path, facts: dict[str, Any],
            runs: dict[int, list[float]]) -> dict[str, Any] | None:
    """Is the real trigger smaller than every other label's natural one? (patch models only)

    Neural Cleanse assumes the backdoor is the smallest way into its label, smaller than any
    label's natural trigger. Compares the L1 norm of the real trigger's mask (the zoo's
    ``<name>-trigger.npz``) with the smallest confirmed norm (the median over the runs searched)
    of the labels that are not targets. ``None`` for models without a patch trigger file.
    """
    if entry["family"] not in PATCH_FAMILIES or not entry.get("trigger_file"):
        return None
    path = zoo / entry["trigger_file"]
    if not path.is_file():
        return None
    with np.load(path) as data:
        real = [float(m.sum()) for m in data["masks"]]
    confirmed = {t: float(np.median([n, *runs.get(t, [])]))
                 for t, n in zip(facts["labels"], facts["norms"])}
    others = [n for t, n in confirmed.items() if t not in entry["targets"]]
    smallest = min(others)
    return {"real_trigger_l1": real, "smallest_other_norm": smallest,
            "real_below_natural": max(real) < smallest}


def runs_steps(facts: dict[str, Any], label: int) -> list[int]:
    """Label-steps of the further runs of a label (recorded beside the norms)."""
    return facts["further_steps"][str(label)]


# -- scores -------------------------------------------------------------------------------------
def roc_auc(negatives: Iterable[float], positives: Iterable[float]) -> float | None:
    """Probability that a positive scores above a negative (ties count half)."""
    neg, pos = np.array(list(negatives), float), np.array(list(positives), float)
    if not len(neg) or not len(pos):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(neg) * len(pos)))


def score(models: list[dict[str, Any]], rule_key: str) -> dict[str, Any]:
    """Rates of one rule over a group of models (clean and backdoored)."""
    clean = [m for m in models if m["family"] == "clean"]
    bad = [m for m in models if m["family"] != "clean" and m["effective"]]
    out: dict[str, Any] = {"clean": len(clean), "backdoored": len(bad)}
    if clean:
        verdicts = [m["rules"][rule_key]["verdict"] for m in clean]
        out["false_alarm"] = sum(v == "backdoor" for v in verdicts) / len(clean)
        out["suspicious_clean"] = sum(v == "suspicious" for v in verdicts) / len(clean)
        flagged_labels = sum(len(m["rules"][rule_key]["flagged"]) for m in clean)
        out["per_label_false_flag"] = flagged_labels / sum(m["nb_classes"] for m in clean)
    if bad:
        det, exact, susp = [], [], []
        for m in bad:
            r = m["rules"][rule_key]
            targets = set(m["targets"])
            det.append(bool(targets & set(r["flagged"])))
            if m["family"] != "all-to-all":
                exact.append(set(r["flagged"]) == targets)
            susp.append(r["verdict"] == "suspicious")
        out["detection"] = float(np.mean(det))
        out["exact"] = float(np.mean(exact)) if exact else None
        out["suspicious_backdoored"] = float(np.mean(susp))
    out["auc"] = roc_auc([m["rules"][rule_key]["max_index"] for m in clean],
                         [m["rules"][rule_key]["max_index"] for m in bad])
    out["auc_ratio"] = roc_auc([-m["rules"][rule_key]["min_ratio"] for m in clean],
                               [-m["rules"][rule_key]["min_ratio"] for m in bad])
    extra = [m["rules"][rule_key]["extra_steps"] for m in models]
    first = [m["first_steps"] for m in models]
    out["extra_label_steps"] = float(sum(extra) / max(1, sum(first)))
    out["seconds_per_model"] = float(np.mean([m["first_seconds"] for m in models]))
    return out


def table(results: dict[str, Any], rules: Iterable[str] | None = None,
          groups: Iterable[str] | None = None) -> str:
    """The Markdown table of the results (one row per preset, rule and group)."""
    lines = ["| preset | rule | group | clean / backdoored | false alarms | suspicious (clean)"
             " | detection | exact | ROC AUC | extra label-steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.0f} %"

    for preset, per_rule in results["scores"].items():
        for rule, per_group in per_rule.items():
            if rules is not None and rule not in rules:
                continue
            for group, s in per_group.items():
                if groups is not None and group not in groups:
                    continue
                auc = "–" if s.get("auc") is None else f"{s['auc']:.3f}"
                lines.append(
                    f"| {preset} | {rule} | {group} | {s['clean']} / {s['backdoored']} | "
                    f"{pct(s.get('false_alarm'))} | {pct(s.get('suspicious_clean'))} | "
                    f"{pct(s.get('detection'))} | {pct(s.get('exact'))} | {auc} | "
                    f"{pct(s['extra_label_steps'])} |")
    return "\n".join(lines)


def verify(entries: list[dict[str, Any]], models: list[dict[str, Any]], args: Any, out: Path,
           preset: str) -> dict[str, Any]:
    """Scan ``entries`` with scan-many's confirmed verdict; compare with the scored rule."""
    reports = run_pass(entries, args.zoo, out, preset, args.seed, args.workers,
                       rule="confirmed", always_scan=True)
    scored = {m["name"]: m["rules"]["confirmed"] for m in models}
    mismatches = []
    for name, rep in reports.items():
        mine = scored[name]
        theirs = {"verdict": rep["verdict"], "flagged": rep["flagged_labels"],
                  "suspicious": rep["suspicious_labels"]}
        if (mine["verdict"], mine["flagged"], sorted(mine["suspicious"])) != (
                theirs["verdict"], theirs["flagged"], sorted(theirs["suspicious"])):
            mismatches.append({"model": name, "scored": mine, "library": theirs})
    print(f"  verify: {len(reports)} models, {len(mismatches)} mismatches", flush=True)
    for m in mismatches:
        print(f"  ! {m}")
    return {"models": len(reports), "mismatches": mismatches}


#: The rules scored: the paper's, the library's default (``confirmed``: the borderline labels,
#: index above threshold - 0.5, and the labels under 0.3 of the median norm re-searched with 2
#: more seeds, decided on their medians; a label is flagged when its index crosses and its
#: trigger is at most 0.7 of the median norm, or when its trigger is at most 0.3 of it), and
#: variants that take one part away or change a number.
RULES = {"paper": {"rule": "paper"},
         "confirmed": {"rule": "confirmed", "margin": 0.5, "seeds": 2, "ratio": 0.7,
                       "small_ratio": 0.3},
         "confirmed, previous default (no small-norm flag)": {"rule": "confirmed", "margin": 0.5,
                                                      "seeds": 2, "ratio": 0.7},
         "confirmed, index only": {"rule": "confirmed", "margin": 1.0, "seeds": 2},
         "paper + norm <= 0.7 median": {"rule": "paper", "ratio": 0.7},
         "paper, index > 3": {"rule": "paper", "threshold": 3.0},
         "confirmed, index only, > 3": {"rule": "confirmed", "margin": 1.0, "seeds": 2,
                                        "threshold": 3.0},
         "confirmed, norm <= 0.5 median": {"rule": "confirmed", "margin": 1.0, "seeds": 2,
                                           "ratio": 0.5},
         "confirmed, norm <= 0.6 median": {"rule": "confirmed", "margin": 1.0, "seeds": 2,
                                           "ratio": 0.6},
         "confirmed, norm <= 0.8 median": {"rule": "confirmed", "margin": 1.0, "seeds": 2,
                                           "ratio": 0.8},
         "confirmed, log index, norm <= 0.7 median": {"rule": "confirmed", "margin": 1.0,
                                                      "seeds": 2, "ratio": 0.7,
                                                      "scale": "log"},
         "confirmed, log index, norm <= 0.6 median": {"rule": "confirmed", "margin": 1.0,
                                                      "seeds": 2, "ratio": 0.6,
                                                      "scale": "log"},
         "paper, log index": {"rule": "paper", "scale": "log"},
         "confirmed, margin 1": {"rule": "confirmed", "margin": 1.0, "seeds": 2,
                                 "ratio": 0.7, "small_ratio": 0.3},
         "confirmed, margin 0": {"rule": "confirmed", "margin": 0.0, "seeds": 2, "ratio": 0.7,
                                 "small_ratio": 0.3},
         "confirmed, 1 seed": {"rule": "confirmed", "margin": 1.0, "seeds": 1, "ratio": 0.7,
                               "small_ratio": 0.3},
         **{f"confirmed, small norm <= {r} median": {"rule": "confirmed", "margin": 0.5,
                                                     "seeds": 2, "ratio": 0.7,
                                                     "small_ratio": r}
            for r in (0.2, 0.25, 0.35, 0.4)}}


def main(argv: list[str] | None = None) -> int:
    """Scan the zoo, score the rules, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO)
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--presets", default="fast,paper")
    parser.add_argument("--paper-every", type=int, default=1,
                        help="scan every K-th model with the paper preset (it is slower)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None,
                        help="only the models whose name contains this (e.g. clean)")
    parser.add_argument("--verify", type=int, default=0,
                        help="scan the first N models with the library's confirmed verdict "
                             "(scan-many's default) and check that it equals the scored rule")
    parser.add_argument("--score-only", action="store_true",
                        help="score the reports of an earlier run again, scan nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    global SCORE_ONLY
    SCORE_ONLY = args.score_only
    index = [e for e in json.loads((args.zoo / "index.json").read_text())
             if args.only is None or args.only in e["name"]]
    results: dict[str, Any] = {"zoo": str(args.zoo), "threshold": THRESHOLD,
                               "min_trigger_success": MIN_TRIGGER_SUCCESS,
                               "wide_margin": WIDE_MARGIN, "further_seeds": FURTHER_SEEDS,
                               "rules": RULES, "models": {}, "scores": {}}
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        entries = index if preset != "paper" else index[::args.paper_every]
        base = args.runs / preset
        first = run_pass(entries, args.zoo, base / f"seed-{args.seed}", preset, args.seed,
                         args.workers)
        facts = {name: first_run_facts(rep) for name, rep in first.items()}
        wanted = {name: wide_candidates(f) for name, f in facts.items()}
        further: list[dict[str, Any]] = []
        for i in range(1, FURTHER_SEEDS + 1):
            further.append(run_pass(entries, args.zoo, base / f"seed-{args.seed + i}",
                                    preset, args.seed + i, args.workers, labels=wanted))
        models = []
        for e in entries:
            if e["name"] not in facts:
                continue
            f = facts[e["name"]]
            runs: dict[int, list[float]] = {}
            f["further_steps"] = {}
            for t in wanted[e["name"]]:
                found = [next(r for r in rep[e["name"]]["labels"] if r["label"] == t)
                         for rep in further]
                runs[t] = [r["norm"] for r in found]
                f["further_steps"][str(t)] = [r["steps"] for r in found]
            model = {"name": e["name"], "family": e["family"], "dataset": e["dataset"],
                     "arch": e["arch"], "framework": e["framework"], "targets": e["targets"],
                     "nb_classes": e["nb_classes"],
                     "effective": (e["family"] == "clean"
                                   or (e["trigger_success"] or 0) >= MIN_TRIGGER_SUCCESS),
                     "trigger_success": e["trigger_success"],
                     "area": (e["size"] ** 2 / (e["input_shape"][1] * e["input_shape"][2])
                              if e["family"] in PATCH_FAMILIES else None),
                     "first_steps": int(sum(f["steps"])), "first_seconds": f["wall_seconds"],
                     "first_run": {k: f[k] for k in ("norms", "anomaly_index")},
                     "further_norms": {str(t): v for t, v in runs.items()},
                     "rules": {name: judge(f, runs, **rule) for name, rule in RULES.items()},
                     "premise": premise(e, args.zoo, f, runs)}
            models.append(model)
        results["models"][preset] = models
        groups: dict[str, list[dict[str, Any]]] = {"all": models}
        clean = [m for m in models if m["family"] == "clean"]
        groups["patch triggers"] = clean + [m for m in models if m["family"] in PATCH_FAMILIES]
        for fam in sorted({m["family"] for m in models} - {"clean"}):
            groups[fam] = clean + [m for m in models if m["family"] == fam]
        for arch in sorted({m["arch"] for m in models}):
            same = [m for m in models if m["arch"] == arch]
            groups[f"patch, {arch}"] = [m for m in same if m["family"] == "clean"
                                        or m["family"] in PATCH_FAMILIES]
        for below, name in ((True, "patch, real trigger < every natural one"),
                            (False, "patch, real trigger >= some natural one")):
            groups[name] = clean + [m for m in models if m["premise"] is not None
                                    and m["premise"]["real_below_natural"] == below]
        for name, low, high in AREA_GROUPS:
            groups[name] = clean + [m for m in models if m["family"] in PATCH_FAMILIES
                                    and low <= m["area"] < high]
        results["scores"][preset] = {rule: {g: score(ms, rule) for g, ms in groups.items()}
                                     for rule in RULES}
        results.setdefault("not_effective", {})[preset] = [
            m["name"] for m in models if not m["effective"]]
        if args.verify:
            results.setdefault("verify", {})[preset] = verify(
                entries[:args.verify], models, args, base / "verify", preset)
    print(table(results, rules=("paper", "confirmed")))
    print()
    print(table(results, groups=("all", "patch triggers")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
