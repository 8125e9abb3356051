"""Mitigation (filtering, pruning, unlearning) on a small backdoored PyTorch CNN.

The model is trained here on scikit-learn's digits with a planted trigger (a 2x2 white square at
the bottom-right sends any digit to label 3). Most tests mitigate with the *known* trigger, since
they are about the mitigation, not the search; one test runs a short real scan first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import neuralcleanse as nc
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.frontends.api import prepare
from neuralcleanse.io.digits import digits_images
from neuralcleanse.mitigation import (
    filter_inputs,
    prune,
    rank_by_activation_gap,
    select_triggers,
    stamp,
    unlearn,
)
from neuralcleanse.mitigation.filtering import DEFAULT_TOP_FRACTION
from neuralcleanse.mitigation.metrics import predicted_labels
from paths import SHARED_DATA

TARGET = 3
DATA = SHARED_DATA


def plant(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[..., 6:, 6:] = 1.0
    return out


def true_trigger(label: int = TARGET) -> LabelResult:
    mask = np.zeros((8, 8), np.float32)
    mask[6:, 6:] = 1.0
    return LabelResult(label=label, mask=mask, pattern=np.ones((1, 8, 8), np.float32),
                       norm=4.0, attack_success_rate=1.0, converged=True, steps=0, seconds=0.0,
                       final_cost=0.0)


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def real_rates(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Clean accuracy and the planted trigger's attack success rate (other classes only)."""
    others = y != TARGET
    return (float(np.mean(predict(model, x) == y)),
            float(np.mean(predict(model, plant(x[others])) == TARGET)))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def backdoored() -> dict[str, object]:
    """Digits split into training (poisoned 10 %), the user's clean data and a final test set."""
    torch.manual_seed(0)
    x, y = digits_images()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[:1000].copy(), y[:1000].copy()
    poisoned = rng.choice(np.flatnonzero(y_train != TARGET), 100, replace=False)
    x_train[poisoned] = plant(x_train[poisoned])
    y_train[poisoned] = TARGET
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(len(xs), generator=gen)
        for start in range(0, len(xs), 64):
            idx = perm[start:start + 64]
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    out = {"model": model, "x": x[1000:1400], "y": y[1000:1400], "x_test": x[1400:],
           "y_test": y[1400:]}
    acc, asr = real_rates(model, out["x_test"], out["y_test"])  # type: ignore[arg-type]
    assert acc > 0.9 and asr > 0.95, f"the backdoored fixture is not as planned: {acc}, {asr}"
    out["acc"], out["asr"] = acc, asr
    return out


def test_stamp_follows_the_layout() -> None:
    x = np.zeros((2, 3, 4, 5), np.float32)
    mask = np.zeros((4, 5), np.float32)
    mask[1, 2] = 0.5
    pattern = np.full((3, 4, 5), 2.0, np.float32)
    out = stamp(x, mask, pattern, channels_first=True)
    assert out.shape == x.shape
    assert np.all(out[:, :, 1, 2] == 1.0) and np.count_nonzero(out) == 2 * 3
    last = stamp(np.zeros((2, 4, 5, 3), np.float32), mask, pattern.transpose(1, 2, 0), False)
    assert np.all(last[:, 1, 2, :] == 1.0) and np.count_nonzero(last) == 2 * 3


def test_unlearning_removes_the_backdoor_on_a_copy(backdoored: dict) -> None:
    model = backdoored["model"]
    before = state(model)
    result = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()],
                         "unlearning", learning_rate=1e-3, epochs=5)
    # The user's model is untouched; the repaired one is a separate copy in inference mode.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.model is not model and not any(m.training for m in result.model.modules())
    acc, asr = real_rates(result.model, backdoored["x_test"], backdoored["y_test"])
    assert asr < 0.1, asr
    assert acc > backdoored["acc"] - 0.05, (acc, backdoored["acc"])
    m = result.measurements
    assert m.reversed_asr_before[TARGET] > 0.95 and m.reversed_asr_after[TARGET] < 0.1
    assert result.split.source == "split" and result.split.n_fit + result.split.n_test == 400
    assert result.report.n_stamped == pytest.approx(0.2 * result.split.n_fit, abs=1)


def test_unlearning_in_place_changes_the_wrapped_model(backdoored: dict) -> None:
    clf, x, y = prepare(backdoored["model"], backdoored["x"], backdoored["y"])
    work = clf.copy()
    report = unlearn(work, x, y, [true_trigger()], learning_rate=1e-3, epochs=5,
                     x_test=backdoored["x_test"], y_test=backdoored["y_test"])
    assert report.split.source == "given" and report.split.n_test == len(backdoored["x_test"])
    assert report.split.n_fit == len(x)
    assert not np.array_equal(work.predict(x), clf.predict(x))
    _, asr = real_rates(work.model, backdoored["x_test"], backdoored["y_test"])
    assert asr == pytest.approx(report.measurements.reversed_asr_after[TARGET], abs=1e-9)


def test_unlearning_trains_batchnorm_and_dropout_then_returns_inference_mode(
        backdoored: dict) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Dropout(0.5), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    stats = model[1].running_mean.clone()
    result = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()],
                         "unlearning", epochs=1, learning_rate=1e-3)
    assert not any(m.training for m in result.model.modules())
    assert not torch.equal(result.model[1].running_mean, stats)  # updated in training mode
    assert torch.equal(model[1].running_mean, stats) and not model.training
    x = backdoored["x_test"]
    np.testing.assert_array_equal(result.predict(x), result.predict(x))  # dropout is off


def test_pruning_a_conv_layer_removes_the_backdoor_reversibly(backdoored: dict) -> None:
    clf, x, y = prepare(backdoored["model"], backdoored["x"], backdoored["y"])
    work = clf.copy()
    reference = work.predict(backdoored["x_test"])
    report = prune(work, x, y, [true_trigger()], layer="3", x_test=backdoored["x_test"],
                   y_test=backdoored["y_test"])
    assert report.n_neurons == 32  # channels of the second convolution
    assert report.reached_target and report.fraction <= 0.3
    assert report.curve[0].n_pruned == 0 and report.curve[-1].n_pruned == len(
        report.pruned_neurons)
    assert [p.n_pruned for p in report.curve] == sorted({p.n_pruned for p in report.curve})
    assert report.curve[-1].fit_asr <= 0.05 < report.curve[-2].fit_asr
    acc, asr = real_rates(work.model, backdoored["x_test"], backdoored["y_test"])
    assert asr < 0.1 and acc > backdoored["acc"] - 0.1, (acc, asr)
    # Reversible: removing the pruning gives back the exact outputs; the weights never changed.
    work.set_pruned_neurons("3", [])
    np.testing.assert_array_equal(work.predict(backdoored["x_test"]), reference)


def test_neurons_are_ranked_by_their_activation_gap(backdoored: dict) -> None:
    model, x, y = backdoored["model"], backdoored["x"], backdoored["y"]
    clf = prepare(model, x)[0]
    stamped = plant(x[y != TARGET])
    order = rank_by_activation_gap(clf, x, stamped)
    # Independently: the input of the final Linear is the output of the ReLU before it.
    with torch.no_grad():
        hidden = model[:-1]
        gap = (hidden(torch.from_numpy(stamped)).mean(0)
               - hidden(torch.from_numpy(x)).mean(0)).numpy()
    assert sorted(order.tolist()) == list(range(128))
    assert np.all(np.diff(gap[order]) <= 1e-5)
    assert gap[order[0]] > 0.1
    # Pruning follows that order (the known trigger stamps exactly as ``plant``; with test data
    # given, all of ``x`` fits).
    report = prune(clf.copy(), x, y, [true_trigger()], target_asr=0.0, max_fraction=0.05,
                   x_test=backdoored["x_test"], y_test=backdoored["y_test"])
    assert report.pruned_neurons == order[:6].tolist()


def test_pruning_default_layer_and_max_fraction(backdoored: dict) -> None:
    model = backdoored["model"]
    before, hooks = state(model), hook_count(model)
    result = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "pruning")
    assert hook_count(model) == hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = result.report
    assert report.layer == "final_layer_input" and report.n_neurons == 128
    assert report.reached_target and report.measurements.reversed_asr_after[TARGET] < 0.15
    capped = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "pruning",
                         target_asr=0.0, max_fraction=0.05)
    assert not capped.report.reached_target
    assert capped.report.pruned_neurons == report.pruned_neurons[:6]
    assert capped.report.fraction == pytest.approx(6 / 128)


def test_saved_pruned_model_has_the_pruning_in_its_weights(backdoored: dict,
                                                          tmp_path: Path) -> None:
    result = nc.mitigate(backdoored["model"], backdoored["x"], backdoored["y"],
                         [true_trigger()], "pruning", layer="3")
    path = result.save(tmp_path / "pruned.pt")
    fresh = net()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    x = backdoored["x_test"]
    np.testing.assert_allclose(fresh(torch.from_numpy(x)).detach().numpy(), result.predict(x),
                               rtol=1e-5, atol=1e-5)


def test_filtering_refuses_triggered_inputs(backdoored: dict) -> None:
    model = backdoored["model"]
    result = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "filtering")
    filt = result.model
    assert isinstance(filt, nc.InputFilter) and filt.classifier.model is model
    report = result.report
    assert report.detection_rate >= 0.95 and report.false_positive_rate <= 0.1
    assert report.options["score"] == "fisher" and len(report.neurons[TARGET]) == 128
    mean = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "filtering",
                       score="mean").report
    assert len(mean.neurons[TARGET]) == math.ceil(DEFAULT_TOP_FRACTION * 128)  # rounded up
    assert mean.detection_rate >= 0.95 and mean.false_positive_rate <= 0.1
    x_test, y_test = backdoored["x_test"], backdoored["y_test"]
    triggered = plant(x_test[y_test != TARGET])
    assert filt.is_flagged(triggered).mean() >= 0.95
    assert filt.is_flagged(x_test).mean() <= 0.1
    out = filt.predict(x_test)
    flagged = filt.is_flagged(x_test)
    assert np.all(out[flagged] == 0) and np.all(np.any(out[~flagged] != 0, axis=1))
    np.testing.assert_allclose(out[~flagged], model(torch.from_numpy(x_test[~flagged]))
                               .detach().numpy(), rtol=1e-5, atol=1e-6)
    m = result.measurements
    assert m.reversed_asr_after[TARGET] <= 1 - report.detection_rate + 1e-9
    assert m.clean_acc_after >= m.clean_acc_before - report.false_positive_rate - 1e-9
    # Single-channel images without their channel axis are accepted as well.
    np.testing.assert_array_equal(filt.is_flagged(x_test[:, 0]), flagged)


def test_filtering_false_positive_rate_follows_the_target(backdoored: dict) -> None:
    clf, x, y = prepare(backdoored["model"], backdoored["x"], backdoored["y"])
    strict = filter_inputs(clf, x, y, [true_trigger()], target_fpr=0.01, seed=1)
    loose = filter_inputs(clf, x, y, [true_trigger()], target_fpr=0.2, seed=1)
    assert strict.threshold > loose.threshold
    clean = backdoored["x_test"]
    assert strict.is_flagged(clean).mean() < loose.is_flagged(clean).mean()
    # the threshold holds all clean images and the flagged label's own to the target: the
    # tighter of the two follows it, the other stays below
    own = clean[backdoored["y_test"] == TARGET]
    rates = [loose.is_flagged(clean).mean(), loose.is_flagged(own).mean()]
    assert max(rates) <= 0.3 and 0.1 <= max(rates), rates


def test_filtering_confidence_reaches_the_filter_through_mitigate(backdoored: dict) -> None:
    """A higher confidence in the 5 % bound takes a higher threshold; the option is recorded."""
    def fitted(confidence: float) -> nc.InputFilter:
        return nc.mitigate(backdoored["model"], backdoored["x"], backdoored["y"],
                           [true_trigger()], "filtering", seed=1,
                           fpr_confidence=confidence).model
    even, sure = fitted(0.5), fitted(0.99)
    assert even.report.options["fpr_confidence"] == 0.5
    assert sure.report.options["fpr_confidence"] == 0.99
    assert sure.threshold > even.threshold
    clean = backdoored["x_test"]
    assert sure.is_flagged(clean).mean() <= even.is_flagged(clean).mean()


def test_conv_layers_rank_channels_by_name_and_index(backdoored: dict) -> None:
    clf, x, y = prepare(backdoored["model"], backdoored["x"], backdoored["y"])
    names = clf.layer_names()
    by_name = filter_inputs(clf, x, y, [true_trigger()], layer="1", top_fraction=0.25)
    by_index = filter_inputs(clf, x, y, [true_trigger()], layer=names.index("1"),
                             top_fraction=0.25)
    assert by_name.report.n_neurons == 16 and len(by_name.report.neurons[TARGET]) == 4
    assert by_name.report.neurons == by_index.report.neurons
    with pytest.raises(ValueError, match=r"unknown layer 'nope'.*candidates are: 0, 1, 2"):
        nc.mitigate(backdoored["model"], x, y, [true_trigger()], "pruning", layer="nope")


@pytest.mark.parametrize(("method", "options", "message"), [
    ("filtering", {"top_fraction": 0}, "top_fraction"),
    ("filtering", {"target_fpr": 1.0}, "target_fpr"),
    ("filtering", {"fpr_confidence": 1.0}, "fpr_confidence"),
    ("filtering", {"fpr_confidence": 0}, "fpr_confidence"),
    ("pruning", {"max_fraction": 1.5}, "max_fraction"),
    ("pruning", {"target_asr": -0.1}, "target_asr"),
    ("pruning", {"step_fraction": "a"}, "step_fraction"),
    ("unlearning", {"epochs": 0}, "epochs"),
    ("unlearning", {"learning_rate": -1.0}, "learning_rate"),
    ("unlearning", {"stamped_fraction": 0.0}, "stamped_fraction"),
    ("unlearning", {"batch_size": 2.5}, "batch_size"),
    ("unlearning", {"test_fraction": 1.0}, "test_fraction"),
    ("unlearning", {"seed": -1}, "seed"),
    ("unlearning", {"seed": 2**64}, "seed"),
    ("unlearning", {"epochs": 10**9}, "epochs"),
    ("unlearning", {"learning_rate": float("inf")}, "learning_rate"),
    ("unlearning", {"learning_rate": 1e6}, "learning_rate"),
    ("unlearning", {"max_fraction": 0.2}, "unknown option.*max_fraction.*accepts: epochs"),
    ("unlearning", {"layer": "1"}, "layer is not used by unlearning"),
    ("erasing", {}, "method must be one of 'filtering', 'pruning', 'unlearning'"),
])
def test_bad_options_raise(backdoored: dict, method: str, options: dict, message: str) -> None:
    before = state(backdoored["model"])
    with pytest.raises(ValueError, match=message):
        nc.mitigate(backdoored["model"], backdoored["x"], backdoored["y"], [true_trigger()],
                    method, **options)
    assert all(torch.equal(before[k], v) for k, v in backdoored["model"].state_dict().items())


def test_bad_data_and_triggers_raise(backdoored: dict) -> None:
    model, x, y = backdoored["model"], backdoored["x"], backdoored["y"]
    with pytest.raises(ValueError, match="x_test and y_test"):
        nc.mitigate(model, x, y, [true_trigger()], "filtering", x_test=x)
    with pytest.raises(ValueError, match="x has 400 images but y has 399"):
        nc.mitigate(model, x, y[:-1], [true_trigger()], "filtering")
    with pytest.raises(ValueError, match=r"x_test has images of shape \(1, 4, 4\)"):
        nc.mitigate(model, x, y, [true_trigger()], "filtering", x_test=x[:, :, :4, :4],
                    y_test=y)
    wrong = true_trigger()
    wrong.mask = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"trigger mask of label 3 has shape \(4, 4\)"):
        nc.mitigate(model, x, y, [wrong], "pruning")
    with pytest.raises(ValueError, match="trigger label 12 is outside 0..9"):
        nc.mitigate(model, x, y, [true_trigger(12)], "pruning")
    unusable = true_trigger()
    unusable.pattern = np.full_like(unusable.pattern, np.nan)
    for method in ("filtering", "pruning", "unlearning"):
        with pytest.raises(ValueError, match="trigger of label 3 holds NaN or infinite"):
            nc.mitigate(model, x, y, [unusable], method)
    with pytest.raises(TypeError, match="scan_result must be a ScanResult"):
        nc.mitigate(model, x, y, 3, "pruning")


def _scan_result(flagged: list[int]) -> ScanResult:
    labels = [true_trigger(t) for t in range(10)]
    for t, r in enumerate(labels):
        r.norm = 10.0 + t
    result = ScanResult.from_labels(labels, nb_classes=10, anomaly_threshold=2.0, config={})
    result.flagged_labels = flagged
    return result


def test_no_flagged_label_means_nothing_to_mitigate(backdoored: dict) -> None:
    clean_scan = _scan_result([])
    with pytest.raises(ValueError, match="flagged no label, so there is nothing to mitigate"):
        nc.mitigate(backdoored["model"], backdoored["x"], backdoored["y"], clean_scan,
                    "filtering")
    assert [t.label for t in select_triggers(clean_scan, labels=[TARGET])] == [TARGET]
    assert [t.label for t in select_triggers(_scan_result([TARGET, 5]))] == [TARGET, 5]
    partial = ScanResult.from_labels(_scan_result([]).labels[:3], nb_classes=10,
                                     anomaly_threshold=2.0, config={})
    with pytest.raises(ValueError, match=r"labels \[3\] have no reversed trigger in "
                                         r"scan_result \(scanned: \[0, 1, 2\]\)"):
        select_triggers(partial, labels=[TARGET])


@pytest.mark.parametrize("method", ["filtering", "pruning", "unlearning"])
def test_json_round_trip(backdoored: dict, method: str, tmp_path: Path) -> None:
    result = nc.mitigate(backdoored["model"], backdoored["x"], backdoored["y"],
                         _scan_result([TARGET]), method, seed=3)
    path = tmp_path / "mitigation.json"
    result.to_json(path)
    data = json.loads(path.read_text())
    assert data["method"] == method and data["labels"] == [TARGET]
    n_test = int(np.round(0.2 * np.bincount(backdoored["y"])).sum())
    assert data["report"]["split"] == {"source": "split", "n_fit": 400 - n_test,
                                       "n_test": n_test, "test_fraction": 0.2, "seed": 3}
    back = nc.MitigationResult.from_json(path)
    assert back.to_dict() == result.to_dict()
    assert back.clean_acc_before == result.clean_acc_before
    assert back.reversed_asr_after == result.reversed_asr_after
    assert type(back.report) is type(result.report)
    with pytest.raises(ValueError, match="holds no model"):
        back.predict(backdoored["x"])


@pytest.mark.parametrize("method", ["filtering", "pruning", "unlearning"])
def test_accuracy_on_the_flagged_labels_own_images(backdoored: dict, method: str) -> None:
    """Each result reports the accuracy on the target's own held-out images, before and after,
    so that a mitigation which removes the backdoor by removing the class itself shows it."""
    model, x_test, y_test = backdoored["model"], backdoored["x_test"], backdoored["y_test"]
    result = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], method,
                         x_test=x_test, y_test=y_test)
    own = y_test == TARGET
    m = result.measurements
    assert m.label_acc_before[TARGET] == pytest.approx(
        np.mean(predict(model, x_test[own]) == TARGET))
    after = predicted_labels(result.predict(x_test[own]))
    assert m.label_acc_after[TARGET] == pytest.approx(np.mean(after == TARGET))
    assert m.label_acc_before[TARGET] > 0.8
    assert (f"label {TARGET}'s own images: accuracy {m.label_acc_before[TARGET]:.1%} -> "
            f"{m.label_acc_after[TARGET]:.1%}") in result.summary()
    if method == "pruning":
        curve = result.report.curve
        assert curve[0].test_label_acc == m.label_acc_before
        assert curve[-1].test_label_acc == m.label_acc_after
    # Results written before the per-label accuracy existed still load.
    data = result.to_dict()
    for key in ("label_acc_before", "label_acc_after"):
        del data["report"]["measurements"][key]
    old = nc.MitigationResult.from_dict(data).measurements
    assert old.label_acc_before == {} and old.clean_acc_after == m.clean_acc_after


def test_split_is_seeded_and_stratified(backdoored: dict) -> None:
    from neuralcleanse.mitigation.metrics import split_holdout

    x, y = backdoored["x"], backdoored["y"]
    a = split_holdout(x, y, 0.25, seed=5)
    b = split_holdout(x, y, 0.25, seed=5)
    c = split_holdout(x, y, 0.25, seed=6)
    np.testing.assert_array_equal(a[3], b[3])
    assert not np.array_equal(a[2], c[2])
    counts, held = np.bincount(y, minlength=10), np.bincount(a[3], minlength=10)
    np.testing.assert_array_equal(held, np.round(0.25 * counts).astype(int))
    assert a[4].n_fit + a[4].n_test == len(x)


def test_scan_then_mitigate_end_to_end(backdoored: dict) -> None:
    model, x, y = backdoored["model"], backdoored["x"], backdoored["y"]
    result = nc.scan(model, x, y, steps=40, mini_batches=4, progress=False)
    assert result.flagged_labels == [TARGET]
    repaired = nc.mitigate(model, x, y, result, "unlearning", learning_rate=1e-3, epochs=5)
    acc, asr = real_rates(repaired.model, backdoored["x_test"], backdoored["y_test"])
    assert asr < 0.15 and acc > backdoored["acc"] - 0.05, (acc, asr)
    filt = nc.mitigate(model, x, y, result, "filtering").model
    triggered = plant(backdoored["x_test"][backdoored["y_test"] != TARGET])
    assert filt.is_flagged(triggered).mean() >= 0.9


@pytest.fixture(scope="module")
def badnet() -> dict[str, object]:
    if not (DATA / "badnet-MNIST.pth").is_file() or not (DATA / "mnist.npz").is_file():
        pytest.skip(f"badnet-MNIST.pth / mnist.npz not found in {DATA} (shared data absent)")
    from neuralcleanse.backends.torch.architectures import MnistBadNet

    model = MnistBadNet()
    model.load_state_dict(torch.load(DATA / "badnet-MNIST.pth", map_location="cpu",
                                     weights_only=True))
    model.eval()
    with np.load(DATA / "mnist.npz") as data:
        return {"model": model, "x": data["x_train"][:2000], "y": data["y_train"][:2000],
                "x_test": data["x_test"][:1000], "y_test": data["y_test"][:1000]}


def _badnet_trigger() -> LabelResult:
    mask = np.zeros((28, 28), np.float32)
    mask[23:28, 23:28] = 1.0
    return LabelResult(label=1, mask=mask, pattern=np.full((1, 28, 28), 255.0, np.float32),
                       norm=25.0, attack_success_rate=1.0, converged=True, steps=0,
                       seconds=0.0, final_cost=0.0)


def test_third_party_badnet_filtering_and_unlearning(badnet: dict) -> None:
    from neuralcleanse.backends.torch.architectures import MNIST_BADNET_PREPROCESSING

    kwargs = dict(x_test=badnet["x_test"], y_test=badnet["y_test"], output="probabilities",
                  preprocessing=MNIST_BADNET_PREPROCESSING)
    filt = nc.mitigate(badnet["model"], badnet["x"], badnet["y"], [_badnet_trigger()],
                       "filtering", **kwargs)
    assert filt.report.detection_rate >= 0.95 and filt.report.false_positive_rate <= 0.1
    assert filt.reversed_asr_before[1] > 0.99 and filt.reversed_asr_after[1] < 0.05
    fixed = nc.mitigate(badnet["model"], badnet["x"], badnet["y"], [_badnet_trigger()],
                        "unlearning", epochs=2, learning_rate=2e-4, **kwargs)
    assert fixed.reversed_asr_before[1] > 0.99 and fixed.reversed_asr_after[1] < 0.1
    assert fixed.clean_acc_after > fixed.clean_acc_before - 0.03
