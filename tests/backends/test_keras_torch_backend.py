"""Keras 3 models on the torch backend are read as the model says, and scan as on TensorFlow.

Such a model is a ``torch.nn.Module`` and goes through the PyTorch backend, but its layout
(channels last unless its layers say otherwise), its input shape and its output kind (a softmax
gives probabilities) come from the Keras model, never from PyTorch's defaults. The same ``.keras``
file is scanned here with Keras on TensorFlow (this process) and, in one child process, with
Keras on torch (Keras picks its backend once, at import); both must give the same norms and
the same verdict.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")
pytest.importorskip("torch")

from neuralcleanse import ScanConfig, scan  # noqa: E402
from neuralcleanse.backends.base import (  # noqa: E402
    keras_channels_first,
    keras_data_format,
    keras_output_kind,
    rows_are_probabilities,
)
from neuralcleanse.backends.tensorflow.classifier import KerasClassifier  # noqa: E402
from neuralcleanse.core.errors import InputError  # noqa: E402
from neuralcleanse.frontends.demo import TARGET_LABEL, load_digits_splits, poison  # noqa: E402

if keras.backend.backend() != "tensorflow":  # the torch side runs in a child process
    pytest.skip("these tests compare against Keras on TensorFlow in the test process; "
                f"KERAS_BACKEND is {keras.backend.backend()!r}", allow_module_level=True)

#: A short deterministic search: few steps, a fixed label batch (all ten labels together).
SEARCH = dict(steps=30, mini_batches=4, batch_size=32, label_batch=10, early_stop_patience=5,
              seed=0, progress=False)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


@functools.cache
def small_models() -> dict[str, tuple[Any, str | None, bool]]:
    """Untrained 8x8 models: ``name -> (model, output kind it declares, channels first)``.

    ``None`` as the output kind means the final layer does not say (an ``Identity`` after the
    softmax): both backends must then tell it from the outputs.
    """
    layers = keras.layers
    keras.utils.set_random_seed(1)

    def trunk(fmt: str = "channels_last") -> list[Any]:
        return [layers.Conv2D(4, 3, activation="relu", data_format=fmt),
                layers.Flatten(data_format=fmt)]

    inner = keras.Sequential([keras.Input((8, 8, 1)), *trunk(),
                              layers.Dense(3, activation="softmax")], name="inner")
    outer_in = keras.Input((8, 8, 1))
    return {
        "linear": (keras.Sequential([keras.Input((8, 8, 1)), *trunk(), layers.Dense(3)]),
                   "logits", False),
        "softmax_layer": (keras.Sequential([keras.Input((8, 8, 1)), *trunk(), layers.Dense(3),
                                            layers.Softmax()]), "probabilities", False),
        "nested": (keras.Model(outer_in, inner(outer_in)), "probabilities", False),
        "undeclared": (keras.Sequential([keras.Input((8, 8, 1)), *trunk(),
                                         layers.Dense(3, activation="softmax"),
                                         layers.Identity()]), None, False),
        "channels_first": (keras.Sequential([keras.Input((1, 8, 8)), *trunk("channels_first"),
                                             layers.Dense(3, activation="softmax")]),
                           "probabilities", True),
    }


CHILD = textwrap.dedent('''
    import json, sys
    import numpy as np
    import keras
    from neuralcleanse import ScanConfig, scan
    from neuralcleanse.frontends import cli
    from neuralcleanse.backends import wrap_model
    from neuralcleanse.backends.torch.classifier import TorchClassifier
    from neuralcleanse.core.errors import InputError
    from neuralcleanse.frontends.art import KerasNeuralCleanse, PyTorchNeuralCleanse

    spec = json.loads(open(sys.argv[1]).read())
    out = {"backend": keras.backend.backend()}
    cfg = ScanConfig(**spec["search"])
    data = np.load(spec["data"])
    x, y = data["x"], data["y"]
    model = keras.models.load_model(spec["model"], compile=False)

    def failure(call):
        try:
            call()
        except Exception as exc:
            return {"type": type(exc).__name__, "input_error": isinstance(exc, InputError),
                    "message": str(exc)}
        return None

    def facts(clf):
        return {"torch_backend": isinstance(clf, TorchClassifier),
                "input_shape": list(clf.input_shape), "image_shape": list(clf.image_shape),
                "channels_first": clf.channels_first, "output": clf.output}

    def summary(result):
        return {"norms": result.norms.tolist(), "anomaly_index": result.anomaly_index.tolist(),
                "flagged": list(result.flagged_labels), "mask_shape": list(result.masks.shape),
                "model_info": result.model_info}

    # the entry point, NHWC images and no layout or output option
    out["wrapped"] = facts(wrap_model(model))
    out["api"] = summary(scan(model, x, y, config=cfg))
    # single-channel images without a channel axis get it where the model wants it
    out["api_hw"] = summary(scan(model, x[..., 0], y, config=cfg, labels=[spec["target"]]))
    out["nchw_data"] = failure(lambda: scan(model, x.transpose(0, 3, 1, 2), y, config=cfg))
    out["forced_channels_first"] = failure(
        lambda: scan(model, x, y, config=cfg, channels_first=True))
    out["wrapped_channels_first"] = failure(lambda: wrap_model(model, channels_first=True))

    # saved as the Keras model it is; layer hooks refused (Keras layers are no torch modules)
    saved = wrap_model(model).save(spec["out"] + "_saved/repaired.pt")
    again = keras.models.load_model(saved, compile=False)
    out["saved"] = {"path": saved, "same": bool(np.allclose(
        keras.ops.convert_to_numpy(again(x[:16])), keras.ops.convert_to_numpy(model(x[:16])),
        atol=1e-6))}
    out["activations"] = failure(lambda: wrap_model(model).neuron_activations(x[:4]))

    # the command line
    out["cli_code"] = cli.run(["scan", spec["model"], "--data", spec["data"], "--config",
                               spec["config"], "--out", spec["out"], "--no-progress"])
    out["cli_report"] = json.loads(open(spec["out"] + "/report.json").read())
    out["cli_forced_code"] = cli.run(["scan", spec["model"], "--data", spec["data"], "--config",
                                      spec["config"], "--out", spec["out"] + "_forced",
                                      "--no-progress", "--channels-first"])

    # the ART-compatible estimators
    out["keras_estimator"] = failure(lambda: KerasNeuralCleanse(model))
    shape = tuple(x.shape[1:])
    out["torch_estimator_default"] = failure(lambda: PyTorchNeuralCleanse(model, shape))
    est = PyTorchNeuralCleanse(model, shape, channels_first=False, steps=3)
    pattern, mask = est.generate_backdoor(x[:200], y[:200], spec["target"])
    out["torch_estimator"] = {"output": est.classifier.output, "mask_shape": list(mask.shape),
                              "pattern_shape": list(pattern.shape)}

    # small models: what is read from each
    out["small"] = {}
    for name, path in spec["small"].items():
        small = keras.models.load_model(path, compile=False)
        out["small"][name] = facts(wrap_model(small))
    first = keras.models.load_model(spec["small"]["channels_first"], compile=False)
    xs = np.random.default_rng(0).random((48, 1, 8, 8)).astype(np.float32)
    ys = np.arange(48) % 3
    tiny = cfg.replace(steps=2, mini_batches=1, label_batch=3)
    out["channels_first_scan"] = summary(scan(first, xs, ys, config=tiny))
    out["channels_first_nhwc"] = failure(
        lambda: scan(first, xs.transpose(0, 2, 3, 1), ys, config=tiny))
    open(spec["result"], "w").write(json.dumps(out))
''')


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A backdoored digits model scanned on TensorFlow here and on torch in a child."""
    root = tmp_path_factory.mktemp("keras_torch")
    digits = load_digits_splits(0)
    x_train, y_train = poison(digits.x_train, digits.y_train, 0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(nhwc(x_train), y_train, epochs=8, batch_size=32, verbose=0)
    model.save(root / "model.keras")
    x, y = nhwc(digits.x_clean), digits.y_clean
    np.savez(root / "data.npz", x=x, y=y)
    (root / "search.json").write_text(json.dumps(SEARCH))

    small = {}
    for name, (net, _, _) in small_models().items():
        small[name] = str(root / f"{name}.keras")
        net.save(small[name])

    spec = {"model": str(root / "model.keras"), "data": str(root / "data.npz"),
            "config": str(root / "search.json"), "search": SEARCH, "out": str(root / "cli"),
            "target": TARGET_LABEL, "small": small, "result": str(root / "torch.json")}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "child.py").write_text(CHILD)
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(root / "child.py"), str(root / "spec.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = keras.models.load_model(root / "model.keras", compile=False)
    return {"torch": json.loads(Path(spec["result"]).read_text()), "model": loaded,
            "x": x, "y": y,
            "tensorflow": scan(loaded, x, y, config=ScanConfig(**SEARCH))}


def test_the_child_ran_keras_on_torch(case: dict[str, Any]) -> None:
    assert case["torch"]["backend"] == "torch"
    assert case["torch"]["wrapped"]["torch_backend"] is True


def test_layout_shape_and_output_kind_come_from_the_keras_model(case: dict[str, Any]) -> None:
    # PyTorch's defaults would be channels first (an 16x1 mask) and logits
    assert case["torch"]["wrapped"] == {
        "torch_backend": True, "input_shape": [16, 16, 1], "image_shape": [16, 16],
        "channels_first": False, "output": "probabilities"}
    info = case["torch"]["api"]["model_info"]
    assert info["framework"] == "pytorch" and info["keras_backend"] == "torch"
    assert info["channels_first"] is False and info["output"] == "probabilities"
    assert case["torch"]["api"]["mask_shape"] == [10, 16, 16]


def test_both_keras_backends_give_the_same_norms_and_verdict(case: dict[str, Any]) -> None:
    on_tf, on_torch = case["tensorflow"], case["torch"]["api"]
    assert on_tf.model_info["framework"] == "tensorflow"
    assert on_tf.model_info["output"] == "probabilities"
    # the search is long enough for the planted backdoor to stand out
    assert TARGET_LABEL in on_tf.flagged_labels
    np.testing.assert_allclose(on_torch["norms"], on_tf.norms, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(on_torch["anomaly_index"], on_tf.anomaly_index, atol=1e-2)
    assert on_torch["flagged"] == list(on_tf.flagged_labels)


def test_images_without_a_channel_axis_get_it_last(case: dict[str, Any]) -> None:
    one = case["torch"]["api_hw"]
    assert one["mask_shape"] == [1, 16, 16]
    # a one-label scan is not confirmed: compare with the full scan's first run
    first = case["tensorflow"].confirmation["first_run"]
    np.testing.assert_allclose(one["norms"][TARGET_LABEL],
                               first["norms"][first["labels"].index(TARGET_LABEL)],
                               rtol=1e-3, atol=1e-3)


def test_misread_layouts_are_refused_in_one_line(case: dict[str, Any]) -> None:
    for key in ("nchw_data", "forced_channels_first", "wrapped_channels_first"):
        error = case["torch"][key]
        assert error is not None and error["input_error"], (key, error)
        assert "\n" not in error["message"]
    assert "(1, 16, 16)" in case["torch"]["nchw_data"]["message"]
    # without data to look at, the model's own layers refute the layout
    message = case["torch"]["wrapped_channels_first"]["message"]
    assert "data_format='channels_last'" in message and "channels_first=False" in message


def test_a_keras_model_is_saved_as_keras_and_its_layers_are_not_hooked(
        case: dict[str, Any]) -> None:
    saved = case["torch"]["saved"]
    assert saved["path"].endswith("repaired.keras") and saved["same"]
    refused = case["torch"]["activations"]
    assert refused is not None and refused["input_error"]
    assert "KERAS_BACKEND=tensorflow" in refused["message"]


def test_cli_scan_under_keras_backend_torch(case: dict[str, Any]) -> None:
    from neuralcleanse.frontends import cli

    on_tf = case["tensorflow"]
    report = case["torch"]["cli_report"]
    assert case["torch"]["cli_code"] == (cli.EXIT_FLAGGED if on_tf.flagged_labels
                                         else cli.EXIT_CLEAN)
    assert report["model_info"]["channel_order"] == "channels last"
    assert report["model_info"]["output"] == "probabilities"
    np.testing.assert_allclose([entry["norm"] for entry in report["labels"]], on_tf.norms,
                               rtol=1e-3, atol=1e-3)
    assert report["flagged_labels"] == list(on_tf.flagged_labels)
    # --channels-first contradicts the model's layers: bad input, not a misread scan
    assert case["torch"]["cli_forced_code"] == cli.EXIT_USAGE


def test_the_estimators_with_a_keras_model_on_torch(case: dict[str, Any]) -> None:
    # KerasNeuralCleanse is for Keras on TensorFlow (and tf_keras): a typed refusal
    refused = case["torch"]["keras_estimator"]
    assert refused is not None and refused["type"] == "InputTypeError"
    assert "'torch' backend" in refused["message"] and "\n" not in refused["message"]
    # PyTorchNeuralCleanse keeps ART's channels_first=True default, which this model refutes
    default = case["torch"]["torch_estimator_default"]
    assert default is not None and default["input_error"]
    assert "channels_first=False" in default["message"]
    assert case["torch"]["torch_estimator"] == {
        "output": "probabilities", "mask_shape": [16, 16], "pattern_shape": [16, 16, 1]}


@pytest.mark.parametrize("name", ["linear", "softmax_layer", "nested", "undeclared",
                                  "channels_first"])
def test_both_backends_read_small_models_alike(case: dict[str, Any], name: str) -> None:
    model, declared, channels_first = small_models()[name]
    read = case["torch"]["small"][name]
    shape = [1, 8, 8] if channels_first else [8, 8, 1]
    assert read["torch_backend"] is True
    assert read["input_shape"] == shape and read["image_shape"] == [8, 8]
    assert read["channels_first"] is channels_first
    assert keras_data_format(model) == ("channels_first" if channels_first else "channels_last",
                                        True)
    assert keras_output_kind(model) == declared
    expected = declared or "probabilities"  # "undeclared" ends in a softmax all the same
    assert read["output"] == expected
    if not channels_first:  # TensorFlow's CPU convolutions take channels last only
        assert KerasClassifier(model).output == expected


def test_a_channels_first_keras_model_scans_channels_first(case: dict[str, Any]) -> None:
    result = case["torch"]["channels_first_scan"]
    assert result["mask_shape"] == [3, 8, 8]
    assert result["model_info"]["channels_first"] is True
    refused = case["torch"]["channels_first_nhwc"]
    assert refused is not None and refused["input_error"] and "(8, 8, 1)" in refused["message"]


def test_layout_without_layers_that_declare_one_follows_the_keras_setting(monkeypatch) -> None:
    dense = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Reshape((64,)),
                              keras.layers.Dense(3)])
    assert keras_data_format(dense) == ("channels_last", False)
    assert keras_channels_first(dense, None) is False
    monkeypatch.setattr(keras.backend, "image_data_format", lambda: "channels_first")
    assert keras_data_format(dense) == ("channels_first", False)
    assert keras_channels_first(dense, None) is True
    # a given layout wins where the layers do not say, and is refused where they contradict it
    assert keras_channels_first(dense, False) is False
    conv, _, _ = small_models()["linear"]
    assert keras_channels_first(conv, None) is False and keras_channels_first(conv, False) is False
    with pytest.raises(InputError, match="data_format='channels_last'"):
        keras_channels_first(conv, True)


def test_rows_are_probabilities() -> None:
    assert rows_are_probabilities(np.array([[0.2, 0.8], [1.0, 0.0]]))
    assert not rows_are_probabilities(np.array([[0.2, 0.7]]))
    assert not rows_are_probabilities(np.array([[1.5, -0.5]]))
    assert not rows_are_probabilities(np.zeros((0, 3)))
