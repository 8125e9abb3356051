"""Shared, cached test models for the Keras backend and the ART-compatible estimator tests.

A small CNN is trained once per test process with Keras on scikit-learn's 8x8 digits (values in
[0, 1], channels last), 10 % of the training images carrying a 2x2 white square in the
bottom-right corner relabelled to ``TARGET``. The same weights are copied into an identical
PyTorch network (channels first), so both frameworks compute the same function.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from neuralcleanse.io.digits import digits_images, stamp_square
from paths import SHARED_DATA

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET = 7
POISON_RATE = 0.1
DATA_DIR = SHARED_DATA


def stamp_corner(x: np.ndarray, channels_first: bool = False, size: int = 2) -> np.ndarray:
    """The real trigger: a ``size`` x ``size`` white square in the bottom-right corner."""
    return stamp_square(x, size, channels_first=channels_first)


@functools.cache
def digits() -> dict[str, np.ndarray]:
    """Seeded split of the digits: poisoned train set, clean validation and test sets."""
    x, y = digits_images(channels_first=False)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[:1200].copy(), y[:1200].copy()
    poisoned = np.random.default_rng(1).random(len(x_train)) < POISON_RATE
    x_train[poisoned] = stamp_corner(x_train[poisoned])
    y_train[poisoned] = TARGET
    return {"x_train": x_train, "y_train": y_train, "x_val": x[1200:1500], "y_val": y[1200:1500],
            "x_test": x[1500:], "y_test": y[1500:]}


def keras_cnn(keras_module, softmax: bool = False):
    """The digits CNN in Keras (logits unless ``softmax``)."""
    layers = keras_module.layers
    return keras_module.Sequential([
        keras_module.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(64, activation="relu", name="fc1"),
        layers.Dense(10, activation="softmax" if softmax else None, name="logits"),
    ])


@functools.cache
def trained_keras_weights() -> tuple[np.ndarray, ...]:
    """Weights of the backdoored digits CNN, trained once per process (seeded)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras_cnn(keras)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = digits()
    model.fit(data["x_train"], data["y_train"], epochs=10, batch_size=32, verbose=0,
              shuffle=True)
    return tuple(w.copy() for w in model.get_weights())


def backdoored_keras(keras_module=None, softmax: bool = False):
    """A fresh Keras copy of the backdoored CNN (``keras`` or ``tf_keras``)."""
    if keras_module is None:
        import keras as keras_module
    model = keras_cnn(keras_module, softmax=softmax)
    model.set_weights(list(trained_keras_weights()))
    return model


def torch_cnn():
    """The digits CNN in PyTorch (channels first, logits)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def backdoored_torch():
    """A fresh PyTorch copy of the backdoored CNN, with the Keras weights ported."""
    import torch

    k1, b1, k2, b2, d1, c1, d2, c2 = trained_keras_weights()
    net = torch_cnn()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(k1.transpose(3, 2, 0, 1)))
        net[0].bias.copy_(torch.from_numpy(b1))
        net[3].weight.copy_(torch.from_numpy(k2.transpose(3, 2, 0, 1)))
        net[3].bias.copy_(torch.from_numpy(b2))
        # Keras flattens (H, W, C), PyTorch (C, H, W): reorder the rows of the first dense layer.
        w1 = d1.reshape(2, 2, 32, 64).transpose(3, 2, 0, 1).reshape(64, 128)
        net[7].weight.copy_(torch.from_numpy(w1))
        net[7].bias.copy_(torch.from_numpy(c1))
        net[9].weight.copy_(torch.from_numpy(d2.T.copy()))
        net[9].bias.copy_(torch.from_numpy(c2))
    return net.eval()


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` to ``(N, C, H, W)``."""
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose argmax is the label."""
    return float((predictions.argmax(axis=1) == labels).mean())
