"""The cost schedule, best-trigger rule and early stop, step by step against a scripted model."""

from contextlib import contextmanager

import numpy as np
import pytest

from neuralcleanse import ScanConfig
from neuralcleanse.backends.base import Classifier, StepStats, TriggerSession
from neuralcleanse.search.reverse import reverse_engineer
from neuralcleanse.search.schedule import MAX_COST, CostSchedule


class ScriptedSession(TriggerSession):
    """Each label succeeds while its cost is below its own limit; the reg shrinks with the cost.

    The mask of a label is filled with the step number, so the kept trigger tells which step
    it came from.
    """

    def __init__(self, limits, log):
        self.limits, self.log = limits, log
        self.targets = np.zeros(0, dtype=int)
        self.step_no = np.zeros(0, dtype=int)

    @property
    def size(self):
        return len(self.targets)

    def add(self, targets, mask_raw, pattern_raw):
        self.targets = np.concatenate([self.targets, targets])
        self.step_no = np.concatenate([self.step_no, np.zeros(len(targets), dtype=int)])

    def remove(self, slots):
        keep = np.setdiff1d(np.arange(self.size), slots)
        self.targets, self.step_no = self.targets[keep], self.step_no[keep]

    def step(self, batch_indices, costs):
        assert batch_indices.shape[1] == self.size
        self.step_no += 1
        asr = np.array([1.0 if c < self.limits[t] else 0.5 for t, c in zip(self.targets, costs)])
        reg = 10.0 / (1.0 + 1e3 * np.asarray(costs))
        for t, c, a in zip(self.targets, costs, asr):
            self.log.setdefault(int(t), []).append((float(c), float(a)))
        return StepStats(attack_success_rate=asr, reg=reg, loss=reg)

    def triggers(self, slots):
        masks = np.stack([np.full((2, 2), float(self.step_no[s])) for s in slots])
        return masks, np.zeros((len(slots), 1, 2, 2))


class ScriptedClassifier(Classifier):
    framework = "scripted"
    input_shape = (1, 2, 2)
    channels_first = True
    clip_values = (0.0, 1.0)
    output = "logits"

    def __init__(self, limits):
        self.limits = limits
        self.nb_classes = len(limits)
        self.log = {}

    def predict(self, x, batch_size=256):
        raise AssertionError("not used")

    def activation_bytes_per_image(self):
        return 1

    @contextmanager
    def trigger_session(self, x, y, config):
        yield ScriptedSession(self.limits, self.log)

    layer_names = neuron_activations = set_pruned_neurons = copy = fine_tune = save = None


def run(limits, **cfg):
    clf = ScriptedClassifier(limits)
    config = ScanConfig(batch_size=2, mini_batches=1, progress=False, **cfg)
    x = np.zeros((4, 1, 2, 2), np.float32)
    return reverse_engineer(clf, x, np.zeros(4, int), config), clf.log


def test_cost_starts_at_zero_then_init_cost_after_patience_successes():
    results, log = run([1.0], patience=3, init_cost=1e-3, steps=8, early_stop=False)
    costs = [c for c, _ in log[0]]
    assert costs[:3] == [0.0, 0.0, 0.0]
    assert costs[3] == pytest.approx(1e-3)
    # then 3 more successes in a row multiply the cost by m = 2
    assert costs[4:6] == [pytest.approx(1e-3)] * 2 and costs[6] == pytest.approx(2e-3)


def test_cost_goes_up_then_down_and_early_stop_fires():
    limit = 3e-3  # success below the limit, failure at or above it
    results, log = run([limit], patience=2, early_stop_patience=4, steps=200)
    costs = np.array([c for c, _ in log[0]])
    asr = np.array([a for _, a in log[0]])
    assert costs.max() >= limit  # went above the limit, so it failed ...
    down = np.flatnonzero(np.diff(costs) < 0)
    assert down.size  # ... and came down by m ** 1.5
    ratio = costs[down[0]] / costs[down[0] + 1]
    assert ratio == pytest.approx(2 ** 1.5)
    assert np.all(asr[down[0] - 1:down[0] + 1] < 0.99)
    r = results[0]
    assert r.converged and r.steps < 200  # stopped early
    # the kept trigger is the one of the step with the smallest reg among successful steps
    reg = 10.0 / (1.0 + 1e3 * costs)
    best_step = int(np.argmin(np.where(asr >= 0.99, reg, np.inf))) + 1
    assert np.all(r.mask == best_step)
    assert r.norm == pytest.approx(4 * best_step)


def test_no_early_stop_without_a_cost_decrease():
    results, log = run([np.inf], patience=2, early_stop_patience=2, steps=30)
    assert results[0].steps == 30  # the cost only ever rose: no early stop
    assert all(a == 1.0 for _, a in log[0])


def test_threshold_never_reached_runs_all_steps_and_reports_last_trigger():
    results, _ = run([-1.0], steps=12)  # every step fails
    r = results[0]
    assert not r.converged and r.steps == 12
    assert np.all(r.mask == 12) and r.attack_success_rate == 0.5
    assert r.final_cost == 0.0


@pytest.mark.parametrize("label_batch", [1, 2, None])
def test_labels_are_independent_whatever_the_stack(label_batch):
    limits = [2e-3, np.inf, -1.0, 5e-3]
    results, log = run(limits, patience=2, early_stop_patience=3, steps=60, label_batch=label_batch)
    alone = [run([lim], patience=2, early_stop_patience=3, steps=60)[0][0] for lim in limits]
    for r, ref in zip(results, alone):
        assert (r.steps, r.converged, r.norm) == (ref.steps, ref.converged, ref.norm)


def test_schedule_keeps_only_successful_improvements():
    s = CostSchedule(2, ScanConfig(patience=5))
    keep, stop = s.update(np.array([0, 1]), np.array([0.995, 0.5]), np.array([5.0, 1.0]))
    assert keep.tolist() == [True, False] and not stop.any()
    keep, _ = s.update(np.array([0, 1]), np.array([1.0, 1.0]), np.array([6.0, 1.0]))
    assert keep.tolist() == [False, True]
    assert s.best_reg.tolist() == [5.0, 1.0]


def test_early_stop_threshold_counts_small_gains_as_none():
    cfg = ScanConfig(patience=1, early_stop_threshold=0.5, early_stop_patience=2)
    s = CostSchedule(1, cfg)
    s.cost_went_up[:] = s.cost_went_down[:] = True
    s.update(np.array([0]), np.array([1.0]), np.array([10.0]))
    _, stop1 = s.update(np.array([0]), np.array([1.0]), np.array([9.0]))  # 9 >= 0.5 * 10
    s.cost_went_up[:] = s.cost_went_down[:] = True
    _, stop2 = s.update(np.array([0]), np.array([1.0]), np.array([8.0]))
    assert not stop1[0] and stop2[0]


def test_cost_of_a_label_that_always_succeeds_stays_finite() -> None:
    """A label reached by every input raises its cost forever; it must stop at MAX_COST."""
    cfg = ScanConfig(patience=1, cost_multiplier=1000.0, steps=10_000, early_stop=False)
    s = CostSchedule(1, cfg)
    costs = []
    for _ in range(200):
        s.update(np.array([0]), np.array([1.0]), np.array([0.5]))
        costs.append(s.cost[0])
    assert all(np.isfinite(costs))
    assert max(costs) == MAX_COST
    assert costs[-1] == MAX_COST
    # once it fails, the cost comes down from the cap as usual
    s.update(np.array([0]), np.array([0.0]), np.array([0.5]))
    assert s.cost[0] == pytest.approx(MAX_COST / 1000.0 ** 1.5)
