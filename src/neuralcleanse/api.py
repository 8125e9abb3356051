"""The modern entry point: ``scan(model, x, y) -> ScanResult``."""

from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__
from .backends import Classifier, wrap_model
from .backends.base import Preprocessing
from .config import ScanConfig
from .data import as_images, as_label_vector, class_counts, infer_clip_values
from .errors import InputError
from .restarts import combine_restarts
from .results import LabelResult, ScanResult
from .reverse import LabelCallback, reverse_engineer


def versions() -> dict[str, str]:
    """Versions of Python, numpy, this package and any loaded framework."""
    out = {"neuralcleanse": __version__, "python": platform.python_version(),
           "numpy": np.__version__}
    for name in ("torch", "tensorflow", "keras"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            out[name] = str(mod.__version__)
    return out


def _is_channels_first_model(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def prepare(model: Any, x: np.ndarray, y: np.ndarray | None = None, *,
            output: str | None = None, channels_first: bool | None = None,
            clip_values: tuple[float, float] | None = None,
            preprocessing: Preprocessing = None, device: Any = None,
            ) -> tuple[Classifier, np.ndarray, np.ndarray | None]:
    """Validate the data and wrap the model; shared by scan and mitigation.

    A batch of single-channel images ``(N, H, W)`` gets its channel axis added where the model
    expects it. ``clip_values`` defaults to [0, 1] or [0, 255], whichever the data fits.

    Returns:
        ``(classifier, x as float32 in the model's layout, y as int64 labels or None)``.
    """
    images = as_images(x)
    if channels_first is None:
        channels_first = getattr(model, "channels_first", None)
        if channels_first is None:
            channels_first = _is_channels_first_model(model)
    if images.ndim == 3:
        images = images[:, None] if channels_first else images[..., None]
    if clip_values is None:
        clip_values = getattr(model, "clip_values", None) or infer_clip_values(images)
    lo, hi = float(clip_values[0]), float(clip_values[1])
    tolerance = 1e-4 * (hi - lo)
    if images.min() < lo - tolerance or images.max() > hi + tolerance:
        raise InputError(f"x has values in [{images.min():g}, {images.max():g}], outside "
                         f"clip_values [{lo:g}, {hi:g}]: give raw images in the model's input "
                         "range, or set clip_values")
    options: dict[str, Any] = dict(channels_first=channels_first, clip_values=(lo, hi),
                                   preprocessing=preprocessing, input_shape=images.shape[1:])
    if output is not None:
        options["output"] = output
    if device is not None:
        options["device"] = device
    clf = model if isinstance(model, Classifier) else wrap_model(model, **options)
    if tuple(clf.input_shape) != tuple(images.shape[1:]):
        raise InputError(f"x has images of shape {images.shape[1:]} but the model expects "
                         f"{tuple(clf.input_shape)}")
    labels = None if y is None else as_label_vector(y, len(images), clf.nb_classes)
    check_output_kind(clf, images[:64])
    return clf, images, labels


def check_output_kind(clf: Classifier, sample: np.ndarray) -> None:
    """Warn when the outputs contradict the declared kind (logits vs probabilities)."""
    out = clf.predict(sample)
    looks_like_probabilities = bool(
        np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6)
        and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    if clf.output == "logits" and looks_like_probabilities:
        warnings.warn("the model's outputs look like probabilities (non-negative rows summing to "
                      "1) but output='logits' was given; pass output='probabilities' so that the "
                      "loss takes their logarithm", UserWarning, stacklevel=3)
    elif clf.output == "probabilities" and not looks_like_probabilities:
        warnings.warn("output='probabilities' was given but the model's outputs are not "
                      "probability rows; pass output='logits'", UserWarning, stacklevel=3)


def scan(model: Any, x: np.ndarray, y: np.ndarray, *, config: ScanConfig | None = None,
         output: str | None = None, channels_first: bool | None = None,
         clip_values: tuple[float, float] | None = None, preprocessing: Preprocessing = None,
         device: Any = None, labels: Sequence[int] | None = None,
         on_label_done: LabelCallback | None = None,
         done: Sequence[LabelResult] = (), restarts: int = 1, **options: Any) -> ScanResult:
    """Scan a classifier for backdoors with Neural Cleanse.

    Args:
        model: A ``torch.nn.Module`` or a Keras model (see
            :func:`~neuralcleanse.backends.wrap_model`).
        x: Clean raw images, ``(N, C, H, W)`` or ``(N, H, W, C)`` as the model takes them, or
            ``(N, H, W)`` for single-channel images.
        y: Their labels, integers ``(N,)`` or one-hot ``(N, classes)``.
        config: Search settings; defaults to the paper's (:class:`ScanConfig`).
        output: ``"logits"`` (default for PyTorch) or ``"probabilities"``.
        channels_first: Input layout; defaults to ``True`` for PyTorch, ``False`` for Keras.
        clip_values: Raw input range; inferred from ``x`` as [0, 1] or [0, 255] when omitted.
        preprocessing: ``(subtrahend, divisor)`` or a callable, applied after stamping.
        device: Compute device for PyTorch models (default: where the model lives); another
            device scans a copy of the model moved there, the model itself stays put.
        labels: Scan only these labels (default: all).
        on_label_done: Called with each label's result as soon as it is finished.
        done: Results of labels finished earlier (to resume an interrupted scan).
        restarts: Run the search with this many seeds (``seed``, ``seed + 1``, ...); each label
            then reports its median norm, the verdict is taken on the medians, and
            ``result.restarts`` says in how many runs each label was flagged.
        **options: Any :class:`ScanConfig` field, overriding ``config``.

    Returns:
        The :class:`ScanResult` with every label's trigger, norm and anomaly index and the
        flagged labels.
    """
    started = time.perf_counter()
    cfg = (config or ScanConfig()).replace(**options)
    clf, images, targets = prepare(model, x, y, output=output, channels_first=channels_first,
                                   clip_values=clip_values, preprocessing=preprocessing,
                                   device=device)
    assert targets is not None
    wanted = list(range(clf.nb_classes)) if labels is None else [int(t) for t in labels]
    bad = [t for t in wanted if not 0 <= t < clf.nb_classes]
    if bad or not wanted:
        raise InputError(f"labels must be a non-empty subset of 0..{clf.nb_classes - 1} "
                         f"(got {list(labels or [])})")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1 (got {restarts!r})")
    if restarts > 1 and done:
        raise InputError("resuming (done=...) is only supported with restarts=1")
    finished = {r.label: r for r in done if r.label in wanted}
    todo = [t for t in wanted if t not in finished]
    details: dict[str, Any] = {}
    if restarts == 1:
        new = reverse_engineer(clf, images, targets, cfg, labels=todo,
                               on_label_done=on_label_done) if todo else []
    else:
        seeds = [cfg.seed + i for i in range(restarts)]
        runs, run_seconds = [], []
        for s in seeds:
            run_started = time.perf_counter()
            runs.append(reverse_engineer(clf, images, targets, cfg.replace(seed=s), labels=todo,
                                         on_label_done=on_label_done))
            run_seconds.append(time.perf_counter() - run_started)
        new, details = combine_restarts(runs, seeds, cfg.anomaly_threshold)
        details["wall_seconds"] = [round(t, 3) for t in run_seconds]
    return ScanResult.from_labels(
        list(finished.values()) + new, nb_classes=clf.nb_classes, restarts=details,
        anomaly_threshold=cfg.anomaly_threshold, config=cfg.to_dict(),
        model_info=clf.describe(),
        data_info={"n_images": int(len(images)),
                   "class_counts": class_counts(targets, clf.nb_classes)},
        versions=versions(), wall_seconds=time.perf_counter() - started)
