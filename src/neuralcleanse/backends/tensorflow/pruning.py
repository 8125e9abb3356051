"""Reversible neuron pruning of Keras models: weight slices zeroed and kept aside.

Keras layers take no hooks, so pruning is done on the weights: the pruned slices of a layer's
kernel (and bias) are kept in a :class:`PrunedSlices` record and set to zero; restoring writes
them back. A saved model therefore holds the pruning as it behaves.

Two sides are pruned: ``"input"``, the rows of the final Dense layer's kernel (the neurons'
outgoing connections, removed exactly), and ``"output"``, a Dense or convolution layer's output
channels (kernel columns and bias), which needs an activation that maps 0 to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from neuralcleanse.core.errors import InputError


@dataclass
class PrunedSlices:
    """Pruned neurons of one layer and the weight slices they had before."""

    side: str
    neurons: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray | None


def prune(records: dict[str, PrunedSlices], key: str, layer: Any, side: str,
          neurons: np.ndarray) -> None:
    """Prune ``neurons`` of ``layer`` on ``side``, replacing the pruning recorded under ``key``.

    The earlier record's slices are written back first; ``neurons=[]`` only undoes it.

    Raises:
        InputError: If the neurons cannot be pruned (see :func:`check_prunable`).
    """
    idx = np.unique(np.asarray(neurons, dtype=np.int64).ravel())
    check_prunable(layer, side, idx)
    earlier = records.pop(key, None)
    if earlier is not None:
        restore_slices(layer, earlier)
    if idx.size:
        record = records[key] = take_slices(layer, side, idx)
        zero_slices(layer, record)


def check_prunable(layer: Any, side: str, neurons: np.ndarray) -> None:
    """Refuse neurons that ``layer`` cannot have pruned on ``side``.

    Raises:
        InputError: If the layer has no kernel, a neuron is out of range, or (output side) the
            layer's activation does not map 0 to 0.
    """
    if getattr(layer, "kernel", None) is None:
        raise InputError(f"layer {layer.name!r} ({type(layer).__name__}) has no kernel: "
                         "pruning works on Dense and convolution layers")
    width = int(layer.kernel.shape[0] if side == "input" else layer.kernel.shape[-1])
    if neurons.size and (neurons.min() < 0 or neurons.max() >= width):
        raise InputError(f"neurons must be in [0, {width}) for layer {layer.name!r} "
                         f"(got {neurons.min()}..{neurons.max()})")
    if side == "output" and neurons.size:
        activation = getattr(layer, "activation", None)
        if activation is not None and float(tf.reduce_max(tf.abs(
                activation(tf.zeros((1, 1)))))) != 0.0:
            raise InputError(f"layer {layer.name!r} has an activation that does not map 0 "
                             "to 0, so zeroing its weights would not silence its neurons")


def take_slices(layer: Any, side: str, neurons: np.ndarray) -> PrunedSlices:
    """A record of the current weight slices of ``neurons`` (not yet zeroed)."""
    kernel = layer.kernel.numpy()
    saved = kernel[neurons, :].copy() if side == "input" else kernel[..., neurons].copy()
    bias = None
    if side == "output" and getattr(layer, "bias", None) is not None:
        bias = layer.bias.numpy()[neurons].copy()
    return PrunedSlices(side=side, neurons=neurons, kernel=saved, bias=bias)


def _write_slices(kernel: np.ndarray, record: PrunedSlices, values: Any) -> None:
    if record.side == "input":
        kernel[record.neurons, :] = values
    else:
        kernel[..., record.neurons] = values


def zero_slices(layer: Any, record: PrunedSlices) -> None:
    """Set the recorded neurons' weight slices of ``layer`` to zero."""
    kernel = layer.kernel.numpy()
    _write_slices(kernel, record, 0.0)
    layer.kernel.assign(kernel)
    if record.bias is not None:
        bias = layer.bias.numpy()
        bias[record.neurons] = 0.0
        layer.bias.assign(bias)


def restore_slices(layer: Any, record: PrunedSlices) -> None:
    """Write the recorded weight slices back into ``layer``."""
    kernel = layer.kernel.numpy()
    _write_slices(kernel, record, record.kernel)
    layer.kernel.assign(kernel)
    if record.bias is not None:
        bias = layer.bias.numpy()
        bias[record.neurons] = record.bias
        layer.bias.assign(bias)
