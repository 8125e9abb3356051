"""One conformance suite run on every backend (in the spirit of scikit-learn's check_estimator).

Each backend (PyTorch, Keras 3 on TensorFlow, tf_keras) wraps a twin of the same tiny network
(identical weights, each in its framework's own layout), and every test runs the same
assertions on it. Expected values come from a plain NumPy forward pass of the network and from
the trigger-step math as :class:`neuralcleanse.backends.base.TriggerSession` states it, never
from the code under test; the step of a framework is also compared with the PyTorch twin's.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from neuralcleanse import ScanConfig
from neuralcleanse.backends import wrap_model
from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.errors import InputError

H, W, C, FILTERS, HIDDEN, CLASSES = 6, 6, 2, 4, 8, 4
CLIP = (-1.0, 2.0)
PREPROCESSING = (0.5, 2.0)  # (x - 0.5) / 2, applied after stamping
EPS = 1e-7
LR = 0.1
LAYERS = ["conv", "relu1", "pool", "flatten", "hidden", "relu2", "logits"]
BACKENDS = ["torch", "keras", "tf_keras"]


# -- the network, in NumPy (the oracle) --------------------------------------------------------
def make_weights() -> dict[str, np.ndarray]:
    """Seeded weights in Keras' layout: conv kernel (3, 3, C, F), dense kernels (in, out)."""
    rng = np.random.default_rng(7)
    flat = (H // 2) * (W // 2) * FILTERS
    return {
        "conv_k": rng.normal(0, 0.5, (3, 3, C, FILTERS)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, FILTERS).astype(np.float32),
        "hidden_k": rng.normal(0, 0.4, (flat, HIDDEN)).astype(np.float32),
        "hidden_b": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "logits_k": rng.normal(0, 0.8, (HIDDEN, CLASSES)).astype(np.float32),
        "logits_b": rng.normal(0, 0.1, CLASSES).astype(np.float32),
    }


WEIGHTS = make_weights()


def reference(x: np.ndarray, pruned_hidden: list[int] = (), pruned_conv: list[int] = (),
              probabilities: bool = False) -> dict[str, np.ndarray]:
    """Float64 forward pass of raw channels-last images: conv, hidden and output arrays."""
    w = {k: v.astype(np.float64) for k, v in WEIGHTS.items()}
    z = (np.asarray(x, np.float64) - PREPROCESSING[0]) / PREPROCESSING[1]
    n = len(z)
    padded = np.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros((n, H, W, FILTERS)) + w["conv_b"]
    for i in range(3):
        for j in range(3):
            conv += padded[:, i:i + H, j:j + W, :] @ w["conv_k"][i, j]
    conv[..., list(pruned_conv)] = 0.0
    pooled = np.maximum(conv, 0).reshape(n, H // 2, 2, W // 2, 2, FILTERS).max(axis=(2, 4))
    hidden = np.maximum(pooled.reshape(n, -1) @ w["hidden_k"] + w["hidden_b"], 0)
    hidden[:, list(pruned_hidden)] = 0.0
    out = hidden @ w["logits_k"] + w["logits_b"]
    if probabilities:
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return {"conv": conv, "hidden": hidden, "out": out}


def decode(mask_raw: np.ndarray, pattern_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decode of TriggerSession, in float64 (patterns channels last)."""
    lo, hi = CLIP
    mask = np.tanh(np.asarray(mask_raw, np.float64)) / (2 - EPS) + 0.5
    pattern = lo + (np.tanh(np.asarray(pattern_raw, np.float64)) / (2 - EPS) + 0.5) * (hi - lo)
    return mask, pattern


def slot_loss(x: np.ndarray, y: np.ndarray, target: int, mask_raw: np.ndarray,
              pattern_raw: np.ndarray, cost: float, norm: float, probabilities: bool
              ) -> tuple[float, float, float, int, int]:
    """One slot's ``(loss, reg, ce, successes, images of other labels)`` on one mini-batch."""
    mask, pattern = decode(mask_raw, pattern_raw)
    stamped = (1 - mask[..., None]) * x + mask[..., None] * pattern
    out = reference(stamped, probabilities=probabilities)["out"]
    if probabilities:
        log_p = np.log(np.maximum(out, 1e-12))
    else:
        log_p = out - out.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    ce = -log_p[:, target].mean()
    reg = {1: mask.sum(), 2: np.sqrt((mask ** 2).sum())}.get(norm, mask.max())
    other = y != target
    hits = int(((out.argmax(axis=1) == target) & other).sum())
    return ce + cost * reg, reg, ce, hits, int(other.sum())


def slot_gradient(x: np.ndarray, y: np.ndarray, target: int, mask_raw: np.ndarray,
                  pattern_raw: np.ndarray, cost: float, norm: float, probabilities: bool
                  ) -> np.ndarray:
    """Central differences of :func:`slot_loss` over ``[mask_raw, pattern_raw]`` (flat)."""
    theta = np.concatenate([mask_raw.ravel(), pattern_raw.ravel()]).astype(np.float64)
    grad = np.zeros_like(theta)
    step = 1e-6
    for i in range(len(theta)):
        values = []
        for sign in (1, -1):
            moved = theta.copy()
            moved[i] += sign * step
            values.append(slot_loss(x, y, target, moved[:H * W].reshape(H, W),
                                    moved[H * W:].reshape(H, W, C), cost, norm,
                                    probabilities)[0])
        grad[i] = (values[0] - values[1]) / (2 * step)
    return grad


# -- the twins -------------------------------------------------------------------------------
@dataclass
class Twin:
    """One backend's wrap of the network and what the tests need to know about it."""

    name: str
    framework: str
    build: Callable[[bool], Any]
    options: Callable[[bool], dict[str, Any]]
    channels_first: bool
    state: Callable[[Any], Any]
    disturb: Callable[[Any], None]

    def make(self, probabilities: bool = False, model: Any = None) -> Classifier:
        model = self.build(probabilities) if model is None else model
        return wrap_model(model, clip_values=CLIP, preprocessing=PREPROCESSING,
                          **self.options(probabilities))

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Channels-last images (or patterns) in the model's layout."""
        return np.ascontiguousarray(np.moveaxis(x, -1, -3)) if self.channels_first else x

    def from_model(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(x, -3, -1)) if self.channels_first else x


def torch_twin() -> Twin:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def build(probabilities: bool) -> Any:
        layers = OrderedDict(
            conv=nn.Conv2d(C, FILTERS, 3, padding=1), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(), hidden=nn.Linear((H // 2) * (W // 2) * FILTERS, HIDDEN),
            relu2=nn.ReLU(), logits=nn.Linear(HIDDEN, CLASSES))
        if probabilities:
            layers["softmax"] = nn.Softmax(dim=1)
        net = nn.Sequential(layers)
        hidden = WEIGHTS["hidden_k"].reshape(H // 2, W // 2, FILTERS, HIDDEN)
        with torch.no_grad():  # Keras flattens (H, W, C), PyTorch (C, H, W)
            net.conv.weight.copy_(torch.from_numpy(WEIGHTS["conv_k"].transpose(3, 2, 0, 1)))
            net.conv.bias.copy_(torch.from_numpy(WEIGHTS["conv_b"]))
            net.hidden.weight.copy_(torch.from_numpy(
                hidden.transpose(3, 2, 0, 1).reshape(HIDDEN, -1).copy()))
            net.hidden.bias.copy_(torch.from_numpy(WEIGHTS["hidden_b"]))
            net.logits.weight.copy_(torch.from_numpy(WEIGHTS["logits_k"].T.copy()))
            net.logits.bias.copy_(torch.from_numpy(WEIGHTS["logits_b"]))
        return net.eval()

    def state(model: Any) -> Any:
        return ({k: v.detach().clone().numpy() for k, v in model.state_dict().items()},
                [p.requires_grad for p in model.parameters()],
                [m.training for m in model.modules()])

    def disturb(model: Any) -> None:  # a mixed state the session must give back
        model.train()
        model.relu1.eval()
        model.hidden.weight.requires_grad_(False)

    def options(probabilities: bool) -> dict[str, Any]:
        return {"input_shape": (C, H, W),
                "output": "probabilities" if probabilities else "logits"}

    return Twin("torch", "pytorch", build, options, True, state, disturb)


def keras_twin(module_name: str) -> Twin:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip(module_name)

    def build(probabilities: bool) -> Any:
        layers = keras.layers
        stack = [keras.Input((H, W, C)), layers.Conv2D(FILTERS, 3, padding="same", name="conv"),
                 layers.ReLU(name="relu1"), layers.MaxPooling2D(name="pool"),
                 layers.Flatten(name="flatten"), layers.Dense(HIDDEN, name="hidden"),
                 layers.ReLU(name="relu2"), layers.Dense(CLASSES, name="logits")]
        if probabilities:
            stack.append(layers.Softmax(name="softmax"))
        model = keras.Sequential(stack)
        model.set_weights([WEIGHTS[k] for k in ("conv_k", "conv_b", "hidden_k", "hidden_b",
                                                "logits_k", "logits_b")])
        return model

    def state(model: Any) -> Any:
        return [w.copy() for w in model.get_weights()], [la.trainable for la in model.layers]

    def disturb(model: Any) -> None:
        model.get_layer("hidden").trainable = False

    return Twin(module_name, "tensorflow", build, lambda p: {}, False, state, disturb)


def make_twin(name: str) -> Twin:
    return torch_twin() if name == "torch" else keras_twin(name)


@pytest.fixture(params=BACKENDS, scope="module")
def twin(request) -> Twin:
    return make_twin(request.param)


def images(n: int, seed: int = 0) -> np.ndarray:
    """Raw channels-last images in the clip range."""
    return np.random.default_rng(seed).uniform(*CLIP, (n, H, W, C)).astype(np.float32)


def raw_triggers(k: int, seed: int = 1, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(k, H, W)`` masks and channels-last ``(k, H, W, C)`` patterns."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, spread, (k, H, W)).astype(np.float32),
            rng.normal(0, spread, (k, H, W, C)).astype(np.float32))


@contextmanager
def session(twin: Twin, clf: Classifier, x: np.ndarray, y: np.ndarray, norm: float = 1
            ) -> Iterator[Any]:
    config = ScanConfig.art_defaults(norm=norm, learning_rate=LR)
    with clf.trigger_session(twin.to_model(x), y, config) as opened:
        yield opened


def add(twin: Twin, opened: Any, targets: list[int], masks: np.ndarray,
        patterns: np.ndarray) -> None:
    opened.add(np.array(targets), masks, twin.to_model(patterns))


def triggers(twin: Twin, opened: Any, slots: list[int]) -> tuple[np.ndarray, np.ndarray]:
    mask, pattern = opened.triggers(np.array(slots))
    return mask, twin.from_model(pattern)


# -- facts and prediction --------------------------------------------------------------------
@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
def test_facts_and_describe(twin, probabilities):
    clf = twin.make(probabilities)
    assert clf.framework == twin.framework
    assert clf.input_shape == ((C, H, W) if twin.channels_first else (H, W, C))
    assert clf.nb_classes == CLASSES and clf.image_shape == (H, W)
    assert clf.channels_first is twin.channels_first
    assert clf.clip_values == CLIP
    assert clf.output == ("probabilities" if probabilities else "logits")
    facts = clf.describe()
    assert {"framework", "input_shape", "nb_classes", "channels_first", "clip_values", "output",
            "model_class", "preprocessing"} <= set(facts)
    assert facts["input_shape"] == list(clf.input_shape)
    assert facts["nb_classes"] == CLASSES and facts["clip_values"] == list(CLIP)
    assert facts["channels_first"] is twin.channels_first
    assert facts["output"] == clf.output and facts["preprocessing"] == list(PREPROCESSING)
    json.dumps(facts)  # reports write it as JSON
    assert isinstance(clf.activation_bytes_per_image(), int)
    assert clf.activation_bytes_per_image() > 4 * H * W * C


@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
def test_predict_matches_the_network(twin, probabilities):
    clf = twin.make(probabilities)
    x = images(21)
    out = clf.predict(twin.to_model(x), batch_size=8)
    assert out.shape == (21, CLASSES) and out.dtype == np.float32
    expected = reference(x, probabilities=probabilities)["out"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(clf.predict_labels(twin.to_model(x)), expected.argmax(axis=1))
    empty = clf.predict(twin.to_model(x[:0]))
    assert empty.shape == (0, CLASSES) and empty.dtype == np.float32


# -- the trigger session ---------------------------------------------------------------------
def test_add_remove_size_and_triggers(twin):
    clf = twin.make()
    x, y = images(16), np.arange(16) % CLASSES
    masks, patterns = raw_triggers(4)
    with session(twin, clf, x, y) as opened:
        assert opened.size == 0
        add(twin, opened, [0, 1, 2], masks[:3], patterns[:3])
        assert opened.size == 3
        mask, pattern = triggers(twin, opened, [0, 1, 2])
        assert mask.shape == (3, H, W) and pattern.shape == (3, H, W, C)
        want_mask, want_pattern = decode(masks[:3], patterns[:3])
        np.testing.assert_allclose(mask, want_mask, atol=1e-6)
        np.testing.assert_allclose(pattern, want_pattern, atol=1e-5)
        opened.remove(np.array([1]))
        assert opened.size == 2
        mask, pattern = triggers(twin, opened, [0, 1])  # the rest keep their order
        np.testing.assert_allclose(mask, want_mask[[0, 2]], atol=1e-6)
        np.testing.assert_allclose(pattern, want_pattern[[0, 2]], atol=1e-5)
        add(twin, opened, [3], masks[3:], patterns[3:])
        assert opened.size == 3
        np.testing.assert_allclose(triggers(twin, opened, [2])[0], decode(masks[3:], 0)[0],
                                   atol=1e-6)
        opened.remove(np.array([0, 1, 2]))
        assert opened.size == 0


def test_decoded_triggers_stay_in_range(twin):
    clf = twin.make()
    x, y = images(16), np.arange(16) % CLASSES
    masks, patterns = raw_triggers(3, spread=40.0)  # deep in tanh's saturation
    masks[0], patterns[0] = 60.0, -60.0
    with session(twin, clf, x, y) as opened:
        add(twin, opened, [0, 1, 2], masks, patterns)
        for _ in range(2):
            opened.step(np.arange(16).reshape(1, 1, 16).repeat(3, axis=1), np.zeros(3))
            mask, pattern = triggers(twin, opened, [0, 1, 2])
            assert mask.min() >= 0.0 and mask.max() <= 1.0
            assert pattern.min() >= CLIP[0] and pattern.max() <= CLIP[1]
        assert mask[0].min() > 0.999 and pattern[0].max() < CLIP[0] + 1e-3


@pytest.mark.parametrize("norm,probabilities", [(1, False), (2, False), (math.inf, False),
                                                (1, True)], ids=["l1", "l2", "linf", "probs"])
def test_one_step_follows_the_stated_math(twin, norm, probabilities):
    """Loss, reg and success of a one-mini-batch step, and its Adam update (TriggerSession)."""
    clf = twin.make(probabilities)
    x = images(40, seed=3)
    y = reference(x)["out"].argmax(axis=1)  # clean predictions: some stamped images flip
    y[::5] = (y[::5] + 1) % CLASSES
    targets, costs = [0, 2, 3], np.array([0.0, 1e-2, 0.3])
    masks, patterns = raw_triggers(3, seed=4)
    index = np.random.default_rng(5).integers(0, len(x), (1, 3, 12))
    with session(twin, clf, x, y, norm) as opened:
        add(twin, opened, targets, masks, patterns)
        stats = opened.step(index, costs)
        new_mask, new_pattern = opened.triggers(np.arange(3))
    new_theta = np.concatenate([new_mask.reshape(3, -1), twin.from_model(new_pattern)
                                .reshape(3, -1)], axis=1)
    for s, target in enumerate(targets):
        xb, yb = x[index[0, s]], y[index[0, s]]
        loss, reg, _ce, hits, other = slot_loss(xb, yb, target, masks[s], patterns[s],
                                                costs[s], norm, probabilities)
        assert stats.loss[s] == pytest.approx(loss, rel=1e-4, abs=1e-5)
        assert stats.reg[s] == pytest.approx(reg, rel=1e-5)
        assert stats.attack_success_rate[s] == pytest.approx(hits / max(other, 1))
        # Adam's first update: with zero moments and bias correction, lr * g / (|g| + e)
        grad = slot_gradient(xb, yb, target, masks[s], patterns[s], costs[s], norm,
                             probabilities)
        raw = np.concatenate([masks[s].ravel(), patterns[s].ravel()]).astype(np.float64)
        moved = np.concatenate([np.tanh(raw[:H * W] - LR * np.sign(grad[:H * W])),
                                np.tanh(raw[H * W:] - LR * np.sign(grad[H * W:]))])
        clear = np.abs(grad) > 1e-3 * np.abs(grad).max()
        lo, hi = CLIP
        want = np.concatenate([moved[:H * W] / (2 - EPS) + 0.5,
                               lo + (moved[H * W:] / (2 - EPS) + 0.5) * (hi - lo)])
        np.testing.assert_allclose(new_theta[s][clear], want[clear], atol=2e-5)
    assert 0 < stats.attack_success_rate.max() and stats.attack_success_rate.min() < 1


def test_adam_bias_correction_is_per_slot(twin):
    """A label that joins the stack later takes its own first Adam step (size lr)."""
    clf = twin.make()
    x, y = images(24, seed=6), np.arange(24) % CLASSES
    masks, patterns = raw_triggers(2, seed=8, spread=0.5)
    index = np.arange(24).reshape(1, 1, 24)
    with session(twin, clf, x, y) as opened:
        add(twin, opened, [1], masks[:1], patterns[:1])
        opened.step(index, np.zeros(1))
        opened.step(index, np.zeros(1))
        add(twin, opened, [2], masks[1:], patterns[1:])
        opened.step(index.repeat(2, axis=1), np.zeros(2))
        mask, _pattern = triggers(twin, opened, [1])
    grad = slot_gradient(x, y, 2, masks[1], patterns[1], 0.0, 1, False)[:H * W]
    moved = np.arctanh((mask[0].astype(np.float64) - 0.5) * (2 - EPS)).ravel()
    clear = np.abs(grad) > 1e-2 * np.abs(grad).max()
    np.testing.assert_allclose(np.abs(moved - masks[1].ravel())[clear], LR, rtol=2e-3)


@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
@pytest.mark.parametrize("name", [b for b in BACKENDS if b != "torch"])
def test_steps_agree_with_the_pytorch_twin(name, probabilities):
    """Several multi-mini-batch steps, labels joining and leaving: the same as PyTorch's."""
    twin, reference_twin = make_twin(name), make_twin("torch")
    x, y = images(48, seed=9), np.arange(48) % CLASSES
    masks, patterns = raw_triggers(4, seed=10, spread=0.8)
    costs = np.array([0.0, 1e-2, 0.1])
    rng = np.random.default_rng(11)
    plan = [rng.integers(0, len(x), (2, 3, 8)) for _ in range(3)]
    runs = []
    for each in (reference_twin, twin):
        with session(each, each.make(probabilities), x, y, norm=2) as opened:
            add(each, opened, [0, 1, 2], masks[:3], patterns[:3])
            stats = [opened.step(index, costs) for index in plan[:2]]
            opened.remove(np.array([1]))
            add(each, opened, [3], masks[3:], patterns[3:])
            stats.append(opened.step(plan[2], costs))
            runs.append((stats, triggers(each, opened, [0, 1, 2])))
    for mine, theirs in zip(runs[1][0], runs[0][0]):
        np.testing.assert_allclose(mine.attack_success_rate, theirs.attack_success_rate)
        np.testing.assert_allclose(mine.reg, theirs.reg, rtol=1e-4)
        np.testing.assert_allclose(mine.loss, theirs.loss, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(runs[1][1][0], runs[0][1][0], atol=1e-4)
    np.testing.assert_allclose(runs[1][1][1], runs[0][1][1], atol=3e-4)


@pytest.mark.parametrize("exit_by", ["return", "exception"])
def test_a_session_leaves_the_model_as_it_was(twin, exit_by):
    model = twin.build(False)
    twin.disturb(model)
    before = twin.state(model)
    clf = twin.make(model=model)
    x, y = images(16), np.arange(16) % CLASSES
    masks, patterns = raw_triggers(2)
    with pytest.raises(KeyboardInterrupt) if exit_by == "exception" else _nothing():
        with session(twin, clf, x, y) as opened:
            add(twin, opened, [0, 1], masks, patterns)
            opened.step(np.arange(16).reshape(2, 1, 8).repeat(2, axis=1), np.full(2, 0.1))
            if exit_by == "exception":
                raise KeyboardInterrupt
    after = twin.state(model)
    assert _same(before, after)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b))
    return a == b


# -- layers, pruning, copies -----------------------------------------------------------------
def test_layers_and_neuron_activations(twin):
    clf = twin.make()
    x = images(10)
    xm = twin.to_model(x)
    assert clf.layer_names() == LAYERS
    want = reference(x)
    final = clf.neuron_activations(xm, batch_size=4)
    assert final.shape == (10, HIDDEN)
    np.testing.assert_allclose(final, want["hidden"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clf.neuron_activations(xm, Classifier.FINAL_LAYER_INPUT), final)
    conv = clf.neuron_activations(xm, "conv")
    np.testing.assert_allclose(conv, want["conv"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clf.neuron_activations(xm, 0), conv)
    for layer, width in [("pool", FILTERS), ("flatten", (H // 2) * (W // 2) * FILTERS),
                         ("hidden", HIDDEN), ("logits", CLASSES)]:
        assert clf.neuron_activations(xm, layer).shape == (10, width)
    with pytest.raises(InputError, match="unknown layer 'nope'.*conv"):
        clf.neuron_activations(xm, "nope")
    with pytest.raises(InputError, match="out of range"):
        clf.neuron_activations(xm, len(LAYERS))


def test_pruning_silences_neurons_and_is_reversible(twin):
    model = twin.build(False)
    before = twin.state(model)
    clf = twin.make(model=model)
    x = images(12)
    xm = twin.to_model(x)
    plain = clf.predict(xm)
    clf.set_pruned_neurons(None, np.array([1, 5]))
    np.testing.assert_allclose(clf.predict(xm), reference(x, pruned_hidden=[1, 5])["out"],
                               rtol=1e-5, atol=1e-5)
    assert [v.tolist() for v in clf.pruned_neurons().values()] == [[1, 5]]
    clf.set_pruned_neurons(None, np.array([2]))  # replaces, does not add
    np.testing.assert_allclose(clf.predict(xm), reference(x, pruned_hidden=[2])["out"],
                               rtol=1e-5, atol=1e-5)
    clf.set_pruned_neurons("conv", np.array([0, 3]))
    activations = clf.neuron_activations(xm, "conv")
    assert np.all(activations[:, [0, 3]] == 0) and np.all(activations[:, [1, 2]] != 0)
    np.testing.assert_allclose(
        clf.predict(xm), reference(x, pruned_hidden=[2], pruned_conv=[0, 3])["out"],
        rtol=1e-5, atol=1e-5)
    clf.set_pruned_neurons(None, np.array([], dtype=np.int64))
    clf.set_pruned_neurons("conv", np.array([], dtype=np.int64))
    assert not clf.pruned_neurons()
    np.testing.assert_array_equal(clf.predict(xm), plain)
    assert _same(twin.state(model), before)


def test_copy_is_independent(twin):
    model = twin.build(False)
    before = twin.state(model)
    clf = twin.make(model=model)
    clf.set_pruned_neurons(None, np.array([4]))
    x = images(64, seed=12)
    xm = twin.to_model(x)
    pruned = clf.predict(xm)
    twin_clf = clf.copy()
    assert type(twin_clf) is type(clf) and twin_clf.model is not clf.model
    assert twin_clf.describe() == clf.describe()
    np.testing.assert_array_equal(twin_clf.predict(xm), pruned)  # the pruning is copied
    twin_clf.set_pruned_neurons(None, np.array([], dtype=np.int64))
    np.testing.assert_allclose(twin_clf.predict(xm), reference(x)["out"], rtol=1e-5, atol=1e-5)
    twin_clf.fine_tune(xm, np.arange(64) % CLASSES, epochs=1, learning_rate=0.05,
                       batch_size=16, seed=0)
    assert not np.allclose(twin_clf.predict(xm), reference(x)["out"], atol=1e-3)
    np.testing.assert_array_equal(clf.predict(xm), pruned)
    clf.set_pruned_neurons(None, np.array([], dtype=np.int64))
    assert _same(twin.state(model), before)
