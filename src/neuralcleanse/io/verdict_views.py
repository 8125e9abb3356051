"""The verdict as the report and the console show it: the verdict box and the confirmation.

Built from a :class:`~neuralcleanse.core.results.ScanResult`: which rule decided (the paper's
single run, or the confirmed verdict with its further seeds), why each label was flagged (its
anomaly index, or its share of the median norm), the runs behind each borderline label, and the
rule's expected false-alarm rate for the model's number of labels (from the model zoo).
"""

from __future__ import annotations

import math
from typing import Any

from neuralcleanse.core.results import ScanResult
from neuralcleanse.core.strict_json import is_finite_number
from neuralcleanse.core.verdict import (
    RULES,
    ZOO_PER_LABEL_FALSE_FLAG,
    ZOO_SOURCE,
    ZOO_THRESHOLD,
    expected_false_alarm_rate,
)

#: The verdict word of each kind of verdict box (a partial scan has no verdict yet).
VERDICT_WORDS = {"backdoor": "BACKDOOR", "suspicious": "SUSPICIOUS", "clean": "CLEAN",
                 "partial": "PARTIAL"}


def _labels_text(labels: list[int]) -> str:
    plural = "s" if len(labels) > 1 else ""
    return f"label{plural} {', '.join(str(t) for t in labels)}"


def _confirmation(result: ScanResult) -> dict[str, Any]:
    return result.confirmation if isinstance(result.confirmation, dict) else {}


def rule_of(result: ScanResult) -> str:
    """The rule that decided the verdict: ``"confirmed"`` or ``"paper"``.

    Read from the confirmation record, else from the settings; a report written before the
    rules existed was decided by the paper's rule.
    """
    rule = _confirmation(result).get("rule", result.config.get("verdict"))
    return rule if rule in RULES else "paper"


def _further_seeds(confirmation: dict[str, Any]) -> list[Any]:
    """The further seeds of a confirmation: their values, or as many ``None`` as counted."""
    seeds = confirmation.get("seeds")
    if isinstance(seeds, list):
        return seeds
    if isinstance(seeds, int) and not isinstance(seeds, bool) and 0 <= seeds <= 1000:
        return [None] * seeds
    runs = confirmation.get("runs")
    if isinstance(runs, dict) and runs:
        return [None] * max((len(v) for v in runs.values() if isinstance(v, list)), default=0)
    return []


def _runs_decided(result: ScanResult) -> int | None:
    """How many runs the confirmed verdict took its medians over (``None``: one run)."""
    restarts = result.restarts or {}
    if isinstance(restarts.get("n"), int) and restarts["n"] > 1:
        return int(restarts["n"])
    seeds = _further_seeds(_confirmation(result))
    return 1 + len(seeds) if seeds and rule_of(result) == "confirmed" else None


def small_norm_flags(result: ScanResult) -> tuple[list[int], float | None]:
    """The labels flagged for a small norm alone, and the share of the median that flags one.

    These are the flagged labels whose anomaly index is not above the threshold; the share is
    the confirmed rule's ``small_norm_ratio`` (``None`` when not recorded). Such labels were
    flagged for a trigger far smaller than the median label's where the norms spread too
    widely for the index to cross.
    """
    ratio = _number(_confirmation(result).get("small_norm_ratio",
                                              result.config.get("small_norm_ratio")))
    labels = [int(t) for t in result.flagged_labels
              if t in result.scanned_labels
              and not result.label(t).anomaly_index > result.anomaly_threshold]
    return labels, ratio


def _why_flagged(result: ScanResult, threshold: float) -> str:
    """``anomaly index > T``, or with small-norm flags ``... or trigger <= R of the median``."""
    small, ratio = small_norm_flags(result)
    if not small:
        return f"anomaly index > {threshold:g}"
    share = "a small share" if ratio is None else f"<= {100 * ratio:.0f} %"
    return f"anomaly index > {threshold:g}, or trigger norm {share} of the median"


def verdict_view(result: ScanResult) -> dict[str, str]:
    """The verdict box and the console's verdict line.

    Returns:
        ``kind`` (``backdoor``, ``suspicious``, ``clean`` or ``partial``), ``word`` (the
        verdict in capitals), ``title`` and ``text`` of the box, and ``line``: the one-line
        verdict the command line prints.
    """
    scanned = len(result.labels)
    threshold = result.anomaly_threshold
    runs = _runs_decided(result)
    if result.partial:
        line = (f"PARTIAL: only {scanned} of {result.nb_classes} labels searched; no verdict "
                "yet")
        return {"kind": "partial", "word": VERDICT_WORDS["partial"], "line": line,
                "title": "Partial scan: no verdict yet",
                "text": (f"Only {scanned} of {result.nb_classes} labels were searched before "
                         "the scan stopped. The numbers below cover those labels only"
                         if scanned < result.nb_classes else
                         "Every label was searched once, but the scan stopped before the "
                         "verdict was confirmed. The numbers below are the first run's")
                        + "; resume the scan for a verdict."}
    verdict = result.verdict
    suspicious = [int(t) for t in result.suspicious_labels]
    how = (f"on the median of {runs} runs" if runs else
           "in one run, the paper's rule" if rule_of(result) == "paper" else "")
    if verdict == "backdoor":
        flagged = list(result.flagged_labels)
        names = _labels_text(flagged)
        worst = max(result.label(t).anomaly_index for t in flagged)
        signature = ("a small patch turns images of other classes into this label, the "
                     "signature of a backdoor.")
        small, ratio = small_norm_flags(result)
        if small and result.median_norm > 0:
            shares = ", ".join(f"{100 * result.label(t).norm / result.median_norm:.0f} %"
                               f"{' (label ' + str(t) + ')' if len(small) > 1 else ''}"
                               for t in small)
            limit = "" if ratio is None else f" (at most {100 * ratio:.0f} % is flagged)"
            size = f"{shares} of the median label's norm{limit}"
            spread = (f"stays under the threshold {threshold:g} because the labels' natural "
                      "norms spread widely here")
            if small == flagged:
                text = (f"The reversed trigger of {names} is {size}"
                        f"{', ' + how if how else ''}: {signature} Its anomaly index {spread}.")
            else:
                text = (f"The reversed trigger of {names} is unusually small (anomaly index up "
                        f"to {worst:.2f}, threshold {threshold:g}"
                        f"{', ' + how if how else ''}): {signature} Also flagged for its size: "
                        f"{_labels_text(small)}, {size}; its anomaly index {spread}.")
        else:
            text = (f"The reversed trigger of {names} is unusually small (anomaly index up to "
                    f"{worst:.2f}, threshold {threshold:g}{', ' + how if how else ''}): "
                    f"{signature}")
        line = (f"BACKDOOR: label(s) {flagged} flagged ({_why_flagged(result, threshold)}"
                f"{', ' + how if how else ''})")
        if suspicious:
            text += (f" Also suspicious: {_labels_text(suspicious)} crossed the threshold in a "
                     "single run but not on the median of its runs.")
            line += f"; suspicious, not confirmed: label(s) {suspicious}"
        return {"kind": "backdoor", "word": VERDICT_WORDS["backdoor"], "line": line,
                "title": f"Backdoor: {names}", "text": text}
    if verdict == "suspicious":
        names = _labels_text(suspicious)
        median = f"on the median of {runs} runs" if runs else "on the median of its runs"
        confirmed = max((result.label(t).anomaly_index for t in suspicious
                         if t in result.scanned_labels), default=math.nan)
        line = (f"SUSPICIOUS: label(s) {suspicious} crossed anomaly index {threshold:g} in a "
                f"single run but not {median}: not confirmed as a backdoor")
        return {"kind": "suspicious", "word": VERDICT_WORDS["suspicious"], "line": line,
                "title": f"Suspicious: {names}, not confirmed",
                "text": f"The reversed trigger of {names} crossed the anomaly threshold "
                        f"{threshold:g} in a single run, but not {median} (confirmed anomaly "
                        f"index up to {confirmed:.2f}). Borderline labels like this occur on "
                        "clean models too; look at the trigger below, and if the model's "
                        "source is not trusted, scan again with more clean images or more "
                        "confirmation seeds."}
    line = f"CLEAN: no backdoor found (no anomaly index > {threshold:g})"
    return {"kind": "clean", "word": VERDICT_WORDS["clean"], "line": line,
            "title": "Clean: no backdoor found",
            "text": f"No label of the {scanned} scanned has an anomaly index above "
                    f"{threshold:g}{' ' + how if runs else ''}: no label can be reached with "
                    "an unusually small trigger."}


def _number(value: Any) -> float | None:
    return float(value) if is_finite_number(value) else None


def _per_label(values: Any, position: int | None) -> float | None:
    if position is None or not isinstance(values, list) or position >= len(values):
        return None
    return _number(values[position])


def false_alarm_text(result: ScanResult, rule: str, recorded: dict[str, Any]) -> str:
    """The expected false-alarm rate of ``rule`` for the model's number of labels, in words.

    The rate recorded with the scan when there is one, else the rate known now (a report
    written before the rate existed); "not measured yet" until the model zoo has measured it.
    """
    n = len(result.labels)
    if "expected_false_alarm_rate" in recorded:
        rate = _number(recorded["expected_false_alarm_rate"])
    else:
        rate = expected_false_alarm_rate(rule, n, result.anomaly_threshold)
    name = "confirmed rule" if rule == "confirmed" else "paper's rule"
    if rate is not None:
        return (f"about {100 * rate:.1f} % of clean models with {n} labels get a backdoor "
                f"verdict from the {name} (its per-label rate measured on {ZOO_SOURCE})")
    if ZOO_PER_LABEL_FALSE_FLAG.get(rule) is not None \
            and result.anomaly_threshold != ZOO_THRESHOLD:
        return (f"not measured for an anomaly threshold of {result.anomaly_threshold:g} (the "
                f"model zoo used {ZOO_THRESHOLD:g})")
    return f"not measured yet for the {name}"


def confirmation_view(result: ScanResult) -> dict[str, Any]:
    """How the verdict was reached, for the report's Confirmation table and the console.

    Returns:
        ``rule`` (``confirmed`` or ``paper``), ``rule_text`` (the rule in words), ``rows`` (per
        label searched again: ``label``, ``first_norm``, ``first_index``, ``runs`` (its norm
        under each further seed), ``norm`` and ``index`` (confirmed), ``outcome``; with
        restarts, only the flagged and suspicious labels), ``seeds`` (the further seeds,
        ``None`` where only their number is known), ``cost_text`` (the extra work, or ``""``),
        ``false_alarm_text`` and ``skipped`` (why no confirmation ran, or ``""``). Missing or
        malformed fields give fewer rows, never an error.
    """
    confirmation = _confirmation(result)
    rule = rule_of(result)
    threshold = result.anomaly_threshold
    seeds = _further_seeds(confirmation)
    skipped = str(confirmation.get("skipped") or "")
    if result.partial and not skipped:
        skipped = "partial scan"
    restarts = result.restarts or {}
    by_restarts = confirmation.get("by") == "restarts" or (
        isinstance(restarts.get("n"), int) and restarts["n"] > 1)
    rows: list[dict[str, Any]] = []
    cost_text = ""
    plural = "s" if len(seeds) > 1 else ""
    values = [s for s in seeds if s is not None]
    shown = f" ({', '.join(str(s) for s in values)})" if values and len(values) == len(
        seeds) else ""
    if rule == "paper":
        rule_text = (f"the paper's rule: one run, a label is flagged when its anomaly index "
                     f"exceeds {threshold:g}; no confirmation")
    elif skipped:
        rule_text = (f"confirmed, but no confirmation ran ({skipped}): the verdict is the "
                     f"paper's rule on the labels searched (anomaly index above {threshold:g})")
    else:
        candidates = [int(t) for t in confirmation.get("candidates") or []
                      if isinstance(t, int) and t in result.scanned_labels]
        if by_restarts:
            n = restarts.get("n") if isinstance(restarts.get("n"), int) else len(seeds) + 1
            rule_text = (f"confirmed: every label searched with {n} seeds, decided on the "
                         f"median of {n} runs (no further confirmation pass)")
            shown_labels = set(result.flagged_labels) | set(result.suspicious_labels)
            candidates = [t for t in candidates if t in shown_labels]
            what = "every label searched again"
        else:
            margin = _number(confirmation.get("margin"))
            small = _number(confirmation.get("small_norm_ratio"))
            borderline = ("borderline" if margin is None else
                          f"anomaly index above {threshold - margin:g}") + (
                f", norm at most {100 * small:.0f} % of the median" if small else "") + \
                ", and the smallest trigger"
            rule_text = (f"confirmed: {len(candidates)} label(s) ({borderline}) re-searched "
                         f"with {len(seeds)} further seed{plural}{shown}, decided on the median "
                         f"of {len(seeds) + 1} runs" if seeds else "confirmed")
            what = (f"{len(candidates)} label(s) re-searched "
                    f"({', '.join(map(str, candidates))})")
        rows = _confirmation_rows(result, confirmation, candidates)
        extra = confirmation.get("runs_label_steps")
        if seeds and isinstance(extra, int) and not isinstance(extra, bool):
            first = _first_run(confirmation)
            share = _number(confirmation.get("extra_label_steps_share"))
            first_steps = first.get("label_steps")
            seconds = _number(confirmation.get("extra_seconds"))
            cost_text = (f"{what} with {len(seeds)} further seed{plural}: {extra} extra "
                         "label-steps"
                         + (f", {100 * share:.1f} % of the first pass's {first_steps}"
                            if share is not None and isinstance(first_steps, int) else "")
                         + (f", {seconds:.1f} s" if seconds is not None else ""))
    effective = "paper" if skipped else rule
    return {"rule": rule, "rule_text": rule_text, "rows": rows, "seeds": seeds,
            "cost_text": cost_text, "skipped": skipped,
            "false_alarm_text": false_alarm_text(result, effective, confirmation)}


def _first_run(confirmation: dict[str, Any]) -> dict[str, Any]:
    first = confirmation.get("first_run")
    return first if isinstance(first, dict) else {}


def _confirmation_rows(result: ScanResult, confirmation: dict[str, Any],
                       candidates: list[int]) -> list[dict[str, Any]]:
    first = _first_run(confirmation)
    runs = confirmation.get("runs") if isinstance(confirmation.get("runs"), dict) else {}
    order = first.get("labels")
    scanned = order if isinstance(order, list) else result.scanned_labels
    suspicious = set(result.suspicious_labels)
    rows = []
    for t in candidates:
        position = scanned.index(t) if t in scanned else None
        further = runs.get(str(t))
        entry = result.label(t)
        rows.append({
            "label": t, "first_norm": _per_label(first.get("norms"), position),
            "first_index": _per_label(first.get("anomaly_index"), position),
            "runs": [_number(v) for v in further] if isinstance(further, list) else [],
            "norm": entry.norm, "index": entry.anomaly_index,
            "outcome": "backdoor" if t in result.flagged_labels else
                       "suspicious" if t in suspicious else "clean"})
    return rows
