"""The false-alarm rates reports state come from the committed model-zoo results.

``ZOO_PER_LABEL_FALSE_FLAG`` is a measurement, not a setting: recounting it from the detection
results in ``benchmarks/results`` must give it back, so a re-measured zoo cannot leave the
reports stating an old rate.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from neuralcleanse.core.verdict import RULES, ZOO_PER_LABEL_FALSE_FLAG, ZOO_THRESHOLD

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
#: The two builds of the zoo's two populations that the rates are pooled over.
DETECTION_FILES = ("zoo_detection.json", "zoo2_detection.json",
                   "rebuilt_zoo/zoo_detection.json", "rebuilt_zoo/zoo2_detection.json")


def clean_model_counts(rule: str) -> tuple[int, int, int]:
    """Flagged labels, labels and models over the clean models of every detection file."""
    flagged = labels = models = 0
    for name in DETECTION_FILES:
        data = json.loads((RESULTS / name).read_text())
        assert data["threshold"] == ZOO_THRESHOLD
        for model in data["models"]["fast"]:
            if model["family"] != "clean":
                continue
            assert model["targets"] == []
            flagged += len(model["rules"][rule]["flagged"])
            labels += model["nb_classes"]
            models += 1
    return flagged, labels, models


@pytest.mark.parametrize("rule", RULES)
def test_stated_rate_equals_the_recount(rule: str) -> None:
    flagged, labels, models = clean_model_counts(rule)
    assert models == 160 and labels == 1600
    assert flagged > 0
    assert Fraction(ZOO_PER_LABEL_FALSE_FLAG[rule]).limit_denominator(10_000) == \
        Fraction(flagged, labels)


def test_the_default_rule_flags_fewer_clean_labels_than_the_papers() -> None:
    assert clean_model_counts("confirmed")[0] < clean_model_counts("paper")[0]
