"""The TensorFlow backend (Keras 3 on TensorFlow, tf_keras) behind the backend interface."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")
torch = pytest.importorskip("torch")

import estimator_models as em  # noqa: E402
from neuralcleanse import ScanConfig, scan  # noqa: E402
from neuralcleanse.backends import wrap_model  # noqa: E402
from neuralcleanse.backends.base import Classifier  # noqa: E402
from neuralcleanse.backends.tensorflow.classifier import KerasClassifier  # noqa: E402
from neuralcleanse.backends.tensorflow.differentiable import (  # noqa: E402
    KerasDifferentiableClassifier,
)
from neuralcleanse.backends.torch.classifier import TorchClassifier  # noqa: E402
from neuralcleanse.core.errors import InputError  # noqa: E402
from neuralcleanse.search.batch_plan import BatchPlan  # noqa: E402
from neuralcleanse.search.reverse import initial_trigger  # noqa: E402


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return em.digits()


def keras_clf(model=None, **options) -> KerasClassifier:
    options.setdefault("clip_values", (0.0, 1.0))
    return KerasClassifier(em.backdoored_keras() if model is None else model, **options)


# -- wrapping and validation ----------------------------------------------------------------
@pytest.mark.parametrize("flavour", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_wrap_model_dispatches_keras_models(flavour, data):
    model = em.backdoored_keras(flavour)
    clf = wrap_model(model, clip_values=(0.0, 1.0))
    assert isinstance(clf, KerasClassifier) and clf.framework == "tensorflow"
    assert clf.input_shape == (8, 8, 1) and clf.nb_classes == 10
    assert clf.output == "logits" and clf.channels_first is False
    assert clf.image_shape == (8, 8)
    np.testing.assert_allclose(clf.predict(data["x_test"]),
                               np.asarray(model(data["x_test"], training=False)), atol=1e-5)


def test_unsupported_models_get_a_type_error_naming_what_is_supported(monkeypatch):
    with pytest.raises(TypeError, match="TensorFlow backend"):
        wrap_model(object())
    with pytest.raises(TypeError, match="expected a Keras model"):
        KerasClassifier(torch.nn.Linear(2, 2))
    model = em.backdoored_keras()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(TypeError, match="'jax' backend.*Keras 3 models on the TensorFlow"):
        KerasClassifier(model)


def test_output_kind_is_read_from_the_final_activation():
    assert keras_clf(em.backdoored_keras(softmax=True)).output == "probabilities"
    assert keras_clf(em.backdoored_keras()).output == "logits"
    layers = keras.layers
    separate = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(10),
                                 layers.Activation("softmax")])
    assert keras_clf(separate).output == "probabilities"
    assert keras_clf(separate, output="logits").output == "logits"
    with pytest.raises(ValueError, match="output must be"):
        keras_clf(separate, output="scores")


class Subclassed(keras.Model):
    """A model without a symbolic graph: no declared input shape, no layer outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = keras.layers.Flatten()
        self.dense = keras.layers.Dense(10)

    def call(self, x, training=False):
        return keras.ops.softmax(self.dense(self.flat(x)))


def test_subclassed_models_need_an_input_shape_and_are_probed(data):
    model = Subclassed()
    with pytest.raises(ValueError, match="input_shape is required"):
        KerasClassifier(model)
    clf = KerasClassifier(model, (8, 8, 1), clip_values=(0.0, 1.0))
    assert clf.output == "probabilities" and clf.nb_classes == 10
    result = scan(clf, data["x_val"], data["y_val"], config=ScanConfig.art_defaults(
        steps=2, progress=False))
    assert len(result.labels) == 10
    with pytest.raises(ValueError, match="functional Keras model"):
        clf.neuron_activations(data["x_val"][:4])


def test_input_shape_must_match_the_model():
    with pytest.raises(ValueError, match="does not match"):
        keras_clf(input_shape=(1, 8, 8))
    assert keras_clf(input_shape=(8, 8, 1)).input_shape == (8, 8, 1)


def multi_io_model():
    """Inputs ``[aux (3,), image]``; outputs ``[aux head (2,), class probabilities (10,)]``."""
    layers = keras.layers
    image = keras.Input((8, 8, 1), name="image")
    aux = keras.Input((3,), name="aux")
    flat = layers.Flatten()(image)
    scores = layers.Dense(10, activation="softmax", name="scores")(layers.Dense(16)(flat))
    other = layers.Dense(2, name="other")(layers.Concatenate()([flat, aux]))
    return keras.Model([aux, image], [other, scores])


def test_input_and_output_layer_select_a_multi_io_model(data):
    model = multi_io_model()
    clf = keras_clf(model, input_layer=1, output_layer=1)
    assert clf.input_shape == (8, 8, 1) and clf.nb_classes == 10
    assert clf.output == "probabilities"
    x = data["x_val"][:16]
    expected = model([np.zeros((16, 3), np.float32), x], training=False)[1]
    np.testing.assert_allclose(clf.predict(x), np.asarray(expected), atol=1e-6)
    result = scan(clf, data["x_val"], data["y_val"], config=ScanConfig.art_defaults(
        steps=2, progress=False))
    assert len(result.labels) == 10
    with pytest.raises(ValueError, match="input_layer=2 is out of range"):
        keras_clf(model, input_layer=2, output_layer=1)
    with pytest.raises(ValueError, match="cannot be computed from input 0"):
        keras_clf(model, input_layer=0, output_layer=1)
    with pytest.raises(TypeError, match="input_layer must be an integer"):
        keras_clf(model, input_layer="image")


# -- the compiled trigger search ------------------------------------------------------------
def test_search_is_traced_once_and_leaves_the_model_as_it_was(data):
    model = em.backdoored_keras()
    model.get_layer("conv1").trainable = False
    weights = [w.copy() for w in model.get_weights()]
    flags = [layer.trainable for layer in model.layers]
    clf = keras_clf(model)
    config = ScanConfig.art_defaults(steps=25, norm=1, patience=2, early_stop_patience=2,
                                     label_batch=4, progress=False)
    result = scan(clf, data["x_val"], data["y_val"], config=config)
    assert len({r.steps for r in result.labels}) > 1  # labels left and joined the stack
    scan(clf, data["x_val"], data["y_val"], config=config)
    assert clf.traces == 1
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert [layer.trainable for layer in model.layers] == flags


def test_bf16_is_refused_for_keras_models_before_any_step(data):
    config = ScanConfig(steps=3, mini_batches=1, precision="bf16", progress=False)
    with pytest.raises(InputError, match=r"precision='bf16' is available for PyTorch models "
                                         r"only.*precision='fp32'") as info:
        scan(keras_clf(), data["x_val"], data["y_val"], config=config)
    assert "\n" not in str(info.value)


def step_inputs(labels: list[int], clf: Classifier) -> tuple[np.ndarray, np.ndarray]:
    inits = [initial_trigger(label, clf, 0) for label in labels]
    return np.stack([m for m, _ in inits]), np.stack([p for _, p in inits])


@pytest.mark.parametrize("norm", [1, 2, math.inf])
def test_a_step_matches_the_pytorch_backend(norm, data):
    """Same network, same initial triggers, same batches: the same Adam steps."""
    k_clf = keras_clf()
    t_clf = TorchClassifier(em.backdoored_torch(), (1, 8, 8))
    config = ScanConfig.art_defaults(norm=norm)
    labels = [2, 7, 9]
    plan = BatchPlan(len(data["x_val"]), 32, 3, seed=0)
    costs = np.array([0.0, 1e-3, 1e-2])
    x_k, y = data["x_val"], data["y_val"]
    with k_clf.trigger_session(x_k, y, config) as ks, \
            t_clf.trigger_session(em.to_channels_first(x_k), y, config) as ts:
        ks.add(np.array(labels), *step_inputs(labels, k_clf))
        ts.add(np.array(labels), *step_inputs(labels, t_clf))
        for step in range(3):
            index = plan.indices(np.full(3, step))
            k_stats, t_stats = ks.step(index, costs), ts.step(index, costs)
            np.testing.assert_allclose(k_stats.attack_success_rate, t_stats.attack_success_rate)
            np.testing.assert_allclose(k_stats.reg, t_stats.reg, rtol=1e-4)
            np.testing.assert_allclose(k_stats.loss, t_stats.loss, rtol=1e-3, atol=1e-4)
        k_mask, k_pattern = ks.triggers(np.arange(3))
        t_mask, t_pattern = ts.triggers(np.arange(3))
    np.testing.assert_allclose(k_mask, t_mask, atol=1e-4)
    np.testing.assert_allclose(k_pattern[..., 0], t_pattern[:, 0], atol=1e-4)


def test_tf_keras_and_keras3_take_the_same_step(data):
    config = ScanConfig.art_defaults(norm=1)
    clfs = [keras_clf(em.backdoored_keras(flavour)) for flavour in (keras, tf_keras)]
    index = BatchPlan(len(data["x_val"]), 32, 2, seed=0).indices(np.zeros(2, dtype=np.int64))
    stats = []
    for clf in clfs:
        with clf.trigger_session(data["x_val"], data["y_val"], config) as session:
            session.add(np.array([1, 7]), *step_inputs([1, 7], clf))
            stats.append(session.step(index, np.array([1e-3, 1e-3])))
    np.testing.assert_allclose(stats[0].loss, stats[1].loss, rtol=1e-4)
    np.testing.assert_allclose(stats[0].reg, stats[1].reg, rtol=1e-5)


def rgb_classifier(framework: str) -> Classifier:
    """A random 3-channel network, for the norm of a mask shared by the colour channels."""
    if framework == "keras":
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(3)])
        return KerasClassifier(model, clip_values=(0.0, 1.0))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(64, 3))
    return TorchClassifier(model, (3, 6, 6))


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_mask_norm_is_the_l1_of_one_mask_for_all_channels(framework):
    """ART defect: the per-channel mask's norm divided by a hard-coded 3."""
    clf = rgb_classifier(framework)
    x = np.random.default_rng(0).random((8, *clf.input_shape)).astype(np.float32)
    y = np.arange(8) % 3
    masks, patterns = step_inputs([1], clf)
    expected = float((np.tanh(masks[0]) / (2 - 1e-7) + 0.5).sum())
    with clf.trigger_session(x, y, ScanConfig.art_defaults(norm=1)) as session:
        session.add(np.array([1]), masks, patterns)
        stats = session.step(np.arange(8).reshape(1, 1, 8), np.zeros(1))
        mask, pattern = session.triggers(np.array([0]))
    assert stats.reg[0] == pytest.approx(expected, rel=1e-5)
    assert mask.shape == (1, 6, 6) and pattern.shape == (1, *clf.input_shape)


# -- mitigation primitives ------------------------------------------------------------------
def test_layer_names_and_neuron_activations(data):
    clf = KerasDifferentiableClassifier(em.backdoored_keras(), clip_values=(0.0, 1.0))
    x = data["x_val"][:20]
    assert clf.layer_names() == ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "logits"]
    features = clf.neuron_activations(x)
    assert features.shape == (20, 64)
    np.testing.assert_allclose(features, clf.layer_output(x, "fc1"), atol=1e-6)
    conv = clf.neuron_activations(x, "conv1", batch_size=7)
    np.testing.assert_allclose(conv, clf.layer_output(x, 0).mean(axis=(1, 2)), atol=1e-6)
    with pytest.raises(ValueError, match="unknown layer 'nope'.*conv1"):
        clf.neuron_activations(x, "nope")


def test_pruning_is_reversible_copied_and_saved(data, tmp_path):
    model = em.backdoored_keras()
    original = [w.copy() for w in model.get_weights()]
    clf = keras_clf(model)
    x = data["x_test"]
    base = clf.predict(x)
    features = clf.neuron_activations(x)
    kernel, bias = model.get_layer("logits").get_weights()
    pruned = [0, 5, 9]
    clf.set_pruned_neurons(None, pruned)
    masked = features.copy()
    masked[:, pruned] = 0
    np.testing.assert_allclose(clf.predict(x), masked @ kernel + bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(clf.neuron_activations(x), features, atol=1e-6)
    assert {k: v.tolist() for k, v in clf.pruned_neurons().items()} == {
        Classifier.FINAL_LAYER_INPUT: pruned}
    pruned_preds = clf.predict(x)

    for name in ("pruned", "pruned.h5"):
        path = clf.save(str(tmp_path / name))
        assert path.endswith(".keras" if name == "pruned" else ".h5")
        reloaded = keras.models.load_model(path)
        np.testing.assert_allclose(np.asarray(reloaded(x)), pruned_preds, atol=1e-5)

    twin = clf.copy()
    assert twin.model is not model
    twin.set_pruned_neurons(None, [])
    np.testing.assert_allclose(twin.predict(x), base, atol=1e-6)
    np.testing.assert_allclose(clf.predict(x), pruned_preds, atol=1e-6)

    clf.set_pruned_neurons(None, [])
    for before, after in zip(original, model.get_weights()):
        np.testing.assert_array_equal(before, after)

    clf.set_pruned_neurons("conv2", [1, 2])
    channels = clf.neuron_activations(x, "conv2")
    assert np.all(channels[:, [1, 2]] == 0) and np.all(channels[:, 0] > 0)
    with pytest.raises(ValueError, match="no kernel"):
        clf.set_pruned_neurons("pool1", [0])
    with pytest.raises(ValueError, match=r"neurons must be in \[0, 64\)"):
        clf.set_pruned_neurons(None, [64])


def test_pruning_refuses_an_activation_that_does_not_vanish_at_zero():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5, activation="sigmoid", name="gate"),
                              keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="does not map 0 to 0"):
        keras_clf(model).set_pruned_neurons("gate", [0])


def test_fine_tune_trains_in_place_and_keeps_the_pruning(data):
    keras.utils.set_random_seed(1)
    model = em.keras_cnn(keras)
    clf = keras_clf(model)
    clf.set_pruned_neurons(None, [0, 1])
    before = em.accuracy(clf.predict(data["x_test"]), data["y_test"])
    clf.fine_tune(data["x_train"][:800], data["y_train"][:800], epochs=4, learning_rate=3e-3,
                  batch_size=32, seed=0)
    after = em.accuracy(clf.predict(data["x_test"]), data["y_test"])
    assert before < 0.3 and after > 0.75
    assert np.all(model.get_layer("logits").get_weights()[0][[0, 1]] == 0)


def test_device_option_places_the_computation(data):
    clf = keras_clf(device="/CPU:0")
    other = keras_clf()
    np.testing.assert_allclose(clf.predict(data["x_val"][:8]), other.predict(data["x_val"][:8]),
                               atol=1e-6)
    assert clf.describe()["keras"] == "keras" and clf.describe()["framework"] == "tensorflow"


KERAS_ON_TORCH = """
import numpy as np, keras, torch
from neuralcleanse import ScanConfig, scan
from neuralcleanse.backends import wrap_model
from neuralcleanse.backends.torch.classifier import TorchClassifier
assert keras.backend.backend() == "torch"
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
clf = wrap_model(model, input_shape=(8, 8, 1), channels_first=False, clip_values=(0, 1))
assert isinstance(clf, TorchClassifier), type(clf)
x = np.random.default_rng(0).random((64, 8, 8, 1)).astype(np.float32)
result = scan(model, x, np.arange(64) % 3, channels_first=False,
              config=ScanConfig.art_defaults(steps=2, progress=False))
assert len(result.labels) == 3 and result.model_info["framework"] == "pytorch"
print("ok")
"""


def test_a_keras3_model_on_the_torch_backend_goes_through_the_pytorch_backend():
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", KERAS_ON_TORCH], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
