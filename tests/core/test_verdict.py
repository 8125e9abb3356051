"""The graded, confirmed verdict on synthetic trigger norms (no model): which labels are searched
again, how their medians decide, the paper rule, restarts, partial scans, the JSON fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuralcleanse.core import verdict as verdict_module
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.outliers import anomaly_indices
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.core.verdict import (
    RULES,
    VERDICTS,
    confirm_norms,
    confirmation_candidates,
    expected_false_alarm_rate,
    median_run,
)
from neuralcleanse.search.confirm import (
    apply_confirmation,
    further_seeds,
    plan_confirmation,
)
from neuralcleanse.search.restarts import combine_restarts

H = W = 4
#: Ten labels of a clean-looking model: median 20.4, MAD ~0.96.
CLEAN = [20.0, 21.0, 19.5, 22.0, 20.5, 19.8, 21.2, 20.3, 20.6, 20.7]


def trigger(label: int, norm: float, steps: int = 10) -> LabelResult:
    """A label result whose mask sums to its norm, so the chosen run can be told apart."""
    return LabelResult(label=label, mask=np.full((H, W), norm / (H * W), np.float32),
                       pattern=np.full((1, H, W), 0.5, np.float32), norm=float(norm),
                       attack_success_rate=0.995, converged=True, steps=steps, seconds=0.1,
                       final_cost=1e-3)


def first_run(norms: list[float], *, partial: bool = False, without: tuple[int, ...] = (),
              cfg: ScanConfig | None = None, nb_classes: int | None = None) -> ScanResult:
    cfg = cfg or ScanConfig(progress=False)
    return ScanResult.from_labels([trigger(t, n) for t, n in enumerate(norms)],
                                  nb_classes=nb_classes or len(norms),
                                  anomaly_threshold=cfg.anomaly_threshold, config=cfg.to_dict(),
                                  labels_without_data=list(without), partial=partial,
                                  wall_seconds=2.0,
                                  versions={"neuralcleanse": "0", "python": "3", "numpy": "2"})


def reruns(runs: dict[int, list[float]]) -> dict[int, list[LabelResult]]:
    return {t: [trigger(t, n, steps=7) for n in norms] for t, norms in runs.items()}


def graded(result: ScanResult, given: dict[int, list[float]], cfg: ScanConfig | None = None,
           seconds: float = 1.0) -> ScanResult:
    """The confirmation of ``result`` with the further norms ``given``; the other planned labels
    come out slightly larger in their further runs (neither flagged nor suspicious)."""
    cfg = cfg or ScanConfig(progress=False)
    norms = {r.label: r.norm for r in result.labels}
    runs = {t: [norms[t] + 0.1 * (k + 1) for k in range(cfg.confirm_seeds)]
            for t in plan_confirmation(result, cfg)}
    runs.update(given)
    return apply_confirmation(result, reruns(runs), cfg, seconds)


def index_of(norms: list[float], value: float) -> float:
    """The anomaly index of ``value`` against ``norms``, written out here."""
    median = float(np.median(norms))
    mad = 1.4826 * float(np.median(np.abs(np.asarray(norms) - median)))
    return (median - value) / mad


# -- settings -------------------------------------------------------------------------------------
def test_the_settings_are_validated_and_travel_in_the_dict() -> None:
    cfg = ScanConfig()
    assert (cfg.verdict, cfg.confirm_seeds, cfg.confirm_margin) == ("confirmed", 2, 0.5)
    assert RULES == ("confirmed", "paper") and VERDICTS == ("backdoor", "suspicious", "clean")
    assert ScanConfig(verdict=" Paper ").verdict == "paper"
    custom = ScanConfig(verdict="paper", confirm_seeds=4, confirm_margin=0.0)
    assert ScanConfig.from_dict(custom.to_dict()) == custom
    assert custom.to_dict()["confirm_margin"] == 0.0 and custom.to_dict()["verdict"] == "paper"
    for bad, name in [({"verdict": "strict"}, "verdict"), ({"verdict": 1}, "verdict"),
                      ({"verdict": None}, "verdict"), ({"confirm_seeds": 0}, "confirm_seeds"),
                      ({"confirm_seeds": 17}, "confirm_seeds"),
                      ({"confirm_seeds": 2.0}, "confirm_seeds"),
                      ({"confirm_margin": -0.1}, "confirm_margin"),
                      ({"confirm_margin": float("nan")}, "confirm_margin"),
                      ({"confirm_margin": True}, "confirm_margin"),
                      ({"max_norm_ratio": 0.0}, "max_norm_ratio"),
                      ({"max_norm_ratio": 1.01}, "max_norm_ratio"),
                      ({"max_norm_ratio": float("nan")}, "max_norm_ratio")]:
        with pytest.raises(InputError, match=name) as info:
            ScanConfig(**bad)
        assert "\n" not in str(info.value)


def test_further_seeds_follow_the_seed_and_wrap() -> None:
    assert further_seeds(ScanConfig(seed=5, confirm_seeds=3)) == [6, 7, 8]
    assert further_seeds(ScanConfig(seed=2**32 - 2, confirm_seeds=3)) == [2**32 - 1, 0, 1]


# -- candidates -----------------------------------------------------------------------------------
def test_candidates_are_the_borderline_labels_and_the_smallest_norm() -> None:
    norms = list(CLEAN)
    norms[3], norms[6] = 18.0, 16.0  # an index of ~2.2 and ~4.6
    labels = list(range(10))
    index = [index_of(norms, n) for n in norms]
    expected = sorted((t for t in labels if index[t] > 2.0 - 1.0), key=lambda t: norms[t])
    assert 6 in expected and 3 in expected
    assert confirmation_candidates(norms, index, labels, 2.0, 1.0) == expected
    # no margin: only the labels above the threshold
    assert confirmation_candidates(norms, index, labels, 2.0, 0.0) == [6, 3]
    # a clean run with no margin still checks its smallest trigger
    clean_index = [index_of(CLEAN, n) for n in CLEAN]
    assert max(clean_index) < 2.0
    assert confirmation_candidates(CLEAN, clean_index, labels, 2.0, 0.0) == [2]
    # label numbers are reported, not positions
    assert confirmation_candidates([5.0, 3.0], [0.0, 0.0], [7, 4], 2.0, 1.0) == [4]
    assert confirmation_candidates([], [], [], 2.0, 1.0) == []
    with pytest.raises(InputError):
        confirmation_candidates([1.0, 2.0], [0.0], [0, 1], 2.0, 1.0)


def test_plan_is_empty_for_the_paper_rule_partial_scans_and_restarts() -> None:
    norms = list(CLEAN)
    norms[6] = 16.0
    result = first_run(norms)
    assert plan_confirmation(result, ScanConfig(progress=False))[0] == 6
    assert plan_confirmation(result, ScanConfig(verdict="paper")) == []
    assert plan_confirmation(first_run(norms, partial=True), ScanConfig()) == []
    assert plan_confirmation(first_run(norms, nb_classes=12), ScanConfig()) == []


# -- medians --------------------------------------------------------------------------------------
def test_the_median_run_stands_for_the_label() -> None:
    assert median_run([5.0, 3.0, 4.0]) == (2, 4.0)
    assert median_run([4.0, 3.0, 5.0]) == (0, 4.0)
    assert median_run([2.0, 2.0, 9.0]) == (0, 2.0)  # the earliest of equal runs
    # an even count: the median between two runs; the closer run (the earlier on a tie)
    assert median_run([1.0, 2.0, 4.0, 10.0]) == (1, 3.0)
    assert median_run([1.0, 2.5, 4.0, 10.0]) == (1, 3.25)
    assert median_run([7.0]) == (0, 7.0)


def test_a_confirmed_label_takes_the_trigger_of_its_median_run() -> None:
    norms = list(CLEAN)
    norms[6] = 16.0
    result = first_run(norms)
    cfg = ScanConfig(progress=False)
    out = apply_confirmation(result, reruns({6: [14.0, 15.0], 2: [19.6, 19.4]}), cfg, 1.0)
    six, two = out.label(6), out.label(2)
    assert six.norm == 15.0 and six.mask.sum() == pytest.approx(15.0) and six.steps == 7
    assert two.norm == 19.5 and two.mask.sum() == pytest.approx(19.5) and two.steps == 10
    assert out.label(0).norm == 20.0 and out.label(0).steps == 10
    assert result.label(6).norm == 16.0  # the first run's result is left as it is
    # an even number of runs: the median as norm, the trigger of the earlier middle run
    even = apply_confirmation(result, reruns({6: [14.5, 12.0, 15.0], 2: [19.6, 19.4, 19.9]}),
                              cfg.replace(confirm_seeds=3), 1.0)
    assert even.label(6).norm == pytest.approx((14.5 + 15.0) / 2)
    assert even.label(6).mask.sum() == pytest.approx(14.5)


# -- grading --------------------------------------------------------------------------------------
def test_a_clear_outlier_is_confirmed_as_a_backdoor() -> None:
    norms = list(CLEAN)
    norms[6] = 8.0
    result = first_run(norms)
    assert result.flagged_labels == [6]
    graded = apply_confirmation(result, reruns({6: [7.5, 9.0], 2: [19.7, 19.9]}),
                                ScanConfig(progress=False), 3.0)
    confirmed = list(norms)
    confirmed[6], confirmed[2] = 8.0, 19.7
    assert graded.verdict == "backdoor" and graded.flagged_labels == [6]
    assert graded.suspicious_labels == [] and graded.is_backdoored
    assert graded.anomaly_index[6] == pytest.approx(index_of(confirmed, 8.0))
    assert graded.median_norm == pytest.approx(float(np.median(confirmed)))
    assert graded.wall_seconds == pytest.approx(5.0)
    c = graded.confirmation
    assert c["rule"] == "confirmed" and c["candidates"] == [6, 2] and c["seeds"] == [1, 2]
    assert c["runs"] == {"6": [7.5, 9.0], "2": [19.7, 19.9]}
    assert c["first_run"]["norms"] == norms and c["first_run"]["flagged"] == [6]
    assert c["first_run"]["anomaly_index"] == pytest.approx([index_of(norms, n) for n in norms])
    assert c["first_run"]["label_steps"] == 100 and c["runs_label_steps"] == 4 * 7
    assert c["extra_label_steps_share"] == pytest.approx(28 / 100)
    assert c["extra_seconds"] == 3.0
    assert c["expected_false_alarm_rate"] == expected_false_alarm_rate("confirmed", 10)


def test_a_borderline_label_whose_further_runs_are_larger_is_only_suspicious() -> None:
    norms = list(CLEAN)
    norms[3] = 18.0
    result = first_run(norms)
    assert result.flagged_labels == [3] and result.verdict == "backdoor"  # one run says so
    out = graded(result, {3: [20.1, 19.9]})
    assert out.confirmation["candidates"][0] == 3
    assert out.flagged_labels == [] and not out.is_backdoored
    assert out.verdict == "suspicious" and out.suspicious_labels == [3]
    assert out.label(3).norm == 19.9
    assert out.confirmation["first_run"]["flagged"] == [3]
    assert out.summary().startswith("SUSPICIOUS:") and "[3]" in out.summary()


def test_a_label_crossing_in_one_further_run_only_is_suspicious() -> None:
    # label 2 is the smallest, below the threshold in the first run, above it in one rerun
    first_median = float(np.median(CLEAN))
    first_mad = 1.4826 * float(np.median(np.abs(np.asarray(CLEAN) - first_median)))
    crossing = first_median - 2.5 * first_mad
    out = graded(first_run(CLEAN), {2: [crossing, 19.9]})
    assert out.flagged_labels == [] and out.suspicious_labels == [2]
    assert out.verdict == "suspicious" and out.label(2).norm == 19.5
    quiet = graded(first_run(CLEAN), {2: [19.6, 19.9]})
    assert quiet.verdict == "clean" and quiet.suspicious_labels == []


def test_suspicious_labels_come_smallest_norm_first() -> None:
    norms = list(CLEAN)
    norms[3], norms[8] = 18.0, 17.9
    out = confirm_norms(list(range(10)), norms, {8: [20.2, 20.9], 3: [20.0, 20.1]}, 2.0)
    assert out.flagged == [] and out.first_flagged == [8, 3]
    assert out.suspicious == [3, 8]  # confirmed norms 20.0 < 20.2
    assert out.picked == {8: 1, 3: 1}


def test_confirmed_indices_leave_labels_without_data_out_of_the_median() -> None:
    norms = list(CLEAN)
    norms[9], norms[6] = 5.0, 16.0  # label 9 has no clean images
    no_ratio = ScanConfig(progress=False, max_norm_ratio=1.0)  # the outlier test alone
    result = first_run(norms, without=(9,), cfg=no_ratio)
    out = graded(result, {9: [5.5, 4.0], 6: [15.0, 15.5]}, cfg=no_ratio)
    confirmed = [r.norm for r in out.labels]
    assert confirmed[6] == 15.5 and confirmed[9] == 5.0
    again = ScanResult.from_labels([trigger(t, n) for t, n in enumerate(confirmed)],
                                   nb_classes=10, anomaly_threshold=2.0, config={},
                                   labels_without_data=[9])
    np.testing.assert_allclose(out.anomaly_index, again.anomaly_index)
    assert out.flagged_labels == again.flagged_labels == [9, 6]
    assert out.median_norm == again.median_norm and out.mad == again.mad


def test_the_paper_rule_is_exactly_the_first_runs_outlier_test() -> None:
    norms = list(CLEAN)
    norms[3], norms[6] = 18.0, 16.0
    result = first_run(norms, cfg=ScanConfig(verdict="paper"))
    out = apply_confirmation(result, {}, ScanConfig(verdict="paper"), 0.0)
    report = anomaly_indices(np.array(norms), 2.0)
    assert out.flagged_labels == report.flagged == [6, 3]
    np.testing.assert_array_equal(out.anomaly_index, report.anomaly_index)
    assert [r.norm for r in out.labels] == norms
    assert out.verdict == "backdoor" and out.suspicious_labels == []
    assert out.confirmation == {"rule": "paper", "expected_false_alarm_rate":
                                expected_false_alarm_rate("paper", len(norms))}
    clean = apply_confirmation(first_run(CLEAN), {}, ScanConfig(verdict="paper"), 0.0)
    assert clean.verdict == "clean" and clean.flagged_labels == []


def test_restarts_are_graded_on_their_medians() -> None:
    runs_norms = [list(CLEAN), list(CLEAN), list(CLEAN)]
    runs_norms[0][3] = 18.0  # crosses in the first run only
    for run in runs_norms:
        run[6] = 8.0  # a clear outlier in every run
    seeds = [0, 1, 2]
    runs = [[trigger(t, n, steps=10 + s) for t, n in enumerate(row)]
            for s, row in zip(seeds, runs_norms)]
    merged, details = combine_restarts(runs, seeds, 2.0)
    details["wall_seconds"] = [1.0, 2.0, 4.0]
    result = ScanResult.from_labels(merged, nb_classes=10, anomaly_threshold=2.0, config={},
                                    restarts=details)
    cfg = ScanConfig(progress=False)
    assert plan_confirmation(result, cfg) == []
    out = apply_confirmation(result, {}, cfg, 0.0)
    assert details["flagged_per_run"][0] == [6, 3]
    assert out.flagged_labels == [6] and out.suspicious_labels == [3]
    assert out.verdict == "backdoor"
    c = out.confirmation
    assert c["rule"] == "confirmed" and c["by"] == "restarts" and c["restarts"] == 3
    assert c["seeds"] == [1, 2] and c["first_run"]["flagged"] == [6, 3]
    assert c["runs"]["3"] == [CLEAN[3], CLEAN[3]] and c["runs"]["6"] == [8.0, 8.0]
    assert c["runs_label_steps"] == 110 + 120 and c["first_run"]["label_steps"] == 100
    assert c["extra_seconds"] == 6.0
    # with the outlier gone, the first run's crossing alone makes the model suspicious
    for run in runs:
        run[6] = trigger(6, CLEAN[6])
    merged, details = combine_restarts(runs, seeds, 2.0)
    result = ScanResult.from_labels(merged, nb_classes=10, anomaly_threshold=2.0, config={},
                                    restarts=details)
    out = apply_confirmation(result, {}, cfg, 0.0)
    assert out.flagged_labels == [] and out.suspicious_labels == [3]
    assert out.verdict == "suspicious"


def test_a_partial_scan_is_not_confirmed() -> None:
    norms = list(CLEAN)
    norms[6] = 16.0
    interrupted = first_run(norms[:8], partial=True, nb_classes=10)
    assert interrupted.confirmation == {"skipped": "partial scan"}  # from from_labels already
    for result in (interrupted, first_run(norms[:8], nb_classes=10)):
        out = apply_confirmation(result, {}, ScanConfig(progress=False), 0.0)
        assert out.flagged_labels == anomaly_indices(np.array(norms[:8]), 2.0).flagged
        assert out.flagged_labels == [6] and out.verdict == "backdoor"
        assert out.suspicious_labels == []
        assert out.confirmation == {"skipped": "partial scan"}


def test_missing_or_foreign_confirmation_runs_are_refused() -> None:
    norms = list(CLEAN)
    norms[6] = 16.0
    result = first_run(norms)
    with pytest.raises(InputError, match="planned labels"):
        apply_confirmation(result, reruns({2: [19.0, 19.0]}), ScanConfig(), 0.0)
    with pytest.raises(InputError, match="not scanned"):
        confirm_norms([0, 1, 2], [1.0, 2.0, 3.0], {5: [1.0]}, 2.0)


# -- the expected false-alarm rate ----------------------------------------------------------------
def test_expected_false_alarm_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    for rate in verdict_module.ZOO_PER_LABEL_FALSE_FLAG.values():
        assert rate is None or 0.0 <= rate <= 1.0
    assert isinstance(verdict_module.ZOO_SOURCE, str) and verdict_module.ZOO_SOURCE
    monkeypatch.setitem(verdict_module.ZOO_PER_LABEL_FALSE_FLAG, "paper", None)
    monkeypatch.setitem(verdict_module.ZOO_PER_LABEL_FALSE_FLAG, "confirmed", None)
    assert expected_false_alarm_rate("paper", 10) is None
    monkeypatch.setitem(verdict_module.ZOO_PER_LABEL_FALSE_FLAG, "paper", 0.02)
    assert expected_false_alarm_rate("paper", 10) == pytest.approx(1 - 0.98 ** 10)
    assert expected_false_alarm_rate("paper", 43) == pytest.approx(1 - 0.98 ** 43)
    assert expected_false_alarm_rate("paper", 0) == 0.0
    assert expected_false_alarm_rate("paper", 10, threshold=2.0) == pytest.approx(0.1829, 1e-3)
    assert expected_false_alarm_rate("paper", 10, threshold=3.0) is None  # not measured there
    assert expected_false_alarm_rate("confirmed", 10) is None
    # the result reports it for the model's number of labels
    out = apply_confirmation(first_run(CLEAN), {}, ScanConfig(verdict="paper"), 0.0)
    assert out.confirmation["expected_false_alarm_rate"] == pytest.approx(1 - 0.98 ** 10)
    for rule, n in [("strict", 10), ("paper", -1), ("paper", 2.5), ("paper", True)]:
        with pytest.raises(InputError):
            expected_false_alarm_rate(rule, n)


# -- JSON -----------------------------------------------------------------------------------------
def graded_result() -> ScanResult:
    norms = list(CLEAN)
    norms[3] = 18.0
    return graded(first_run(norms), {3: [20.1, 19.9]})


def test_the_json_round_trip_keeps_the_verdict(tmp_path: Path) -> None:
    result = graded_result()
    doc = json.loads(result.to_json())
    assert doc["verdict"] == "suspicious" and doc["suspicious_labels"] == [3]
    back = ScanResult.from_json(result.to_json(tmp_path / "report.json"))
    assert back.verdict == "suspicious" and back.suspicious_labels == [3]
    assert back.confirmation == doc["confirmation"]
    assert back.confirmation["runs"]["3"] == [20.1, 19.9]
    jsonschema = pytest.importorskip("jsonschema")
    from neuralcleanse.io.json_schemas import load_schema

    validator = jsonschema.Draft202012Validator(load_schema("report"))
    assert [e.message for e in validator.iter_errors(doc)] == []
    doc["verdict"] = "clean"  # contradicts suspicious_labels
    assert list(validator.iter_errors(doc))


def older_report() -> dict[str, Any]:
    doc = graded_result().to_dict()
    for key in ("verdict", "suspicious_labels", "confirmation", "further_triggers"):
        del doc[key]
    return doc


def test_older_reports_get_a_derived_verdict() -> None:
    doc = older_report()
    assert ScanResult.from_dict(doc).verdict == "clean"
    doc["flagged_labels"] = [3]
    back = ScanResult.from_dict(doc)
    assert back.verdict == "backdoor" and back.suspicious_labels == [] and back.confirmation == {}


@pytest.mark.parametrize("change", [
    {"verdict": "backdoor"},  # nothing flagged
    {"verdict": "clean"},  # a label is suspicious
    {"verdict": "unsure"},
    {"suspicious_labels": [3, 3]},
    {"suspicious_labels": [12]},
    {"suspicious_labels": "3"},
    {"confirmation": []},
    {"confirmation": {"rule": "strict"}},
    {"confirmation": {"rule": "paper", "expected_false_alarm_rate": 1.5}},
    {"confirmation": {"rule": "confirmed", "runs": {"3": ["x"]}}},
    {"confirmation": {"rule": "confirmed", "runs": {3: [20.1]}}},  # not a JSON key
    {"confirmation": {"rule": "confirmed", "candidates": [42]}},
])
def test_inconsistent_verdict_fields_are_refused(change: dict[str, Any]) -> None:
    doc = graded_result().to_dict()
    doc.update(change)
    with pytest.raises(InputError) as info:
        ScanResult.from_dict(doc)
    assert "\n" not in str(info.value)


def test_a_flagged_label_cannot_also_be_suspicious() -> None:
    doc = older_report()
    doc.update(flagged_labels=[3], verdict="backdoor", suspicious_labels=[3])
    with pytest.raises(InputError, match="suspicious_labels"):
        ScanResult.from_dict(doc)


def test_a_flagged_trigger_must_also_be_much_smaller_than_the_median() -> None:
    # label 4's index crosses 2 (the other norms lie close together) but its trigger is 0.9
    # of the median; label 7's is 0.3 of it
    norms = list(CLEAN)
    norms[4], norms[7] = 18.0, 6.0
    median = float(np.median(norms))
    assert index_of(norms, 18.0) > 2 and 18.0 / median > 0.7 and 6.0 / median <= 0.7
    stable = {4: [18.0, 18.0], 7: [6.0, 6.0]}
    out = graded(first_run(norms), stable)
    assert out.verdict == "backdoor" and out.flagged_labels == [7]
    assert out.suspicious_labels == [4]
    assert out.confirmation["max_norm_ratio"] == ScanConfig().max_norm_ratio == 0.7
    off = ScanConfig(progress=False, max_norm_ratio=1.0)
    assert graded(first_run(norms, cfg=off), stable, cfg=off).flagged_labels == [7, 4]
    # without label 7, the natural-looking small trigger alone gives "suspicious", not "backdoor"
    norms[7] = CLEAN[7]
    alone = graded(first_run(norms), {4: [18.0, 18.0]})
    assert alone.verdict == "suspicious" and alone.flagged_labels == []
    assert alone.suspicious_labels == [4] and not alone.is_backdoored
    # the paper rule is the published one: the ratio does not apply
    paper = ScanConfig(progress=False, verdict="paper")
    assert apply_confirmation(first_run(norms, cfg=paper), {}, paper, 0.0).flagged_labels == [4]


# -- small triggers where the norms spread widely ------------------------------------------------
#: Ten labels of a model whose natural norms spread widely (like the zoo's small ResNets): the
#: true target, label 0, needs a fifth of the median's norm, yet its anomaly index stays below 2.
SPREAD = [4.1, 12.9, 15.2, 20.8, 22.3, 25.5, 30.0, 34.0, 40.0, 45.0]


def test_a_trigger_far_below_the_median_is_flagged_where_the_norms_spread_widely() -> None:
    median = float(np.median(SPREAD))
    assert index_of(SPREAD, 4.1) < 2 and 4.1 / median < 0.3 and 12.9 / median > 0.3
    result = first_run(SPREAD)
    assert result.flagged_labels == []  # the outlier test alone misses it
    cfg = ScanConfig(progress=False)
    assert cfg.small_norm_ratio == 0.3 and plan_confirmation(result, cfg)[0] == 0
    out = graded(result, {0: [4.4, 3.9]})
    assert out.verdict == "backdoor" and out.flagged_labels == [0] and out.is_backdoored
    assert out.labels[0].norm == 4.1 and out.anomaly_index[0] < 2
    assert out.confirmation["small_norm_ratio"] == 0.3
    # switched off, the same runs give no flag; the paper rule never applies it
    off = ScanConfig(progress=False, small_norm_ratio=0.0)
    assert graded(first_run(SPREAD, cfg=off), {0: [4.4, 3.9]}, cfg=off).flagged_labels == []
    paper = ScanConfig(progress=False, verdict="paper")
    assert apply_confirmation(first_run(SPREAD, cfg=paper), {}, paper,
                              0.0).flagged_labels == []


def test_the_medians_decide_a_small_trigger_too() -> None:
    # one lucky run at 0.2 of the median, two at 0.5: the median is not small enough
    out = graded(first_run(SPREAD), {0: [11.5, 12.0]})
    assert out.labels[0].norm == 11.5 and out.flagged_labels == []
    assert out.verdict == "clean"


def test_every_label_that_small_is_searched_again_and_can_be_flagged() -> None:
    # two small triggers (two targets); the second's index is far under the margin
    norms = list(SPREAD)
    norms[1] = 7.0
    first = first_run(norms)
    assert index_of(norms, 7.0) < 2 - ScanConfig().confirm_margin
    assert plan_confirmation(first, ScanConfig(progress=False))[:2] == [0, 1]
    assert confirmation_candidates(norms, first.anomaly_index, list(range(10)), 2.0, 0.5,
                                   small_norm_ratio=0.0) == [0]
    out = graded(first, {0: [4.0, 4.2], 1: [7.2, 6.9]})
    assert out.flagged_labels == [0, 1] and out.verdict == "backdoor"


def test_restarts_flag_a_small_trigger_on_its_median() -> None:
    seeds = [0, 1, 2]
    runs = [[trigger(t, n * f) for t, n in enumerate(SPREAD)] for f in (1.0, 0.95, 1.05)]
    merged, details = combine_restarts(runs, seeds, 2.0)
    result = ScanResult.from_labels(merged, nb_classes=10, anomaly_threshold=2.0, config={},
                                    restarts=details)
    assert result.flagged_labels == []
    out = apply_confirmation(result, {}, ScanConfig(progress=False), 0.0)
    assert out.flagged_labels == [0] and out.verdict == "backdoor"
    assert out.confirmation["small_norm_ratio"] == 0.3
    off = ScanConfig(progress=False, small_norm_ratio=0.0)
    assert apply_confirmation(result, {}, off, 0.0).flagged_labels == []


def test_the_small_norm_ratio_is_validated() -> None:
    assert ScanConfig(small_norm_ratio=0).small_norm_ratio == 0.0
    assert ScanConfig.from_dict(ScanConfig(small_norm_ratio=0.25).to_dict()).small_norm_ratio \
        == 0.25
    for bad in (-0.01, 1.01, float("nan"), True, "x"):
        with pytest.raises(InputError, match="small_norm_ratio") as info:
            ScanConfig(small_norm_ratio=bad)
        assert "\n" not in str(info.value)


def test_small_triggers_are_measured_against_the_reference_labels_median() -> None:
    # labels 7-9 have no clean images and tiny norms: they pull the median of all labels down
    # (19.75), so label 5 at 6.0 is under 0.3 of the reference labels' median (20.5) only
    norms = [20.0, 21.0, 19.5, 22.0, 20.5, 6.0, 21.2, 1.0, 1.0, 1.0]
    index = [0.0] * 10  # no label borderline by its index
    reference = verdict_module.reference_mask(list(range(10)), [7, 8, 9])
    assert 6.0 > 0.3 * float(np.median(norms))
    assert confirmation_candidates(norms, index, list(range(10)), 2.0, 0.5,
                                   small_norm_ratio=0.3) == [7, 8, 9]
    assert confirmation_candidates(norms, index, list(range(10)), 2.0, 0.5,
                                   small_norm_ratio=0.3, reference=reference) == [7, 8, 9, 5]
