"""Which restarts of a label are kept as its further triggers (``other_restarts``)."""

from __future__ import annotations

import numpy as np

from neuralcleanse.core.results import MAX_FURTHER_PER_LABEL, LabelResult
from neuralcleanse.search.restarts import combine_restarts, other_restarts


def result(label: int, norm: float, run: int) -> LabelResult:
    """A label result whose pattern carries its run number, to tell the runs apart."""
    return LabelResult(label=label, mask=np.full((4, 4), norm / 16, np.float32),
                       pattern=np.full((1, 4, 4), run, np.float32), norm=float(norm),
                       attack_success_rate=0.99, converged=True, steps=10, seconds=0.1,
                       final_cost=1e-3)


def runs_of(norms: list[list[float]]) -> list[list[LabelResult]]:
    """One run per row of ``norms`` (labels 0, 1, ... in each)."""
    return [[result(t, n, k) for t, n in enumerate(row)] for k, row in enumerate(norms)]


def run_numbers(results: list[LabelResult], label: int) -> list[int]:
    return [int(r.pattern.flat[0]) for r in results if r.label == label]


def test_the_runs_not_kept_are_returned_for_the_labels_asked_only() -> None:
    # label 0: median 3.0 is run 2's, so runs 0 and 1 are further triggers; label 1: run 0
    runs = runs_of([[5.0, 10.0], [2.0, 12.0], [3.0, 11.0]])
    merged, _ = combine_restarts(runs, [0, 1, 2], 2.0)
    assert [int(r.pattern.flat[0]) for r in merged] == [2, 2]
    further = other_restarts(runs, [0])
    assert run_numbers(further, 0) == [0, 1] and run_numbers(further, 1) == []
    assert [r.norm for r in further] == [5.0, 2.0]  # their own norms, not the median
    assert all(np.isnan(r.anomaly_index) for r in further)
    both = other_restarts(runs, {0, 1})
    assert [r.label for r in both] == [0, 0, 1, 1]
    assert run_numbers(both, 1) == [0, 1]
    assert other_restarts(runs, []) == []


def test_at_most_the_limit_per_label_nearest_the_median_in_seed_order() -> None:
    n = MAX_FURTHER_PER_LABEL + 4
    norms = [[10.0 + k] for k in range(n)]  # median 10 + (n - 1) / 2
    further = other_restarts(runs_of(norms), [0])
    kept = run_numbers(further, 0)
    assert len(kept) == MAX_FURTHER_PER_LABEL
    assert kept == sorted(kept)
    median = np.median([row[0] for row in norms])
    dropped = sorted(set(range(n)) - set(kept) - {int(np.argmin([abs(10.0 + k - median)
                                                                 for k in range(n)]))})
    assert len(dropped) == n - 1 - MAX_FURTHER_PER_LABEL
    farthest_kept = max(abs(10.0 + k - median) for k in kept)
    assert all(abs(10.0 + k - median) >= farthest_kept for k in dropped)


def test_a_single_run_has_no_further_triggers() -> None:
    assert other_restarts(runs_of([[4.0, 9.0]]), [0, 1]) == []
