"""The input filter's threshold: a bound on the clean false-positive rate held with a stated
confidence, and a normal fit to each flagged label's own clean scores."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralcleanse.mitigation.filtering import (
    DEFAULT_FPR_CONFIDENCE,
    images_for_confidence,
    own_label_threshold,
    refusal_threshold,
)


def binomial_below(j: int, n: int, p: float) -> float:
    """P(fewer than j successes in n draws at rate p), summed term by term."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(j))


@pytest.mark.parametrize(("n", "fpr", "confidence"), [
    (40, 0.05, 0.8), (359, 0.05, 0.8), (359, 0.05, 0.5), (1000, 0.05, 0.8),
    (400, 0.01, 0.9), (100, 0.2, 0.95),
])
def test_the_threshold_is_the_lowest_order_statistic_that_holds_the_confidence(
        n: int, fpr: float, confidence: float) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    threshold = refusal_threshold(scores, fpr, confidence)
    j = int((scores >= threshold).sum())  # the threshold is the j-th highest score
    assert threshold in scores
    # above the j-th highest score, more than fpr of new inputs with probability <= 1 - c ...
    assert binomial_below(j, n, fpr) <= 1 - confidence
    # ... and the next lower score would no longer promise it
    assert binomial_below(j + 1, n, fpr) > 1 - confidence
    assert (scores > threshold).sum() == j - 1


def test_new_clean_inputs_are_refused_above_the_target_rarely() -> None:
    """Draw 300 clean scores 2,000 times: the threshold's true false-positive rate (normal
    scores, so it is known exactly) exceeds 5 % in at most a fifth of the draws at the default
    confidence, in about half at 0.5, and the average rate stays below the target."""
    rng = np.random.default_rng(0)
    normal = NormalDist()
    rates: dict[float, list[float]] = {DEFAULT_FPR_CONFIDENCE: [], 0.5: []}
    for _ in range(2000):
        scores = rng.normal(size=300)
        for confidence, seen in rates.items():
            seen.append(1.0 - normal.cdf(refusal_threshold(scores, 0.05, confidence)))
    strict, even = np.array(rates[DEFAULT_FPR_CONFIDENCE]), np.array(rates[0.5])
    assert DEFAULT_FPR_CONFIDENCE == 0.8
    assert (strict > 0.05).mean() <= 0.2
    assert (strict > 0.05).mean() >= 0.05  # the lowest such score, not an overly cautious one
    assert 0.3 <= (even > 0.05).mean() <= 0.5
    assert strict.mean() < even.mean() < 0.05 + 0.002


def test_too_few_scores_for_the_confidence_give_the_highest() -> None:
    assert images_for_confidence(0.05, 0.8) == 32 and images_for_confidence(0.01, 0.9) == 230
    # (1 - 0.05) ** 31 > 0.2: no order statistic of 31 scores promises 5 % at 80 %
    scores = np.arange(31.0)
    assert refusal_threshold(scores, 0.05, 0.8) == 30.0
    assert refusal_threshold(np.arange(32.0), 0.05, 0.8) == 31.0  # (0.95) ** 32 <= 0.2
    assert refusal_threshold(np.array([2.5]), 0.05, 0.8) == 2.5
    assert refusal_threshold(np.arange(100.0), 0.05, 0.8) < 99.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=400),
       st.floats(0.001, 0.5), st.floats(0.05, 0.99))
def test_the_threshold_is_a_score_and_tightens_with_confidence_and_target(
        values: list[float], fpr: float, confidence: float) -> None:
    scores = np.array(values)
    threshold = refusal_threshold(scores, fpr, confidence)
    assert threshold in scores
    assert refusal_threshold(scores[::-1], fpr, confidence) == threshold
    assert refusal_threshold(scores, fpr, min(0.995, confidence + 0.2)) >= threshold
    assert refusal_threshold(scores, fpr / 2, confidence) >= threshold
    if confidence >= 0.5:  # then it refuses fewer of the scores it was taken on than fpr
        assert (scores > threshold).mean() < fpr


def test_the_own_label_threshold_is_a_normal_fit() -> None:
    scores = np.random.default_rng(1).normal(3.0, 2.0, size=20_000)
    threshold = own_label_threshold(scores, 0.05)
    assert threshold == pytest.approx(scores.mean() + 1.6448536 * scores.std(), rel=1e-6)
    assert (scores > threshold).mean() == pytest.approx(0.05, abs=0.005)
    # a few dozen scores (a label's images in a small clean set): the fit moves less from one
    # draw to the next than the empirical 95th percentile, which its top two or three decide
    rng = np.random.default_rng(2)
    draws = [rng.normal(size=36) for _ in range(2000)]
    fitted = np.array([own_label_threshold(d, 0.05) for d in draws])
    empirical = np.array([np.quantile(d, 0.95) for d in draws])
    assert fitted.std() < 0.9 * empirical.std()
    assert abs(fitted.mean() - 1.6448536) < 0.1
    assert own_label_threshold(np.array([1.5]), 0.05) == 1.5
