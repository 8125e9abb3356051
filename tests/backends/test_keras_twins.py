"""A Keras model and its exact PyTorch twin give the same logits and the same scan.

The twin is built by the speed benchmark's weight copy (``benchmarks/keras_twins.py``: HWIO ->
OIHW convolution kernels, the first Dense layer's rows from Keras' (h, w, c) flattening to
torch's (c, h, w)), so the benchmark compares like with like. The pair is a small digits CNN with
a planted backdoor (the demo's white square, target label 7).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

if keras.backend.backend() != "tensorflow":
    pytest.skip("the Keras side of the twins runs on TensorFlow; KERAS_BACKEND is "
                f"{keras.backend.backend()!r}", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from keras_twins import torch_twin  # noqa: E402
from neuralcleanse import ScanConfig, scan  # noqa: E402
from neuralcleanse.backends.tensorflow.classifier import KerasClassifier  # noqa: E402
from neuralcleanse.backends.torch.classifier import TorchClassifier  # noqa: E402
from neuralcleanse.frontends.demo import TARGET_LABEL, load_digits_splits, poison  # noqa: E402

#: A short search of every label at once, the paper's verdict rule.
SEARCH = ScanConfig(steps=25, mini_batches=4, batch_size=32, label_batch=10,
                    early_stop_patience=5, seed=0, verdict="paper", progress=False)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


@functools.cache
def backdoored_pair() -> tuple[Any, torch.nn.Module, np.ndarray, np.ndarray]:
    """A backdoored Keras digits CNN (logits), its torch twin and clean NCHW images."""
    digits = load_digits_splits(0)
    x_train, y_train = poison(digits.x_train, digits.y_train, 0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(2), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(nhwc(x_train), y_train, epochs=6, batch_size=32, verbose=0)
    return model, torch_twin(model), digits.x_clean.astype(np.float32), digits.y_clean


def test_the_twins_give_the_same_logits():
    model, twin, x, _ = backdoored_pair()
    keras_out = np.asarray(model(nhwc(x), training=False))
    with torch.no_grad():
        torch_out = twin(torch.from_numpy(x)).numpy()
    scale = np.abs(keras_out).max()
    np.testing.assert_allclose(keras_out, torch_out, rtol=0, atol=1e-5 * scale)
    # a wrong flattening order would still give outputs of the right shape: make sure the
    # first Dense layer really reads every spatial position (the copy is not vacuous)
    assert (keras_out.argmax(1) == torch_out.argmax(1)).all()
    assert np.abs(keras_out - keras_out.mean(0)).max() > 0.1 * scale


def test_the_twins_flag_the_same_planted_backdoor_with_close_norms(one_torch_thread):
    model, twin, x, y = backdoored_pair()
    k_result = scan(KerasClassifier(model, output="logits"), nhwc(x), y, config=SEARCH)
    t_result = scan(TorchClassifier(twin, (1, 16, 16), output="logits"), x, y, config=SEARCH)
    assert k_result.flagged_labels == t_result.flagged_labels == [TARGET_LABEL]
    # the same step to float rounding (test_a_step_matches_the_pytorch_backend); over a whole
    # search the rounding may flip a cost-schedule decision, so the norms are close, not equal
    np.testing.assert_allclose(k_result.norms, t_result.norms, rtol=0.05)
    target = TARGET_LABEL
    np.testing.assert_allclose(k_result.norms[target], t_result.norms[target], rtol=0.02)
