"""The mitigation budget, neuron ranking and filter score chosen from the model zoo (issue 14).

Unlearning counts optimiser updates (``min_updates``), so a small clean set still gets a real
fine-tuning; filtering ranks trigger neurons against the flagged label's own clean images, so it
does not pick the neurons that the label's genuine images excite too (and then refuse them),
and by default weighs the layer's neurons with Fisher's discriminant, its threshold calibrated
on scores of images the weights were not fitted on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.frontends.api import prepare
from neuralcleanse.frontends.cli.cmd_mitigate import mitigation_options
from neuralcleanse.frontends.cli.messages import CliError
from neuralcleanse.frontends.cli.options import Method
from neuralcleanse.mitigation import filter_inputs, unlearn
from neuralcleanse.mitigation.filtering import (
    FISHER_SHRINKAGE,
    fisher_weights,
    own_label_threshold,
    rank_trigger_neurons,
    refusal_threshold,
)
from neuralcleanse.mitigation.unlearning import DEFAULT_BATCH_SIZE, DEFAULT_MIN_UPDATES

TARGET = 1
TRIGGER_PIXEL = (3, 3)


def trigger(label: int = TARGET, pixel: tuple[int, int] = TRIGGER_PIXEL) -> LabelResult:
    mask = np.zeros((4, 4), np.float32)
    mask[pixel] = 1.0
    return LabelResult(label=label, mask=mask, pattern=np.ones((1, 4, 4), np.float32),
                       norm=1.0, attack_success_rate=1.0, converged=True, steps=0, seconds=0.0,
                       final_cost=0.0)


def hand_made() -> nn.Sequential:
    """Three hidden neurons on 4x4 images, two classes.

    Neuron 0 is the target class's own feature (pixel (2, 2)) and also responds to the trigger
    pixel (3, 3); neuron 1 responds to the trigger pixel only; neuron 2 is class 0's feature
    (pixel (1, 1)).
    """
    first = nn.Linear(16, 3)
    last = nn.Linear(3, 2)
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 2 * 4 + 2] = 2.0
        first.weight[0, 3 * 4 + 3] = 1.5
        first.weight[1, 3 * 4 + 3] = 1.0
        first.weight[2, 1 * 4 + 1] = 2.0
        last.weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 0.0]]))
        last.bias.zero_()
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), last).eval()


def hand_made_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Nine in ten images of class 0 (pixel (1, 1) lit), one in ten of the target (2, 2)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 10 == 0).astype(np.int64)
    x = rng.uniform(0.0, 0.1, (n, 1, 4, 4)).astype(np.float32)
    x[y == 0, 0, 1, 1] = 1.0
    x[y == 1, 0, 2, 2] = 1.0
    return x, y


def test_ranking_against_the_target_class_picks_the_trigger_neuron() -> None:
    model = hand_made()
    x, y = hand_made_data(400, 0)
    x_test, y_test = hand_made_data(400, 1)
    clf, x, y = prepare(model, x, y, output="logits", clip_values=(0.0, 1.0))
    one = 0.3  # of three neurons: one kept
    by_both = filter_inputs(clf, x, y, [trigger()], top_fraction=one, ranking="both",
                            x_test=x_test, y_test=y_test)
    by_clean = filter_inputs(clf, x, y, [trigger()], top_fraction=one, ranking="clean",
                             x_test=x_test, y_test=y_test)
    # Against all clean images the shared neuron rises most (the target is a tenth of them);
    # against the target's own images and the unstamped images, only the trigger neuron.
    assert by_clean.neurons[TARGET].tolist() == [0]
    assert by_both.neurons[TARGET].tolist() == [1]
    target_images = x_test[y_test == TARGET]
    stamped = x_test[y_test != TARGET].copy()
    stamped[:, 0, 3, 3] = 1.0
    # Held to 5 % of the target class's own images, the shared neuron misses the trigger;
    # the trigger neuron refuses every triggered input and spares the class.
    assert by_clean.is_flagged(stamped).mean() < 0.5
    assert by_both.is_flagged(stamped).mean() == 1.0
    for filt in (by_both, by_clean):
        assert filt.is_flagged(target_images).mean() <= 0.1
        assert filt.is_flagged(x_test).mean() <= 0.1
    assert by_both.report.options["ranking"] == "both"
    assert by_both.report.detection_rate == 1.0


@pytest.mark.parametrize("ranking", ["clean", "target_z"])
def test_threshold_spares_the_flagged_labels_own_images(ranking: str) -> None:
    """The threshold refuses at most target_fpr of each flagged label's own fitting images."""
    model = hand_made()
    x, y = hand_made_data(400, 0)
    clf, x, y = prepare(model, x, y, output="logits", clip_values=(0.0, 1.0))
    x_test, y_test = hand_made_data(100, 1)
    filt = filter_inputs(clf, x, y, [trigger()], score="mean", top_fraction=0.3,
                         ranking=ranking, target_fpr=0.05, x_test=x_test, y_test=y_test)
    own = filt.is_flagged(x[y == TARGET]).mean()
    overall = filt.is_flagged(x).mean()
    assert own <= 0.05 and overall <= 0.05
    # the threshold is the larger of the two: the bound on all clean images at 80 %
    # confidence, the normal fit on the label's own
    scores = filt.scores(x)
    everyone = refusal_threshold(scores, 0.05, 0.8)
    own_fit = own_label_threshold(scores[y == TARGET], 0.05)
    assert filt.threshold == pytest.approx(max(everyone, own_fit))
    assert filt.report.options["fpr_confidence"] == 0.8
    if ranking == "clean":  # the target class's own neuron: its images set the threshold
        assert filt.threshold == pytest.approx(own_fit)
        assert filt.threshold > everyone


def test_rank_trigger_neurons_standardises_and_falls_back() -> None:
    clean = np.array([[0.0, 0.0], [2.0, 0.2], [4.0, 0.4]])
    y = np.array([0, 0, 1])
    stamped = np.array([[5.0, 1.2]])

    def order(ranking: str, labels: np.ndarray = y, label: int = 1) -> list[int]:
        return rank_trigger_neurons(stamped, clean, labels, label, ranking).tolist()

    # rise over all clean: 3.0 vs 1.0; divided by the clean spread (1.63, 0.163): 1.8 vs 4.9
    assert order("clean") == [0, 1]
    assert order("target_z") == [1, 0]
    # over the label's own image: 1.0 vs 0.8; over the stamped images unstamped: 4.0 vs 1.1
    assert order("target") == [0, 1]
    assert order("both") == [0, 1]
    shifted = clean + [[4.5, 0.0], [3.5, 0.0], [0.0, 0.0]]
    # the same images unstamped: rises 0.0 and 1.1, so "both" puts neuron 1 first
    assert rank_trigger_neurons(stamped, shifted, y, 1, "both").tolist() == [1, 0]
    assert rank_trigger_neurons(stamped, shifted, y, 1, "target").tolist() == [0, 1]
    # without clean images of the label, every ranking but "target_z" is the "clean" one
    for ranking in ("target", "both"):
        assert order(ranking, label=2) == order("clean", label=2)


def count_training_passes(model: nn.Module) -> list[int]:
    """A counter of forward passes in training mode (one per optimiser update)."""
    calls = [0]

    def hook(module: nn.Module, args: object, output: object) -> None:
        if module.training:
            calls[0] += 1

    model.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("epochs, min_updates, expected_epochs", [
    (1, 50, 25),  # 40 images, batch 32: 2 updates an epoch, so 25 epochs for 50 updates
    (1, 51, 26),  # rounded up
    (30, 50, 30),  # enough epochs already
    (2, 0, 2),  # the budget in epochs alone
])
def test_unlearning_runs_at_least_min_updates(epochs: int, min_updates: int,
                                              expected_epochs: int) -> None:
    model = hand_made()
    x, y = hand_made_data(50, 0)
    calls = count_training_passes(model)
    clf, x, y = prepare(model, x, y, output="logits", clip_values=(0.0, 1.0))
    x_test, y_test = hand_made_data(20, 1)
    report = unlearn(clf, x[:40], y[:40], [trigger()], epochs=epochs, min_updates=min_updates,
                     learning_rate=1e-3, x_test=x_test, y_test=y_test)
    per_epoch = math.ceil(40 / DEFAULT_BATCH_SIZE)
    assert report.epochs == expected_epochs
    assert report.updates == expected_epochs * per_epoch == calls[0]
    assert report.updates >= min_updates
    assert report.options["epochs_requested"] == epochs
    assert report.options["min_updates"] == min_updates
    back = type(report).from_dict(report.to_dict())
    assert back == report


def test_default_update_budget_is_counted_in_updates() -> None:
    model = hand_made()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = count_training_passes(model)  # the copy the mitigation trains keeps the hook
    x, y = hand_made_data(40, 0)
    x_test, y_test = hand_made_data(20, 1)
    result = nc.mitigate(model, x, y, [trigger()], "unlearning", x_test=x_test, y_test=y_test,
                         output="logits", clip_values=(0.0, 1.0))
    assert DEFAULT_MIN_UPDATES >= 200
    # 40 images are 2 updates an epoch: the default epochs alone would give 10
    assert result.report.updates == calls[0] >= DEFAULT_MIN_UPDATES
    assert result.report.epochs == math.ceil(DEFAULT_MIN_UPDATES / 2)
    # the repaired copy was trained, the user's model not
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())


@pytest.mark.parametrize("method, options, message", [
    ("unlearning", {"min_updates": -1}, "min_updates must be an integer"),
    ("unlearning", {"min_updates": 2.5}, "min_updates must be an integer"),
    ("filtering", {"ranking": "best"}, "ranking must be one of 'target_z', .*'clean' .got"),
    ("filtering", {"min_updates": 10}, "unknown option.*min_updates.*accepts:.*ranking"),
    ("filtering", {"score": "lda"}, "score must be one of 'fisher', 'mean' .got 'lda'"),
    ("filtering", {"score": "mean", "max_neurons": 0}, "max_neurons must be an integer"),
])
def test_new_options_are_checked(method: str, options: dict, message: str) -> None:
    x, y = hand_made_data(40, 0)
    with pytest.raises(InputError, match=message):
        nc.mitigate(hand_made(), x, y, [trigger()], method, output="logits",
                    clip_values=(0.0, 1.0), **options)


@pytest.mark.parametrize("name, method, good, bad, message", [
    ("min_updates", Method.unlearning, 0, -1, "--min-updates must be an integer in"),
    ("ranking", Method.filtering, "clean", "Target", "--ranking must be one of 'target_z'"),
    ("max_neurons", Method.filtering, 16, 0, "--max-neurons must be an integer in"),
    ("score", Method.filtering, "mean", "Fisher", "--score must be one of 'fisher', 'mean'"),
])
def test_cli_flags_of_the_new_options(name: str, method: Method, good: object, bad: object,
                                      message: str) -> None:
    assert mitigation_options(method, None, {name: good}) == {name: good}
    with pytest.raises(CliError, match=message):
        mitigation_options(method, None, {name: bad})
    other = Method.pruning
    with pytest.raises(CliError, match=f"--{name.replace('_', '-')} applies to --method "
                                       f"{method.value}, not pruning"):
        mitigation_options(other, None, {name: good})


def test_max_neurons_caps_the_trigger_neurons() -> None:
    model = hand_made()
    x, y = hand_made_data(200, 0)
    clf, x, y = prepare(model, x, y, output="logits", clip_values=(0.0, 1.0))
    x_test, y_test = hand_made_data(50, 1)
    common = dict(score="mean", top_fraction=1.0, ranking="both", x_test=x_test,
                  y_test=y_test)
    assert len(filter_inputs(clf, x, y, [trigger()], max_neurons=None, **common)
               .neurons[TARGET]) == 3
    capped = filter_inputs(clf, x, y, [trigger()], max_neurons=1, **common)
    assert capped.neurons[TARGET].tolist() == [1]  # the best-ranked one
    assert capped.report.options["max_neurons"] == 1
    with pytest.raises(InputError, match="max_neurons must be an integer"):
        filter_inputs(clf, x, y, [trigger()], max_neurons=0, **common)


def test_fisher_weights_follow_the_shrunk_covariance() -> None:
    """Quiet neurons count more than noisy ones that rise as much under the trigger."""
    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, [1.0, 10.0, 3.0], (2000, 3))
    own = clean[:200]
    stamped = own + np.array([1.0, 1.0, 0.0])
    w = fisher_weights(clean, own, stamped)
    cov = np.cov(clean, rowvar=False)
    shrunk = (1 - FISHER_SHRINKAGE) * cov + FISHER_SHRINKAGE * np.trace(cov) / 3 * np.eye(3)
    np.testing.assert_allclose(w, np.linalg.solve(shrunk, [1.0, 1.0, 0.0]), rtol=1e-12)
    assert w[0] > 5 * w[1] > 0
    # no own images: the rise is taken over all clean images; no spread: no weight at all
    np.testing.assert_allclose(fisher_weights(clean, clean[:0], clean + 1.0),
                               np.linalg.solve(shrunk, [1.0, 1.0, 1.0]), rtol=1e-9)
    assert not fisher_weights(np.ones((5, 3)), np.ones((1, 3)), np.ones((2, 3))).any()


def test_fisher_threshold_holds_on_unseen_clean_images() -> None:
    """64 watched neurons and 150 clean images: weights fitted on the images that set the
    threshold would refuse over twice the target of new clean images; out of fold they do not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()  # watches the 64 pixels
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n))

    mask = np.zeros((8, 8), np.float32)
    mask[6:, 6:] = 1.0
    corner = LabelResult(label=3, mask=mask, pattern=np.ones((1, 8, 8), np.float32), norm=4.0,
                         attack_success_rate=1.0, converged=True, steps=0, seconds=0.0,
                         final_cost=0.0)
    x, y = images(150)
    x_new, y_new = images(4000)
    clf, x, y = prepare(model, x, y, output="logits", clip_values=(0.0, 1.0))
    filt = filter_inputs(clf, x, y, [corner], x_test=x_new[:200], y_test=y_new[:200])
    assert filt.report.options["score"] == "fisher"
    assert filt.report.options["calibration_folds"] == 10
    assert len(filt.neurons[3]) == 64
    new_scores = filt.scores(x_new)
    assert (new_scores > filt.threshold).mean() <= 0.05  # held with 80 % confidence
    fitted = filt._scores_of_activations(clf.neuron_activations(x))
    in_sample = max(np.quantile(fitted, 0.95), np.quantile(fitted[y == 3], 0.95))
    assert (new_scores > in_sample).mean() >= 0.1
    stamped = x_new[y_new != 3].copy()
    stamped[:, 0, 6:, 6:] = 1.0
    assert filt.is_flagged(stamped).mean() >= 0.9  # 4 pixels raised on 64 noisy ones
    # too few images for five folds of five: calibrated on the fitted scores; and too few to
    # hold 5 % with 80 % confidence (32 needed), which the user is told
    with pytest.warns(UserWarning, match=r"24 clean fitting images are too few to hold "
                      r"target_fpr=0.05 with fpr_confidence=0.8 \(32 needed\)"):
        small = filter_inputs(clf, x[:24], y[:24], [corner], x_test=x_new[:50],
                              y_test=y_new[:50])
    assert small.report.options["calibration_folds"] == 0
    assert small.threshold == pytest.approx(float(small._scores_of_activations(
        clf.neuron_activations(x[:24])).max()))
    # 40 images: eight folds of five
    fewer = filter_inputs(clf, x[:40], y[:40], [corner], x_test=x_new[:50], y_test=y_new[:50])
    assert fewer.report.options["calibration_folds"] == 8
