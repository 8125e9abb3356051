"""ART's pre- and postprocessing defences, applied the way ART's estimators apply them.

A preprocessing defence is a callable ``defence(x, y) -> (x, y)`` (an ART ``Preprocessor`` is
one) whose ``apply_fit`` / ``apply_predict`` flags say where it runs and whose optional
``estimate_gradient(x, grad)`` carries a gradient back through it (the identity when absent). A
postprocessing defence is a callable ``post(preds) -> preds`` with an ``apply_predict`` flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neuralcleanse.frontends.art.parameters import Defence

#: The defences a batch went through, each with its input: what a gradient is carried back over.
Trace = list[tuple[Defence, np.ndarray]]


def preprocess(defences: Sequence[Defence] | None, x: np.ndarray, y: Any = None,
               fit: bool = False) -> tuple[np.ndarray, Any, Trace]:
    """Apply the preprocessing defences that run in training (``fit``) or prediction.

    Returns:
        ``(x, y, trace)``: the defended batch and labels, and the defences applied in order,
        each with the batch it was given.
    """
    trace: Trace = []
    flag = "apply_fit" if fit else "apply_predict"
    for defence in defences or ():
        if not getattr(defence, flag, True):
            continue
        trace.append((defence, x))
        x, y = defence(x, y)
        x = np.asarray(x, dtype=np.float32)
    return x, y, trace


def gradient_through(grad: np.ndarray, trace: Trace) -> np.ndarray:
    """Carry a gradient with respect to the defended batch back to the raw batch."""
    for defence, x_in in reversed(trace):
        estimate = getattr(defence, "estimate_gradient", None)
        if estimate is not None:
            grad = np.asarray(estimate(x_in, grad), dtype=np.float32)
    return grad


def postprocess(defences: Sequence[Defence] | None, preds: np.ndarray) -> np.ndarray:
    """Apply the postprocessing defences that run in prediction."""
    for post in defences or ():
        if getattr(post, "apply_predict", True):
            preds = np.asarray(post(preds))
    return preds
