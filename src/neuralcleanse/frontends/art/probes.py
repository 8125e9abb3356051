"""What the estimators check on a newly wrapped model, from the outputs of a probe batch.

The probe is a seeded batch drawn uniformly from the clip range, so the same model always gets
the same answer. The rule that tells probability rows from logits is the library's
(:func:`~neuralcleanse.core.checks.rows_are_probabilities`).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np

from neuralcleanse.backends.differentiable import DifferentiableClassifier
from neuralcleanse.core.checks import rows_are_probabilities
from neuralcleanse.core.errors import InputError, one_line

#: Inputs in a probe batch.
PROBE_SIZE = 8


def probe_outputs(clf: DifferentiableClassifier) -> np.ndarray:
    """The model's outputs on the probe batch.

    Raises:
        InputError: If the model cannot run on inputs of its declared shape.
    """
    lo, hi = clf.clip_values
    shape = (PROBE_SIZE, *clf.input_shape)
    probe = np.random.default_rng(0).uniform(lo, hi, shape).astype(np.float32)
    try:
        return np.asarray(clf.predict(probe))
    except Exception as exc:  # noqa: BLE001 - the model rejected the input shape
        raise InputError(f"the model could not run on inputs of shape {shape}: "
                         f"{one_line(exc)}") from None


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points the caller's warning at the first frame outside this package.

    That frame is the user's call of a constructor or of ``set_params``.
    """
    here = Path(__file__).resolve().parent
    frame, level = inspect.currentframe(), 0
    while frame is not None and Path(frame.f_code.co_filename).resolve().parent == here:
        frame, level = frame.f_back, level + 1
    return max(level, 1)


def warn_if_use_logits_contradicted(outputs: np.ndarray, use_logits: bool) -> None:
    """Warn when the probe's ``outputs`` contradict ``use_logits``."""
    probabilities = rows_are_probabilities(outputs)
    stacklevel = _caller_stacklevel()
    if use_logits and probabilities:
        warnings.warn("use_logits=True but the model's outputs are probability rows; pass "
                      "use_logits=False so that the loss takes their logarithm", UserWarning,
                      stacklevel=stacklevel)
    elif not use_logits and not probabilities:
        warnings.warn("use_logits=False but the model's outputs are not probabilities (rows "
                      "of non-negative values summing to 1); pass use_logits=True",
                      UserWarning, stacklevel=stacklevel)


def check_nb_classes(outputs: np.ndarray, nb_classes: int) -> None:
    """Refuse an ``nb_classes`` that differs from the number of scores the probe's ``outputs`` hold.

    Raises:
        InputError: Naming both numbers.
    """
    out = np.asarray(outputs)
    width = out.shape[1] if out.ndim == 2 else None
    if width != nb_classes:
        found = width if width is not None else f"outputs of shape {out.shape}"
        raise InputError(f"nb_classes={nb_classes} but the model returns {found} scores per "
                         "input; give the model's number of outputs, or leave nb_classes out "
                         "to count them")
