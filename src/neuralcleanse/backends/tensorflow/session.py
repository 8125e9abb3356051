"""The TensorFlow trigger session: stacked trigger parameters and their compiled step.

The math of the step is :class:`~neuralcleanse.backends.base.TriggerSession`'s; this module only
says how TensorFlow computes it: one ``tf.function`` per classifier and settings, traced once
for every stack size, that runs all mini-batches of a step in the graph (a ``GradientTape`` per
mini-batch, Adam written out on the ``(labels, P)`` parameter tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from neuralcleanse.backends.base import (
    ADAM_BETAS,
    ADAM_EPSILON,
    TANH_EPSILON,
    StepStats,
    TriggerSession,
)
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.layout import mask_axes

if TYPE_CHECKING:
    from neuralcleanse.backends.tensorflow.classifier import KerasClassifier


def compile_trigger_step(clf: KerasClassifier, lr: float, norm: float, lo: float, hi: float
                         ) -> Callable[..., Any]:
    """The compiled step of a stacked trigger search; follows :class:`TriggerSession`.

    The function takes ``(x, y, theta, m, v, t, targets, index, cost)``: the clean images and
    labels, the ``(labels, P)`` parameters with their Adam moments and per-slot update counts,
    the slots' target labels, the ``(M, labels, B)`` batch indices and the per-slot costs. It
    returns the updated ``theta, m, v, t`` and a ``(3, labels)`` summary (success rate, mean
    reg, mean loss). Each trace increments ``clf.traces``.
    """
    shape = list(clf.input_shape)
    h, w = clf.image_shape
    n_mask = h * w
    # (labels, H*W) masks against (labels, batch, *input_shape) images
    mask_view = [-1, 1, *mask_axes(tuple(clf.input_shape), clf.channels_first)]
    scale = 1.0 / (2.0 - TANH_EPSILON)
    beta1, beta2 = ADAM_BETAS
    n_params = n_mask + int(np.prod(shape))

    def regulariser(mask: tf.Tensor) -> tf.Tensor:
        if norm == 1:
            return tf.reduce_sum(mask, axis=[1, 2])
        if norm == 2:
            return tf.sqrt(tf.reduce_sum(tf.square(mask), axis=[1, 2]))
        return tf.reduce_max(mask, axis=[1, 2])

    def step(x: tf.Tensor, y: tf.Tensor, theta: tf.Tensor, m: tf.Tensor, v: tf.Tensor,
             t: tf.Tensor, targets: tf.Tensor, index: tf.Tensor, cost: tf.Tensor
             ) -> tuple[tf.Tensor, ...]:
        clf.traces += 1  # Python side effect: runs only while tracing
        n_mb, n_labels, batch = tf.unstack(tf.shape(index))
        zeros = tf.zeros([n_labels], tf.float32)
        hits, counted, reg_sum, loss_sum = zeros, zeros, zeros, zeros
        target_col = targets[:, None]
        for j in tf.range(n_mb):
            flat = tf.reshape(index[j], [-1])
            xb = tf.reshape(tf.gather(x, flat), tf.concat([[n_labels, batch], shape], 0))
            yb = tf.reshape(tf.gather(y, flat), [n_labels, batch])
            with tf.GradientTape() as tape:
                tape.watch(theta)
                mask = tf.reshape(tf.tanh(theta[:, :n_mask]) * scale + 0.5, [-1, h, w])
                pattern = tf.tanh(theta[:, n_mask:]) * scale + 0.5
                pattern = tf.reshape(lo + pattern * (hi - lo), [-1, 1, *shape])
                stamped = xb + tf.reshape(mask, mask_view) * (pattern - xb)
                out = clf._call(tf.reshape(stamped, [-1, *shape]), training=False)
                out = tf.reshape(out, [n_labels, batch, -1])
                log_p = clf._log_probabilities(out)
                picked = tf.gather(log_p, tf.repeat(target_col, batch, axis=1), axis=2,
                                   batch_dims=2)
                ce = -tf.reduce_mean(picked, axis=1)
                reg = regulariser(mask)
                per_label = ce + cost * reg
                total = tf.reduce_sum(per_label)
            grad = tape.gradient(total, theta)
            t = t + 1.0
            m = beta1 * m + (1.0 - beta1) * grad
            v = beta2 * v + (1.0 - beta2) * tf.square(grad)
            bias1 = (1.0 - tf.pow(beta1, t))[:, None]
            bias2 = (1.0 - tf.pow(beta2, t))[:, None]
            theta = theta - (lr / bias1) * m / (tf.sqrt(v / bias2) + ADAM_EPSILON)
            other = tf.not_equal(yb, target_col)
            predicted = tf.argmax(out, axis=2, output_type=tf.int32)
            hit = tf.logical_and(tf.equal(predicted, target_col), other)
            hits += tf.reduce_sum(tf.cast(hit, tf.float32), axis=1)
            counted += tf.reduce_sum(tf.cast(other, tf.float32), axis=1)
            reg_sum += reg
            loss_sum += per_label
        n = tf.cast(n_mb, tf.float32)
        summary = tf.stack([hits / tf.maximum(counted, 1.0), reg_sum / n, loss_sum / n])
        return theta, m, v, t, summary

    spec = tf.TensorSpec
    signature = [spec([None, *shape], tf.float32), spec([None], tf.int32),
                 spec([None, n_params], tf.float32), spec([None, n_params], tf.float32),
                 spec([None, n_params], tf.float32), spec([None], tf.float32),
                 spec([None], tf.int32), spec([None, None, None], tf.int32),
                 spec([None], tf.float32)]
    return tf.function(step, input_signature=signature)


class KerasTriggerSession(TriggerSession):
    """Trigger parameters of a stack of labels as one ``(labels, P)`` tensor with Adam state.

    Follows :class:`~neuralcleanse.backends.base.TriggerSession`. Opened by
    :meth:`KerasClassifier.trigger_session`; the model's variables are only read.

    Args:
        clf: The classifier whose model is searched.
        x: Clean raw images in the model's layout.
        y: Their integer labels.
        config: The scan settings (``learning_rate`` and ``norm`` are used).
    """

    def __init__(self, clf: KerasClassifier, x: np.ndarray, y: np.ndarray,
                 config: ScanConfig) -> None:
        self.clf = clf
        self.x = tf.constant(np.ascontiguousarray(x, dtype=np.float32))
        self.y = tf.constant(np.asarray(y, dtype=np.int32))
        self.shape = clf.input_shape
        self.hw = clf.image_shape
        self.n_mask = self.hw[0] * self.hw[1]
        self.n_params = self.n_mask + int(np.prod(self.shape))
        self.lo, self.hi = clf.clip_values
        self._step = clf.trigger_step_function(config)
        self.theta = tf.zeros((0, self.n_params))
        self.m = tf.zeros_like(self.theta)
        self.v = tf.zeros_like(self.theta)
        self.t = tf.zeros((0,))
        self.targets = tf.zeros((0,), tf.int32)

    @property
    def size(self) -> int:
        """Follows :attr:`TriggerSession.size`."""
        return int(self.theta.shape[0])

    def add(self, targets: np.ndarray, mask_raw: np.ndarray, pattern_raw: np.ndarray) -> None:
        """Follows :meth:`TriggerSession.add`."""
        k = len(targets)
        new = np.concatenate([mask_raw.reshape(k, -1), pattern_raw.reshape(k, -1)], axis=1)
        new_t = tf.constant(new.astype(np.float32))
        self.theta = tf.concat([self.theta, new_t], 0)
        self.m = tf.concat([self.m, tf.zeros_like(new_t)], 0)
        self.v = tf.concat([self.v, tf.zeros_like(new_t)], 0)
        self.t = tf.concat([self.t, tf.zeros((k,))], 0)
        self.targets = tf.concat([self.targets, tf.constant(np.asarray(targets), tf.int32)], 0)

    def remove(self, slots: np.ndarray) -> None:
        """Follows :meth:`TriggerSession.remove`."""
        keep = tf.constant(np.setdiff1d(np.arange(self.size), np.asarray(slots)), tf.int32)
        for name in ("theta", "m", "v", "t", "targets"):
            setattr(self, name, tf.gather(getattr(self, name), keep))

    def state(self) -> dict[str, np.ndarray]:
        """Follows :meth:`TriggerSession.state`."""
        out = {name: np.array(getattr(self, name).numpy(), dtype=np.float32)
               for name in ("theta", "m", "v", "t")}
        out["targets"] = self.targets.numpy().astype(np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Follows :meth:`TriggerSession.load_state`."""
        for name in ("theta", "m", "v", "t"):
            value = np.asarray(state[name], dtype=np.float32).reshape(
                (-1, self.n_params) if name != "t" else (-1,))
            setattr(self, name, tf.constant(value))
        self.targets = tf.constant(np.asarray(state["targets"]), tf.int32)

    def step(self, batch_indices: np.ndarray, costs: np.ndarray) -> StepStats:
        """Follows :meth:`TriggerSession.step` (one call of the compiled step)."""
        index = tf.constant(np.asarray(batch_indices, np.int32))
        cost = tf.constant(np.asarray(costs, np.float32))
        self.theta, self.m, self.v, self.t, summary = self._step(
            self.x, self.y, self.theta, self.m, self.v, self.t, self.targets, index, cost)
        host = summary.numpy().astype(np.float64)
        return StepStats(attack_success_rate=host[0], reg=host[1], loss=host[2])

    def triggers(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Follows :meth:`TriggerSession.triggers` (decoded on the host)."""
        theta = tf.gather(self.theta, tf.constant(np.asarray(slots), tf.int32)).numpy()
        scale = 1.0 / (2.0 - TANH_EPSILON)
        mask = np.tanh(theta[:, :self.n_mask]) * scale + 0.5
        pattern = np.tanh(theta[:, self.n_mask:]) * scale + 0.5
        pattern = self.lo + pattern * (self.hi - self.lo)
        return (mask.reshape(-1, *self.hw).astype(np.float32),
                pattern.reshape(-1, *self.shape).astype(np.float32))
