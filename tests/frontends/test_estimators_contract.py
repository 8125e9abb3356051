"""Contract of the ART-compatible estimators, one suite run for Keras and for PyTorch.

Both frameworks wrap the same backdoored digits CNN (see ``estimator_models``), so the same
expectations hold for both. Also covers each ART defect listed in issue 3.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

import estimator_models as em  # noqa: E402
from neuralcleanse import KerasNeuralCleanse, PyTorchNeuralCleanse, ScanConfig  # noqa: E402
from neuralcleanse.core.errors import InputError  # noqa: E402
from neuralcleanse.frontends.art import DATA_PATH_ENV  # noqa: E402

#: Search settings of the outlier tests: short, L1 like the paper, quick early stop.
SCAN = dict(steps=80, norm=1, early_stop_patience=5)
N_CLASSES = 10


class Case:
    """One framework's way to build the shared network and its estimator."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.channels_first = framework == "torch"
        self.input_shape = (1, 8, 8) if self.channels_first else (8, 8, 1)

    def model(self, trained: bool = True):
        if self.framework == "keras":
            import keras

            if trained:
                return em.backdoored_keras()
            keras.utils.set_random_seed(3)
            return em.keras_cnn(keras)
        if trained:
            return em.backdoored_torch()
        torch.manual_seed(3)
        return em.torch_cnn()

    def estimator(self, model=None, **kwargs):
        model = self.model() if model is None else model
        kwargs.setdefault("clip_values", (0.0, 1.0))
        if self.framework == "keras":
            return KerasNeuralCleanse(model, use_logits=True, **kwargs)
        return PyTorchNeuralCleanse(model, input_shape=(1, 8, 8), use_logits=True,
                                    optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                                    **kwargs)

    def x(self, images: np.ndarray) -> np.ndarray:
        """Digits ``(N, 8, 8, 1)`` in this framework's layout."""
        return em.to_channels_first(images) if self.channels_first else images

    def native_outputs(self, model, x: np.ndarray) -> np.ndarray:
        if self.framework == "keras":
            return np.asarray(model(x, training=False))
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    def conv1_shape(self, n: int) -> tuple[int, ...]:
        return (n, 16, 8, 8) if self.channels_first else (n, 8, 8, 16)


@pytest.fixture(scope="module", params=["keras", "torch"])
def case(request) -> Case:
    return Case(request.param)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return em.digits()


_SCANNED: dict[str, tuple] = {}


def scan_once(framework: str) -> tuple:
    """An estimator that has run outlier detection on the backdoored model, and its answer."""
    if framework not in _SCANNED:
        case, data = Case(framework), em.digits()
        est = case.estimator(**SCAN)
        found = est.outlier_detection(case.x(data["x_val"]), data["y_val"])
        _SCANNED[framework] = (est, found)
    return _SCANNED[framework]


@pytest.fixture(scope="module")
def scanned(case):
    return scan_once(case.framework)


def with_scan(est, source):
    """Give a fresh estimator the scan of another, as if it had run the detection."""
    est._scan = source.scan_result
    return est


def off_ties(x: np.ndarray) -> np.ndarray:
    """Images with a little seeded noise: flat backgrounds make max-pooling ties, where the
    network is not differentiable and finite differences disagree with any gradient."""
    noise = np.random.default_rng(5).uniform(0.0, 0.05, x.shape).astype(np.float32)
    return x + noise


def directional_check(f, grad: np.ndarray, x: np.ndarray, eps: float = 1e-3) -> None:
    """Compare <grad, d> with central finite differences of ``f`` along random unit directions."""
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
        d /= np.linalg.norm(d)
        numeric = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        analytic = float((grad.astype(np.float64) * d).sum())
        assert numeric == pytest.approx(analytic, rel=3e-2, abs=3e-3)


# -- constructor and parameters -------------------------------------------------------------
SEED_SIGNATURE = {  # art.estimators.poison_mitigation.neural_cleanse.KerasNeuralCleanse
    "use_logits": False, "channels_first": False, "clip_values": None,
    "preprocessing_defences": None, "postprocessing_defences": None, "preprocessing": (0, 1),
    "input_layer": 0, "output_layer": 0, "steps": 1000, "init_cost": 0.001, "norm": 2,
    "learning_rate": 0.1, "attack_success_threshold": 0.99, "patience": 5, "early_stop": True,
    "early_stop_threshold": 0.99, "early_stop_patience": 10, "cost_multiplier": 1.5,
    "batch_size": 32,
}


def test_keras_constructor_is_the_seed_signature():
    params = inspect.signature(KerasNeuralCleanse.__init__).parameters
    names = [n for n in params if n != "self"]
    assert names == ["model", *SEED_SIGNATURE]
    assert params["model"].default is inspect.Parameter.empty
    for name, default in SEED_SIGNATURE.items():
        assert params[name].default == default, name


def test_pytorch_constructor_has_the_same_search_defaults():
    params = inspect.signature(PyTorchNeuralCleanse.__init__).parameters
    for name in ("steps", "init_cost", "norm", "learning_rate", "attack_success_threshold",
                 "patience", "early_stop", "early_stop_threshold", "early_stop_patience",
                 "cost_multiplier", "batch_size", "clip_values", "preprocessing",
                 "preprocessing_defences", "postprocessing_defences"):
        assert params[name].default == SEED_SIGNATURE[name], name
    for name in ("input_shape", "nb_classes", "loss", "optimizer"):
        assert name in params


SEED_METHODS = ("abstain", "backdoor_examples", "check_backdoor_effective", "class_gradient",
                "custom_loss_gradient", "fit", "fit_generator", "generate_backdoor",
                "get_activations", "get_params", "loss", "compute_loss", "loss_gradient",
                "mitigate", "outlier_detection", "predict", "reset", "save",
                "set_learning_phase", "set_params")
SEED_PROPERTIES = ("channel_index", "channels_first", "clip_values", "input_shape",
                   "layer_names", "learning_phase", "model", "nb_classes")


@pytest.mark.parametrize("cls", [KerasNeuralCleanse, PyTorchNeuralCleanse])
def test_every_method_and_property_of_the_seed_exists(cls):
    for name in SEED_METHODS:
        assert callable(getattr(cls, name)), name
    for name in SEED_PROPERTIES:
        assert isinstance(inspect.getattr_static(cls, name), property), name


def test_properties(case):
    model = case.model()
    est = case.estimator(model)
    assert est.model is model
    assert est.input_shape == case.input_shape
    assert est.nb_classes == N_CLASSES
    assert est.channels_first is case.channels_first
    assert est.channel_index == (1 if case.channels_first else 3)
    assert est.clip_values == (0.0, 1.0)
    assert est.learning_phase is None
    names = est.layer_names
    assert len(names) >= 5 and all(isinstance(n, str) for n in names)
    assert np.array_equal(est.abstain(), np.zeros(N_CLASSES))


def test_get_set_params_round_trip_and_validation(case):
    est = case.estimator()
    params = est.get_params()
    assert params["steps"] == 1000 and params["norm"] == 2 and params["cost_multiplier"] == 1.5
    est.set_params(**{k: v for k, v in params.items() if k != "model"})
    assert est.get_params() == params
    est.set_params(steps=7, norm=np.inf, learning_rate=0.05)
    assert est.steps == 7 and est.get_params()["norm"] == math.inf
    assert est.get_params()["learning_rate"] == 0.05
    with pytest.raises(ValueError, match="steps"):
        est.set_params(steps=0)
    with pytest.raises(ValueError, match="cost_multiplier"):
        est.set_params(cost_multiplier=1.0)
    with pytest.raises(ValueError, match="unknown parameter.*bogus"):
        est.set_params(bogus=1)
    with pytest.raises(ValueError, match="clip_values"):
        est.set_params(clip_values=(1.0, 0.0))
    assert est.get_params()["steps"] == 7  # a failed set_params changes nothing
    est.set_params(clip_values=(0.0, 2.0))
    assert est.clip_values == (0.0, 2.0)


def test_constructor_rejects_bad_search_settings(case):
    with pytest.raises(ValueError, match="norm"):
        case.estimator(norm=3)
    with pytest.raises(ValueError, match="batch_size"):
        case.estimator(batch_size=0)
    with pytest.raises(TypeError, match="preprocessing_defences"):
        case.estimator(preprocessing_defences=[42])


def estimator_class(case):
    return KerasNeuralCleanse if case.framework == "keras" else PyTorchNeuralCleanse


def test_params_are_exactly_the_constructor_arguments(case):
    est = case.estimator()
    names = [n for n in inspect.signature(estimator_class(case).__init__).parameters
             if n != "self"]
    assert list(est.get_params()) == names
    assert sorted(type(est.parameters).names()) == sorted(names)
    assert est.get_params()["clip_values"] == (0.0, 1.0)
    # the search parameters are the library's settings object, with ART's defaults
    assert est.parameters.search == ScanConfig.art_defaults()
    assert est.parameters.search.mini_batches is None  # one step = one pass over x_val, as ART
    # no fallback into a store: an unknown attribute is an AttributeError
    assert all("__getattr__" not in vars(k) for k in type(est).__mro__ if k is not object)
    with pytest.raises(AttributeError):
        est.bogus  # noqa: B018


def test_parameters_are_attributes_and_assigning_one_is_set_params(case):
    est = case.estimator()
    wrapper = est.classifier
    assert est.steps == 1000 and est.norm == 2 and est.cost_multiplier == 1.5
    assert est.use_logits is True and est.early_stop is True and est.preprocessing == (0, 1)
    est.steps = np.int64(9)
    assert est.steps == 9 and type(est.steps) is int and est.get_params()["steps"] == 9
    assert est.parameters.search.steps == 9
    with pytest.raises(InputError, match="steps") as excinfo:
        est.steps = 0
    assert "\n" not in str(excinfo.value) and est.steps == 9
    with pytest.raises(InputError, match=r"unknown parameter\(s\) bogus for") as excinfo:
        est.set_params(bogus=1, steps=3)
    assert "\n" not in str(excinfo.value) and est.steps == 9
    assert est.classifier is wrapper  # search settings and defences keep the wrapper
    est.postprocessing_defences = np.negative
    assert est.get_params()["postprocessing_defences"] == [np.negative]
    assert est.classifier is wrapper
    est.preprocessing = (0.0, 2.0)  # shapes the wrapper: a new one of the same model
    assert est.classifier is not wrapper and est.classifier.model is est.model
    with pytest.raises(AttributeError):
        est.model = case.model()  # ART's read-only properties stay read-only


def test_pytorch_loss_argument_is_in_get_params_and_loss_is_the_method(data):
    model = Case("torch").model()
    criterion = torch.nn.CrossEntropyLoss()
    est = PyTorchNeuralCleanse(model, input_shape=(1, 8, 8), loss=criterion, clip_values=(0, 1))
    assert est.get_params()["loss"] is criterion
    x, y = Case("torch").x(data["x_test"][:5]), data["y_test"][:5]
    assert est.loss(x, y).shape == (5,)
    assert est.get_params()["nb_classes"] is None and est.nb_classes == N_CLASSES


def test_pytorch_use_logits_none_is_told_from_the_outputs():
    logits = PyTorchNeuralCleanse(em.backdoored_torch(), input_shape=(1, 8, 8),
                                  clip_values=(0, 1))
    softmax = torch.nn.Sequential(em.backdoored_torch(), torch.nn.Softmax(dim=1))
    probabilities = PyTorchNeuralCleanse(softmax, input_shape=(1, 8, 8), clip_values=(0, 1))
    assert logits.classifier.output == "logits"
    assert probabilities.classifier.output == "probabilities"
    assert probabilities.get_params()["use_logits"] is None


def test_a_contradicted_use_logits_warns_at_the_callers_line():
    with pytest.warns(UserWarning, match="use_logits=False but") as record:
        est = KerasNeuralCleanse(em.backdoored_keras(), clip_values=(0, 1))
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="use_logits=True but") as record:
        est.set_params(model=em.backdoored_keras(softmax=True), use_logits=True)
    assert record[0].filename == __file__


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_new_wrapper_keeps_the_pruning_of_the_model(framework, data):
    case = Case(framework)
    est = case.estimator()
    est.classifier.set_pruned_neurons(None, np.array([0, 5]))
    pruned = {k: v.tolist() for k, v in est.classifier.pruned_neurons().items()}
    assert list(pruned.values()) == [[0, 5]]
    est.set_params(clip_values=(0.0, 1.0))  # a new wrapper of the same model
    assert {k: v.tolist() for k, v in est.classifier.pruned_neurons().items()} == pruned
    est.fit(case.x(data["x_val"]), data["y_val"], nb_epochs=1)
    assert {k: v.tolist() for k, v in est.classifier.pruned_neurons().items()} == pruned


# -- classifier surface ---------------------------------------------------------------------
def test_predict_matches_the_model(case, data):
    model = case.model()
    est = case.estimator(model)
    x = case.x(data["x_test"])
    preds = est.predict(x)
    assert preds.shape == (len(x), N_CLASSES) and preds.dtype == np.float32
    np.testing.assert_allclose(preds, case.native_outputs(model, x), rtol=1e-5, atol=1e-5)
    assert em.accuracy(preds, data["y_test"]) > 0.9
    no_channel = data["x_test"][..., 0]  # (N, H, W) gets its channel axis
    np.testing.assert_allclose(est.predict(no_channel), preds, atol=1e-6)
    assert est.predict(x[:0]).shape == (0, N_CLASSES)
    with pytest.raises(ValueError, match="x must have shape"):
        est.predict(np.zeros((2, 5, 5, 1), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        est.predict(x, batch_size=0)


def test_preprocessing_is_applied_everywhere(case, data):
    """Raw [0, 16] inputs with (0, 16) preprocessing behave like [0, 1] inputs."""
    model = case.model()
    plain = case.estimator(model)
    scaled = case.estimator(model, preprocessing=(0.0, 16.0), clip_values=(0.0, 16.0))
    x = case.x(data["x_test"][:20])
    y = data["y_test"][:20]
    np.testing.assert_allclose(scaled.predict(16 * x), plain.predict(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scaled.loss_gradient(16 * x, y), plain.loss_gradient(x, y) / 16,
                               rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(scaled.class_gradient(16 * x, 2), plain.class_gradient(x, 2) / 16,
                               rtol=1e-3, atol=1e-6)
    layer = plain.layer_names[0]
    np.testing.assert_allclose(scaled.get_activations(16 * x, layer),
                               plain.get_activations(x, layer), rtol=1e-4, atol=1e-5)
    scaled.set_params(steps=3)
    plain.set_params(steps=3)
    pattern16, mask16 = scaled.generate_backdoor(16 * case.x(data["x_val"]), data["y_val"], 7)
    pattern1, mask1 = plain.generate_backdoor(case.x(data["x_val"]), data["y_val"], 7)
    assert pattern16.max() > 1.0 and pattern16.min() >= 0.0 and pattern16.max() <= 16.0
    np.testing.assert_allclose(mask16, mask1, atol=1e-3)
    np.testing.assert_allclose(pattern16 / 16, pattern1, atol=1e-3)


def test_loss_values_and_alias(case, data):
    est = case.estimator()
    x = case.x(data["x_test"][:50])
    y = data["y_test"][:50]
    losses = est.loss(x, y)
    assert losses.shape == (50,) and losses.dtype == np.float32
    logits = est.predict(x).astype(np.float64)
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    np.testing.assert_allclose(losses, -log_softmax[np.arange(50), y], rtol=1e-4, atol=1e-5)
    one_hot = np.eye(N_CLASSES)[y]
    np.testing.assert_allclose(est.loss(x, one_hot), losses)
    assert float(est.loss(x, y, reduction="mean")) == pytest.approx(losses.mean(), rel=1e-5)
    assert float(est.compute_loss(x, y, reduction="sum")) == pytest.approx(losses.sum(),
                                                                           rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        est.loss(x, y, reduction="max")
    with pytest.raises(ValueError, match="labels"):
        est.loss(x, y[:10])


def test_loss_gradient_matches_finite_differences(case, data):
    """Also the ART defect: loss_gradient must not call itself."""
    est = case.estimator()
    x = off_ties(case.x(data["x_test"][:4]))
    y = data["y_test"][:4]
    grad = est.loss_gradient(x, y)
    assert grad.shape == x.shape and grad.dtype == np.float32
    assert np.abs(grad).sum() > 0
    directional_check(lambda z: float(est.loss(z, y, reduction="sum")), grad, x)


def test_class_gradient_shapes_and_values(case, data):
    """Also the ART defect: class_gradient must not call itself."""
    est = case.estimator()
    x = off_ties(case.x(data["x_test"][:3]))
    every = est.class_gradient(x)
    assert every.shape == (3, N_CLASSES, *case.input_shape)
    one = est.class_gradient(x, label=4)
    assert one.shape == (3, 1, *case.input_shape)
    np.testing.assert_allclose(one[:, 0], every[:, 4], rtol=1e-5, atol=1e-6)
    per_sample = est.class_gradient(x, label=[1, 5, 9])
    assert per_sample.shape == (3, 1, *case.input_shape)
    for i, k in enumerate([1, 5, 9]):
        np.testing.assert_allclose(per_sample[i, 0], every[i, k], rtol=1e-5, atol=1e-6)
    directional_check(lambda z: float(est.predict(z)[:, 4].sum()), one[:, 0], x)
    with pytest.raises(ValueError, match="label"):
        est.class_gradient(x, label=10)
    with pytest.raises(ValueError, match="label"):
        est.class_gradient(x, label=[1, 2])


def test_activations_by_index_and_name(case, data):
    est = case.estimator()
    x = case.x(data["x_test"][:6])
    names = est.layer_names
    by_index = est.get_activations(x, 0, batch_size=4)
    by_name = est.get_activations(x, names[0])
    assert by_index.shape == case.conv1_shape(6)
    np.testing.assert_array_equal(by_index, by_name)
    last = est.get_activations(x, len(names) - 1)
    np.testing.assert_allclose(last, est.predict(x), rtol=1e-5, atol=1e-5)
    symbolic = est.get_activations(x, names[0], framework=True)
    if case.framework == "torch":
        assert isinstance(symbolic, torch.Tensor) and symbolic.shape == case.conv1_shape(6)
    else:
        assert tuple(symbolic.shape) == (None, 8, 8, 16)
    with pytest.raises(ValueError, match="unknown layer"):
        est.get_activations(x, "no_such_layer")
    with pytest.raises(ValueError, match="out of range"):
        est.get_activations(x, len(names))


def test_custom_loss_gradient_with_a_callable(case, data):
    model = case.model()
    est = case.estimator(model)
    x = case.x(data["x_test"][:3])

    def function(t):  # a TensorFlow or a PyTorch tensor, as the framework gives it
        return model(t)[:, 3]

    grad = est.custom_loss_gradient(function, None, [x])
    np.testing.assert_allclose(grad, est.class_gradient(x, 3)[:, 0], rtol=1e-5, atol=1e-6)


def test_learning_phase(case, data):
    est = case.estimator()
    x = case.x(data["x_test"][:5])
    est.set_learning_phase(True)
    assert est.learning_phase is True
    est.set_learning_phase(False)
    assert est.learning_phase is False
    with pytest.raises(TypeError, match="train"):
        est.set_learning_phase("yes")
    assert est.predict(x).shape == (5, N_CLASSES)


def test_defences_follow_the_art_calling_convention(case, data):
    model = case.model()
    x = case.x(data["x_test"][:8])
    y = data["y_test"][:8]

    class Darken:
        apply_fit, apply_predict = True, True

        def __call__(self, x, y=None):
            return x * 0.5, y

        def estimate_gradient(self, x, grad):
            return grad * 0.5

    class Off(Darken):
        apply_predict = False

        def __call__(self, x, y=None):
            raise AssertionError("a defence with apply_predict=False ran in predict")

    def double(preds):
        return preds * 2

    plain = case.estimator(model)
    defended = case.estimator(model, preprocessing_defences=[Darken(), Off()],
                              postprocessing_defences=double)
    np.testing.assert_allclose(defended.predict(x), 2 * plain.predict(0.5 * x), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(defended.loss_gradient(x, y),
                               0.5 * plain.loss_gradient(0.5 * x, y), rtol=1e-4, atol=1e-6)


# -- training -------------------------------------------------------------------------------
def test_fit_improves_accuracy(case, data):
    est = case.estimator(case.model(trained=False))
    x_test = case.x(data["x_test"])
    before = em.accuracy(est.predict(x_test), data["y_test"])
    clean = data["x_val"], data["y_val"]
    one_hot = np.eye(N_CLASSES)[clean[1]]
    est.fit(case.x(clean[0]), one_hot, batch_size=32, nb_epochs=12)
    after = em.accuracy(est.predict(x_test), data["y_test"])
    assert before < 0.3 and after > 0.75
    with pytest.raises(ValueError, match="nb_epochs"):
        est.fit(case.x(clean[0]), clean[1], epochs=3)
    with pytest.raises(TypeError, match="unexpected"):
        est.fit(case.x(clean[0]), clean[1], validation_split=0.1)


def test_fit_generator_improves_accuracy(case, data):
    x = case.x(data["x_val"])
    y = data["y_val"]

    class ArtStyleGenerator:  # the duck type of ART's DataGenerator
        def __init__(self) -> None:
            self.size, self.batch_size, self.position = len(x), 30, 0

        def get_batch(self):
            start = self.position
            self.position = (start + self.batch_size) % self.size
            return x[start:start + self.batch_size], y[start:start + self.batch_size]

    est = case.estimator(case.model(trained=False))
    before = em.accuracy(est.predict(case.x(data["x_test"])), data["y_test"])
    est.fit_generator(ArtStyleGenerator(), nb_epochs=12)
    after = em.accuracy(est.predict(case.x(data["x_test"])), data["y_test"])
    assert before < 0.3 and after > 0.75

    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, len(x), 50)]
    est.fit_generator(batches, nb_epochs=1)  # a plain sequence of batches is accepted too
    with pytest.raises(ValueError, match="steps_per_epoch"):
        est.fit_generator(iter(batches), nb_epochs=1)


def test_save_native_format_and_default_folder(case, data, tmp_path, monkeypatch):
    model = case.model()
    est = case.estimator(model)
    x = case.x(data["x_test"][:10])
    name = "model.keras" if case.framework == "keras" else "model.pt"
    assert est.save(name, path=str(tmp_path / "explicit")) is None
    written = tmp_path / "explicit" / name
    assert written.is_file()
    if case.framework == "keras":
        import keras

        reloaded = keras.models.load_model(written)
    else:
        reloaded = em.torch_cnn()
        reloaded.load_state_dict(torch.load(written, weights_only=True))
        reloaded.eval()
    np.testing.assert_allclose(case.native_outputs(reloaded, x), est.predict(x), atol=1e-5)
    monkeypatch.setenv(DATA_PATH_ENV, str(tmp_path / "data_dir"))
    est.save(name)
    assert (tmp_path / "data_dir" / name).is_file()


# -- Neural Cleanse -------------------------------------------------------------------------
def test_outlier_detection_flags_the_planted_label(scanned, case):
    est, found = scanned
    assert [label for label, _, _ in found] == [em.TARGET]
    label, mask, pattern = found[0]
    assert mask.shape == (8, 8) and pattern.shape == case.input_shape
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert pattern.min() >= 0.0 and pattern.max() <= 1.0
    result = est.scan_result
    assert result.flagged_labels == [em.TARGET]
    assert int(np.argmin(result.norms)) == em.TARGET
    assert result.anomaly_index[em.TARGET] > 2.0
    # The reversed trigger carries the backdoor: stamped clean images go to the target.
    clean, stamped, labels = est.backdoor_examples(case.x(em.digits()["x_test"]),
                                                   em.digits()["y_test"])
    assert (est.predict(stamped).argmax(1) == em.TARGET).mean() > 0.9


def test_cost_rises_and_early_stopping_fires(scanned):
    """ART defect: a cost that can never rise, so that early stopping never fires."""
    est, _ = scanned
    labels = est.scan_result.labels
    assert any(r.final_cost > est.init_cost for r in labels)
    assert any(r.steps < est.steps for r in labels)


def test_both_frameworks_reach_the_same_verdict():
    keras_result = scan_once("keras")[0].scan_result
    torch_result = scan_once("torch")[0].scan_result
    assert keras_result.flagged_labels == torch_result.flagged_labels == [em.TARGET]
    np.testing.assert_allclose(keras_result.norms, torch_result.norms, rtol=0.15)


def test_generate_backdoor_never_starts_from_a_previous_trigger(case, data):
    """ART defect: one class's search starting from the previous class's trigger."""
    est = case.estimator(steps=6)
    x, y = case.x(data["x_val"]), data["y_val"]
    first_pattern, first_mask = est.generate_backdoor(x, y, 7)
    est.generate_backdoor(x, y, 3)
    again_pattern, again_mask = est.generate_backdoor(x, y, np.eye(N_CLASSES)[7])
    np.testing.assert_array_equal(first_mask, again_mask)
    np.testing.assert_array_equal(first_pattern, again_pattern)
    assert first_pattern.shape == case.input_shape and first_mask.shape == (8, 8)
    with pytest.raises(ValueError, match="y_target"):
        est.generate_backdoor(x, y, 10)
    with pytest.raises(ValueError, match="x_val"):
        est.generate_backdoor(x * 3, y, 7)  # outside clip_values


def test_norm_inf_is_supported(case, data):
    """ART defect: norm=inf documented but raising."""
    est = case.estimator(norm=np.inf, steps=4)
    pattern, mask = est.generate_backdoor(case.x(data["x_val"]), data["y_val"], 2)
    assert mask.shape == (8, 8) and np.isfinite(mask).all()
    assert pattern.shape == case.input_shape


def test_outlier_detection_reports_the_art_search_settings(scanned):
    est, _ = scanned
    assert est.scan_result.config == ScanConfig.art_defaults(**SCAN, progress=False).to_dict()
    assert est.scan_result.data_info["n_images"] == len(em.digits()["x_val"])


def test_mask_norm_is_not_divided_by_three(scanned):
    """ART defect: the per-channel mask divided by a hard-coded 3 (these images have 1)."""
    est, found = scanned
    for result in est.scan_result.labels:
        assert result.norm == pytest.approx(float(np.abs(result.mask).sum()), rel=1e-6)


def test_backdoor_examples_stamp_other_classes_and_keep_labels(scanned, case, data):
    """ART defect: stamping only images of the flagged class."""
    est, found = scanned
    x = case.x(data["x_val"])
    one_hot = np.eye(N_CLASSES)[data["y_val"]]
    clean, stamped, labels = est.backdoor_examples(x, one_hot)
    others = data["y_val"] != em.TARGET
    assert labels.shape == (int(others.sum()), N_CLASSES)
    np.testing.assert_array_equal(labels, one_hot[others])
    np.testing.assert_array_equal(clean, x[others])
    _, mask, pattern = found[0]
    m = mask[None, None] if case.channels_first else mask[None, :, :, None]
    np.testing.assert_allclose(stamped, (1 - m) * clean + m * pattern, atol=1e-6)


def test_check_backdoor_effective_compares_labels(scanned, case, data):
    """ART defect: probability rows compared with one-hot rows for exact equality."""
    est, _ = scanned
    x = case.x(data["x_test"])
    right = est.predict(x).argmax(1) == data["y_test"]
    one_hot = np.eye(N_CLASSES)[data["y_test"][right]]
    assert est.check_backdoor_effective(x[right], one_hot) is False
    real = data["y_test"] != em.TARGET
    stamped = em.stamp_corner(x[real], case.channels_first)
    assert est.check_backdoor_effective(stamped, data["y_test"][real]) is True


def test_mitigate_filtering_abstains_and_returns_none(scanned, case, data):
    source, _ = scanned
    est = with_scan(case.estimator(), source)
    x_test = case.x(data["x_test"])
    real = data["y_test"] != em.TARGET
    stamped = em.stamp_corner(x_test[real], case.channels_first)
    assert est.mitigate(case.x(data["x_val"]), data["y_val"], ["filtering"]) is None
    abstained_stamped = ~est.predict(stamped).any(axis=1)
    abstained_clean = ~est.predict(x_test).any(axis=1)
    assert abstained_stamped.mean() > 0.8
    assert abstained_clean.mean() < 0.2
    assert len(est.mitigation_reports) == 1
    est.reset()
    assert est.predict(stamped).any(axis=1).all()


def test_mitigate_pruning_then_unlearning_weakens_the_backdoor(scanned, case, data):
    source, _ = scanned
    model = case.model()
    est = with_scan(case.estimator(model), source)
    x_test = case.x(data["x_test"])
    real = data["y_test"] != em.TARGET
    stamped = em.stamp_corner(x_test[real], case.channels_first)

    def attack_success() -> float:
        return float((est.predict(stamped).argmax(1) == em.TARGET).mean())

    before = attack_success()
    est.mitigate(case.x(data["x_val"]), data["y_val"], ["pruning"])
    after_pruning = attack_success()
    est.mitigate(case.x(data["x_val"]), data["y_val"], ["unlearning"])
    after_unlearning = attack_success()
    assert before > 0.9
    assert after_pruning < before
    assert after_unlearning < 0.5
    assert em.accuracy(est.predict(x_test), data["y_test"]) > 0.85
    assert [type(r).__name__ for r in est.mitigation_reports] == ["PruningReport",
                                                                   "UnlearningReport"]


def test_mitigate_validation_and_nothing_flagged(scanned, case, data):
    source, _ = scanned
    est = with_scan(case.estimator(), source)
    x, y = case.x(data["x_val"]), data["y_val"]
    with pytest.raises(ValueError, match="mitigation_types"):
        est.mitigate(x, y, ["retraining"])
    with pytest.raises(ValueError, match="mitigation_types"):
        est.mitigate(x, y, [])
    est._scan = dataclasses.replace(source.scan_result, flagged_labels=[])
    with pytest.warns(UserWarning, match="nothing to mitigate"):
        assert est.mitigate(x, y, ["unlearning"]) is None


def test_reset_keeps_the_learning_rate_and_gives_the_same_search(case, data):
    """ART defect: a reset that zeroes the learning rate."""
    est = case.estimator(steps=5, learning_rate=0.2)
    x, y = case.x(data["x_val"]), data["y_val"]
    pattern, mask = est.generate_backdoor(x, y, 4)
    est.reset()
    assert est.get_params()["learning_rate"] == 0.2
    assert est.scan_result is None
    pattern2, mask2 = est.generate_backdoor(x, y, 4)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(pattern, pattern2)
    assert np.abs(mask - initial_mask(est, 4)).max() > 1e-3  # the search did move


def initial_mask(est, label: int) -> np.ndarray:
    from neuralcleanse.search.reverse import initial_trigger

    raw, _ = initial_trigger(label, est.classifier, est.parameters.search.seed)
    return (np.tanh(raw) / (2 - 1e-7) + 0.5).astype(np.float32)


def test_mitigate_docstring_does_not_promise_a_certified_radius():
    """ART defect: mitigate documented as returning "the selected class and certified radius"."""
    doc = inspect.getdoc(KerasNeuralCleanse.mitigate)
    assert "radius" not in doc
    assert inspect.signature(KerasNeuralCleanse.mitigate).return_annotation in (None, "None")


# -- the third-party backdoored MNIST model -------------------------------------------------
@pytest.fixture(scope="module")
def mnist_badnet():
    path = em.DATA_DIR / "badnet-MNIST.pth"
    sample = em.DATA_DIR / "mnist_test_first1000.npz"
    if not path.is_file() or not sample.is_file():
        pytest.skip(f"the shared data is absent ({em.DATA_DIR}): badnet-MNIST.pth and "
                    "mnist_test_first1000.npz are needed")
    from neuralcleanse.backends.torch.architectures import MNIST_BADNET_PREPROCESSING, MnistBadNet

    net = MnistBadNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    images = np.load(Path(sample))
    return net.eval(), MNIST_BADNET_PREPROCESSING, images["x"], images["y"]


def test_outlier_detection_flags_label_1_of_the_third_party_badnet(mnist_badnet):
    net, preprocessing, x, y = mnist_badnet
    est = PyTorchNeuralCleanse(net, input_shape=(1, 28, 28), preprocessing=preprocessing,
                               clip_values=(0, 255), steps=10, early_stop_patience=5)
    assert est.classifier.output == "probabilities"  # told from its softmax outputs
    found = est.outlier_detection(x[:128, None].astype(np.float32), y[:128])
    assert [label for label, _, _ in found] == [1]
    assert int(np.argmin(est.scan_result.norms)) == 1


def test_clip_values_default_to_the_range_of_the_data(case, data):
    est = case.estimator(clip_values=None, steps=2)
    assert est.clip_values is None
    pattern, _ = est.generate_backdoor(16 * case.x(data["x_val"]), data["y_val"], 1)
    assert est.clip_values is None and est.classifier.clip_values == (0.0, 255.0)
    assert pattern.min() >= 0.0 and pattern.max() <= 255.0 and pattern.max() > 16.0


def test_pytorch_loss_module_gives_per_sample_losses(data):
    case = Case("torch")
    model = case.model()
    loss = torch.nn.CrossEntropyLoss()
    with_module = PyTorchNeuralCleanse(model, input_shape=(1, 8, 8), loss=loss,
                                       clip_values=(0, 1))
    default = case.estimator(model)
    x, y = case.x(data["x_test"][:20]), data["y_test"][:20]
    np.testing.assert_allclose(with_module.loss(x, y), default.loss(x, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(with_module.loss_gradient(x, y), default.loss_gradient(x, y),
                               rtol=1e-4, atol=1e-6)
    assert loss.reduction == "mean"  # restored after the per-sample evaluation
    with pytest.raises(ValueError, match="optimizer"):
        with_module.fit(x, y, nb_epochs=1)


def test_keras_custom_loss_gradient_of_a_symbolic_tensor(data):
    import keras

    case = Case("keras")
    model = case.model()
    est = case.estimator(model)
    x = case.x(data["x_test"][:3])
    target = model.outputs[0][:, 3]
    grad = est.custom_loss_gradient(target, [model.inputs[0]], [x], name="class3")
    np.testing.assert_allclose(grad, est.class_gradient(x, 3)[:, 0], rtol=1e-5, atol=1e-6)
    again = est.custom_loss_gradient(target, [model.inputs[0]], [x[:1]], name="class3")
    np.testing.assert_allclose(again, grad[:1], rtol=1e-5, atol=1e-6)
    unrelated = keras.Input((4,))
    with pytest.raises(ValueError, match="cannot be computed"):
        est.custom_loss_gradient(target, [unrelated], [np.zeros((1, 4))], name="broken")


def test_tf_keras_models_work_in_the_estimator(data):
    import tf_keras

    model = em.backdoored_keras(tf_keras)
    est = KerasNeuralCleanse(model, use_logits=True, clip_values=(0, 1))
    x = data["x_test"]
    np.testing.assert_allclose(est.predict(x), np.asarray(model(x, training=False)), atol=1e-5)
    assert est.class_gradient(x[:2]).shape == (2, N_CLASSES, 8, 8, 1)
    tf_keras.utils.set_random_seed(3)
    fresh = KerasNeuralCleanse(em.keras_cnn(tf_keras), use_logits=True, clip_values=(0, 1))
    fresh.fit(data["x_val"], data["y_val"], batch_size=32, nb_epochs=12)
    assert em.accuracy(fresh.predict(x), data["y_test"]) > 0.75


def dropout_model(framework: str):
    if framework == "keras":
        import keras

        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(10)])
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(64, 10))


def test_learning_phase_switches_training_mode_layers(case, data):
    est = case.estimator(dropout_model(case.framework))
    x = case.x(data["x_test"][:32])
    inference = est.predict(x)
    np.testing.assert_array_equal(est.predict(x), inference)
    est.set_learning_phase(True)
    assert not np.allclose(est.predict(x), inference)  # dropout is active
    np.testing.assert_array_equal(est.predict(x, training_mode=False), inference)
    est.set_learning_phase(False)
    np.testing.assert_array_equal(est.predict(x), inference)
