"""Mitigation through the Keras (TensorFlow) backend: the same framework-neutral code as PyTorch.

A small Keras 3 CNN is trained here on scikit-learn's digits (channels last) with a planted
trigger (2x2 white square at the bottom-right -> label 3); the tests mitigate with that known
trigger.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import neuralcleanse as nc  # noqa: E402
from neuralcleanse.core.config import ScanConfig  # noqa: E402
from neuralcleanse.core.results import LabelResult  # noqa: E402
from neuralcleanse.frontends.api import prepare  # noqa: E402
from neuralcleanse.io.digits import digits_images  # noqa: E402
from neuralcleanse.mitigation import prune, unlearn  # noqa: E402

TARGET = 3


def plant(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, 6:, 6:, :] = 1.0
    return out


def true_trigger() -> LabelResult:
    mask = np.zeros((8, 8), np.float32)
    mask[6:, 6:] = 1.0
    return LabelResult(label=TARGET, mask=mask, pattern=np.ones((8, 8, 1), np.float32),
                       norm=4.0, attack_success_rate=1.0, converged=True, steps=0, seconds=0.0,
                       final_cost=0.0)


def labels_of(model: object, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False)).argmax(axis=1)  # type: ignore[operator]


def real_rates(model: object, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    others = y != TARGET
    return (float(np.mean(labels_of(model, x) == y)),
            float(np.mean(labels_of(model, plant(x[others])) == TARGET)))


def weights(model: object) -> list[np.ndarray]:
    return [w.copy() for w in model.get_weights()]  # type: ignore[attr-defined]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def backdoored() -> dict[str, object]:
    keras.utils.set_random_seed(0)
    x, y = digits_images(channels_first=False)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[:1000].copy(), y[:1000].copy()
    poisoned = rng.choice(np.flatnonzero(y_train != TARGET), 100, replace=False)
    x_train[poisoned] = plant(x_train[poisoned])
    y_train[poisoned] = TARGET
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0, shuffle=True)
    out = {"model": model, "x": x[1000:1400], "y": y[1000:1400], "x_test": x[1400:],
           "y_test": y[1400:]}
    acc, asr = real_rates(model, out["x_test"], out["y_test"])  # type: ignore[arg-type]
    assert acc > 0.9 and asr > 0.95, f"the backdoored fixture is not as planned: {acc}, {asr}"
    out["acc"] = acc
    return out


def test_keras_unlearning_on_a_copy(backdoored: dict) -> None:
    model = backdoored["model"]
    before = weights(model)
    result = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()],
                         "unlearning", learning_rate=1e-3, epochs=5)
    assert same(before, weights(model))
    assert result.model is not model
    acc, asr = real_rates(result.model, backdoored["x_test"], backdoored["y_test"])
    assert asr < 0.1 and acc > backdoored["acc"] - 0.05, (acc, asr)
    assert result.reversed_asr_before[TARGET] > 0.95 > 0.1 > result.reversed_asr_after[TARGET]


def test_keras_unlearning_in_two_rounds_searches_the_repaired_copy(backdoored: dict) -> None:
    model = backdoored["model"]
    before = weights(model)
    clf, x, y = prepare(model, backdoored["x"], backdoored["y"])
    assert clf.framework == "tensorflow"
    work = clf.copy()
    report = unlearn(work, x, y, [true_trigger()], learning_rate=1e-3, epochs=6, min_updates=0,
                     rounds=2, search_config=ScanConfig.preset("fast", steps=150),
                     x_test=backdoored["x_test"], y_test=backdoored["y_test"])
    assert same(before, weights(model))
    first, second = report.rounds
    assert (first.epochs, second.epochs) == (3, 3) and report.epochs == 6
    # a trigger into the target was found again on the half-repaired model, and the second
    # round, which stamped it, unlearned it too
    assert second.success_found[TARGET] > 0.5 and second.norms[TARGET] > 0
    assert second.success_after[TARGET] < second.success_found[TARGET] / 2
    acc, asr = real_rates(work.model, backdoored["x_test"], backdoored["y_test"])
    assert asr < 0.1 and acc > backdoored["acc"] - 0.05, (acc, asr)


def test_keras_pruning_is_reversible_and_saved(backdoored: dict, tmp_path: Path) -> None:
    # Pruning a network this small costs clean accuracy (its neurons are not redundant), so
    # only the attack success and the mechanics are checked; the benchmark reports the cost.
    clf, x, y = prepare(backdoored["model"], backdoored["x"], backdoored["y"])
    work = clf.copy()
    reference = work.predict(backdoored["x_test"])
    report = prune(work, x, y, [true_trigger()], x_test=backdoored["x_test"],
                   y_test=backdoored["y_test"])
    assert report.layer == "final_layer_input" and report.n_neurons == 128
    assert report.reached_target and 0 < report.fraction <= 0.3
    acc, asr = real_rates(work.model, backdoored["x_test"], backdoored["y_test"])
    assert asr < 0.1, asr
    assert acc == pytest.approx(report.measurements.clean_acc_after, abs=1e-9)
    path = work.save(str(tmp_path / "pruned.keras"))
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded(backdoored["x_test"])),
                               work.predict(backdoored["x_test"]), rtol=1e-5, atol=1e-5)
    work.set_pruned_neurons(None, [])
    np.testing.assert_array_equal(work.predict(backdoored["x_test"]), reference)
    assert not np.array_equal(reference, reloaded(backdoored["x_test"]))


def test_keras_filtering_leaves_the_model_alone(backdoored: dict) -> None:
    model = backdoored["model"]
    before = weights(model)
    filt = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "filtering",
                       top_fraction=0.1)
    pruned = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "pruning")
    assert same(before, weights(model)) and pruned.report.pruned_neurons
    assert filt.report.detection_rate >= 0.95 and filt.report.false_positive_rate <= 0.1
    triggered = plant(backdoored["x_test"][backdoored["y_test"] != TARGET])
    assert filt.model.is_flagged(triggered).mean() >= 0.95
    out = filt.predict(triggered)
    assert np.mean(~np.any(out != 0, axis=1)) >= 0.95
    by_channel = nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()],
                             "filtering", layer="conv2", top_fraction=0.1)
    assert by_channel.report.n_neurons == 32 and len(by_channel.report.neurons[TARGET]) == 4
    with pytest.raises(ValueError, match="unknown layer 'nope'; candidates are: conv1"):
        nc.mitigate(model, backdoored["x"], backdoored["y"], [true_trigger()], "filtering",
                    layer="nope")
