"""Unlearning stamps every trigger the scan's confirmation found for a label, not only the kept one.

The confirmation searches a borderline label with further seeds and keeps the run at its median
norm; the other runs are other ways into the same label. The scan keeps them for its flagged and
suspicious labels (``ScanResult.further_triggers``), and unlearning stamps them beside the kept
trigger unless ``all_seeds=False`` (CLI ``--kept-trigger-only``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema  # the dev extra, which make test installs
import numpy as np
import pytest
from test_mitigation_defaults import TARGET, hand_made, hand_made_data, trigger

import neuralcleanse as nc
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, InputTypeError
from neuralcleanse.core.results import MAX_FURTHER_PER_LABEL, LabelResult, ScanResult
from neuralcleanse.frontends import api
from neuralcleanse.frontends.api import prepare
from neuralcleanse.frontends.cli.cmd_mitigate import mitigation_options
from neuralcleanse.frontends.cli.messages import CliError
from neuralcleanse.frontends.cli.options import Method
from neuralcleanse.io.json_schemas import load_schema
from neuralcleanse.mitigation import unlearn
from neuralcleanse.mitigation.result import MitigationResult
from neuralcleanse.search.confirm import apply_confirmation, plan_confirmation

H = W = 6
#: Ten labels' norms with no outlier.
CLEAN = [20.0, 21.0, 19.5, 22.0, 20.5, 19.8, 21.2, 20.3, 20.6, 20.7]


def run(label: int, norm: float, mark: float) -> LabelResult:
    """A label result whose mask sums to ``norm``; ``mark`` (the pattern's value) names the run."""
    return LabelResult(label=label, mask=np.full((H, W), norm / (H * W), np.float32),
                       pattern=np.full((1, H, W), mark, np.float32), norm=float(norm),
                       attack_success_rate=0.99, converged=True, steps=10, seconds=0.1,
                       final_cost=1e-3)


def confirmed(norms: list[float], further: dict[int, list[float]],
              cfg: ScanConfig | None = None) -> ScanResult:
    """The first run (pattern 0.0) graded with the further runs given (patterns 0.1, 0.2, ...);
    the other planned labels' further runs come out a little larger."""
    cfg = cfg or ScanConfig(progress=False)
    first = ScanResult.from_labels([run(t, n, 0.0) for t, n in enumerate(norms)],
                                   nb_classes=len(norms),
                                   anomaly_threshold=cfg.anomaly_threshold,
                                   config=cfg.to_dict(),
                                   versions={"neuralcleanse": "0", "python": "3", "numpy": "2"})
    planned = {t: [norms[t] + 0.1 * (k + 1) for k in range(cfg.confirm_seeds)]
               for t in plan_confirmation(first, cfg)}
    planned.update(further)
    extra = {t: [run(t, n, 0.1 * (k + 1)) for k, n in enumerate(ns)]
             for t, ns in planned.items()}
    return apply_confirmation(first, extra, cfg, 1.0)


def marks(result: ScanResult, label: int) -> list[float]:
    """Which runs of ``label`` are kept as further triggers, by their pattern's mark."""
    return [round(float(r.pattern.flat[0]), 3) for r in result.further_triggers
            if r.label == label]


# -- the scan keeps them ---------------------------------------------------------------------------
def test_a_flagged_label_keeps_its_other_runs() -> None:
    norms = list(CLEAN)
    norms[4] = 3.0
    norms[7] = 18.5  # borderline (index 1.62): searched again, neither flagged nor suspicious
    result = confirmed(norms, {4: [3.6, 2.8]})  # median 3.0: the first run is kept
    assert result.flagged_labels == [4] and result.suspicious_labels == []
    assert float(result.label(4).pattern.flat[0]) == 0.0
    assert marks(result, 4) == [0.1, 0.2]
    assert [r.norm for r in result.further_triggers] == pytest.approx([3.6, 2.8])
    # the other planned labels (the smallest, borderline ones) are neither flagged nor
    # suspicious: none of their runs is kept
    assert 7 in result.confirmation["candidates"]
    assert {r.label for r in result.further_triggers} == {4}


def test_when_a_further_run_is_kept_the_first_run_becomes_a_further_trigger() -> None:
    norms = list(CLEAN)
    norms[4] = 3.6
    result = confirmed(norms, {4: [3.0, 2.5]})  # median 3.0: the first further run
    assert result.flagged_labels == [4]
    assert float(result.label(4).pattern.flat[0]) == pytest.approx(0.1)
    assert marks(result, 4) == [0.0, 0.2]


def test_a_suspicious_label_keeps_its_other_runs_too() -> None:
    norms = list(CLEAN)
    norms[3] = 18.0  # crosses the threshold in the first run only
    result = confirmed(norms, {3: [20.1, 19.9]})
    assert result.verdict == "suspicious" and result.suspicious_labels == [3]
    assert marks(result, 3) == [0.0, 0.1]  # the median, 19.9, is kept (mark 0.2)


def test_the_paper_rule_and_a_clean_verdict_keep_none() -> None:
    norms = list(CLEAN)
    norms[4] = 3.0
    assert confirmed(norms, {}, ScanConfig(progress=False, verdict="paper")
                     ).further_triggers == []
    clean = confirmed(list(CLEAN), {})
    assert clean.verdict == "clean" and clean.further_triggers == []


def test_the_further_triggers_survive_the_json_and_match_the_schema(tmp_path: Path) -> None:
    norms = list(CLEAN)
    norms[4] = 3.0
    result = confirmed(norms, {4: [3.6, 2.8]})
    back = ScanResult.from_json(result.to_json(tmp_path / "report.json"))
    assert len(back.further_triggers) == 2
    for a, b in zip(result.further_triggers, back.further_triggers):
        assert (a.label, a.norm) == (b.label, b.norm)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.pattern, b.pattern)
    validator = jsonschema.Draft202012Validator(load_schema("report"))
    doc = json.loads(result.to_json())
    assert [e.message for e in validator.iter_errors(doc)] == []
    del doc["further_triggers"][0]["mask"]
    assert list(validator.iter_errors(doc))
    # a report written before further triggers were kept reads as having none
    older = json.loads(result.to_json())
    del older["further_triggers"]
    assert ScanResult.from_dict(older).further_triggers == []


def _entry(doc: dict[str, Any], **change: Any) -> list[dict[str, Any]]:
    entry = dict(doc["further_triggers"][0])
    entry.update(change)
    return [entry]


@pytest.mark.parametrize("change, message", [
    (lambda doc: "a list", "further_triggers must be a list"),
    (lambda doc: [{"label": 4}], "further_triggers[0]: "),
    (lambda doc: _entry(doc, label=5), "label 5, which is neither flagged nor suspicious"),
    (lambda doc: _entry(doc, mask_shape=[3, 12], mask=[0.0] * 36, pattern_shape=[1, 3, 12],
                        pattern=[0.0] * 36),
     "another mask or pattern shape"),
    (lambda doc: doc["further_triggers"][:1] * (MAX_FURTHER_PER_LABEL + 1),
     f"more than {MAX_FURTHER_PER_LABEL} triggers of label 4"),
])
def test_malformed_further_triggers_are_refused(change: Any, message: str) -> None:
    norms = list(CLEAN)
    norms[4] = 3.0
    doc = json.loads(confirmed(norms, {4: [3.6, 2.8]}).to_json())
    doc["further_triggers"] = change(doc)
    with pytest.raises(InputError) as info:
        ScanResult.from_dict(doc)
    assert message in str(info.value)


# -- unlearning stamps them ------------------------------------------------------------------------
FURTHER_PIXEL = (0, 3)


def wrapped(n: int = 60) -> tuple[Any, np.ndarray, np.ndarray]:
    x, y = hand_made_data(n, 0)
    clf, x, y = prepare(hand_made(), x, y, output="logits", clip_values=(0.0, 1.0))
    return clf, x, y


def capture_training(clf: Any, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    tune = clf.fine_tune

    def spy(x: np.ndarray, y: np.ndarray, **kwargs: Any) -> None:
        seen.append(np.array(x, copy=True))
        tune(x, y, **kwargs)

    monkeypatch.setattr(clf, "fine_tune", spy)
    return seen


def test_unlearning_shares_the_stamped_images_with_the_further_triggers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clf, x, y = wrapped()
    seen = capture_training(clf, monkeypatch)
    x_test, y_test = hand_made_data(20, 1)
    further = dataclasses.replace(trigger(pixel=FURTHER_PIXEL), norm=1.5)
    report = unlearn(clf, x, y, [trigger()], further_triggers=[further], stamped_fraction=0.5,
                     epochs=1, min_updates=0, x_test=x_test, y_test=y_test)
    (trained,) = seen
    changed = np.abs(trained - x) > 0.5  # a stamped pixel goes from < 0.1 to 1
    kept_trigger = changed[:, 0, 3, 3]
    other_trigger = changed[:, 0, FURTHER_PIXEL[0], FURTHER_PIXEL[1]]
    assert not np.any(kept_trigger & other_trigger)
    assert np.all(changed.sum(axis=(1, 2, 3)) == (kept_trigger | other_trigger))
    # 30 images stamped, split evenly, none of the target class
    assert kept_trigger.sum() == other_trigger.sum() == 15
    assert np.all(y[kept_trigger | other_trigger] != TARGET)
    assert report.n_stamped == 30
    assert report.further_norms == {TARGET: [1.5]}
    # measured with the kept trigger only
    assert set(report.measurements.reversed_asr_after) == {TARGET}
    again = type(report).from_dict(report.to_dict())
    assert again.further_norms == {TARGET: [1.5]}


def test_without_further_triggers_unlearning_stamps_the_kept_one_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clf, x, y = wrapped()
    seen = capture_training(clf, monkeypatch)
    x_test, y_test = hand_made_data(20, 1)
    report = unlearn(clf, x, y, [trigger()], stamped_fraction=0.5, epochs=1, min_updates=0,
                     x_test=x_test, y_test=y_test)
    changed = np.abs(seen[0] - x) > 0.5
    assert changed[:, 0, 3, 3].sum() == 30 and changed.sum() == 30
    assert report.further_norms == {}


@pytest.mark.parametrize("further, error, message", [
    ([trigger(label=0)], InputError, "label 0, which is not being mitigated"),
    (trigger(), InputTypeError, "further_triggers must be a list of LabelResult"),
    (["not a trigger"], InputTypeError, "further_triggers must be LabelResult objects"),
    ([dataclasses.replace(trigger(), mask=np.zeros((3, 3), np.float32))], InputError,
     "the trigger mask of label 1 has shape (3, 3)"),
    ([dataclasses.replace(trigger(), pattern=np.full((1, 4, 4), np.nan, np.float32))],
     InputError, "NaN or infinite"),
])
def test_bad_further_triggers_are_refused_before_training(
        further: Any, error: type[Exception], message: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    clf, x, y = wrapped()
    seen = capture_training(clf, monkeypatch)
    with pytest.raises(error) as info:
        unlearn(clf, x, y, [trigger()], further_triggers=further)
    assert message in str(info.value)
    assert seen == []


def scan_of_hand_made(further: list[LabelResult]) -> ScanResult:
    """A two-label scan of the hand-made model that flagged the target, with further runs."""
    labels = [dataclasses.replace(trigger(label=0, pixel=(2, 2)), norm=5.0), trigger()]
    result = ScanResult.from_labels(labels, nb_classes=2, anomaly_threshold=2.0,
                                    config=ScanConfig(progress=False).to_dict())
    return dataclasses.replace(result, flagged_labels=[TARGET], verdict="backdoor",
                               further_triggers=further)


def test_mitigate_stamps_the_scans_further_triggers_unless_told_not_to(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    given: list[list[LabelResult]] = []
    real = api.unlearn

    def spy(*args: Any, further_triggers: Any = (), **kwargs: Any) -> Any:
        given.append(list(further_triggers))
        return real(*args, further_triggers=further_triggers, **kwargs)

    monkeypatch.setattr(api, "unlearn", spy)
    x, y = hand_made_data(60, 0)
    x_test, y_test = hand_made_data(20, 1)
    other = dataclasses.replace(trigger(pixel=FURTHER_PIXEL), norm=1.5)
    scan = scan_of_hand_made([other])
    common = dict(x_test=x_test, y_test=y_test, output="logits", clip_values=(0.0, 1.0),
                  epochs=1, min_updates=0)
    res = nc.mitigate(hand_made(), x, y, scan, "unlearning", **common)
    assert [t.norm for t in given[-1]] == [1.5]
    assert res.report.further_norms == {TARGET: [1.5]}
    assert "also stamped the scan's other triggers of label 1 (norms 1.5)" in res.summary()
    # where the label's own images lost more than 3 points, the summary suggests the kept
    # trigger alone; within 3 points it does not
    m = res.report.measurements
    for after, hinted in ((m.label_acc_before[TARGET] - 0.05, True),
                          (m.label_acc_before[TARGET] - 0.02, False)):
        shifted = dataclasses.replace(res, report=dataclasses.replace(
            res.report, measurements=dataclasses.replace(
                m, label_acc_after={**m.label_acc_after, TARGET: after})))
        hint = (f"label {TARGET}'s own images lost {0.05 if hinted else 0.02:.1%} of accuracy: "
                "compare all_seeds=False (CLI --kept-trigger-only)")
        assert (hint in shifted.summary()) is hinted, shifted.summary()
    # the same from the report file
    path = tmp_path / "report.json"
    scan.to_json(path)
    nc.mitigate(hand_made(), x, y, path, "unlearning", **common)
    assert [t.norm for t in given[-1]] == [1.5]
    # switched off, or for a list of triggers (no scan), or for another label: none
    res = nc.mitigate(hand_made(), x, y, scan, "unlearning", all_seeds=False, **common)
    assert given[-1] == [] and res.report.further_norms == {}
    assert "other triggers" not in res.summary()
    nc.mitigate(hand_made(), x, y, [trigger()], "unlearning", **common)
    assert given[-1] == []
    nc.mitigate(hand_made(), x, y, scan, "unlearning", labels=[0], **common)
    assert given[-1] == []
    # read back, the report keeps them
    back = MitigationResult.from_json(res.to_json())
    assert back.report.further_norms == {}


def test_all_seeds_must_be_a_boolean() -> None:
    x, y = hand_made_data(60, 0)
    with pytest.raises(InputError) as info:
        nc.mitigate(hand_made(), x, y, scan_of_hand_made([]), "unlearning", all_seeds="yes",
                    output="logits", clip_values=(0.0, 1.0))
    assert "all_seeds must be True or False (got 'yes')" in str(info.value)
    with pytest.raises(InputError) as info:
        nc.mitigate(hand_made(), x, y, scan_of_hand_made([]), "filtering", all_seeds=False,
                    output="logits", clip_values=(0.0, 1.0))
    assert "unknown option(s) all_seeds for method 'filtering'" in str(info.value)


def test_the_cli_flags_apply_to_unlearning_only() -> None:
    assert mitigation_options(Method.unlearning, None, {"all_seeds": False}) == {
        "all_seeds": False}
    assert mitigation_options(Method.unlearning, None, {"all_seeds": None}) == {}
    with pytest.raises(CliError) as info:
        mitigation_options(Method.filtering, None, {"all_seeds": True})
    assert "--all-seeds or --kept-trigger-only applies to --method unlearning" in str(info.value)
