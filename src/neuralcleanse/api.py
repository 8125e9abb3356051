"""The modern entry point: ``scan(model, x, y) -> ScanResult``."""

from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import __version__
from .backends import Classifier, wrap_model
from .backends.base import Preprocessing
from .config import MAX_SEED, ScanConfig
from .data import as_images, as_label_vector, class_counts, infer_clip_values
from .data_files import CHANNEL_COUNTS
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
    """Whether the model reads channels-first images when nothing says otherwise.

    A Keras model reads them in its own data format, whichever framework runs it (a Keras 3
    model on the torch backend is a ``torch.nn.Module`` too); other PyTorch models channels
    first.
    """
    from .backends.base import keras_data_format, keras_module

    if keras_module(model) is not None:
        return keras_data_format(model)[0] == "channels_first"
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
    torch = sys.modules.get("torch")
    # a layout the data contradicts is refused before a PyTorch model runs on it (its error
    # would not name the layout); an unsupported model type is reported first
    early = isinstance(model, Classifier) or (torch is not None
                                              and isinstance(model, torch.nn.Module))
    if early:
        check_layout(images.shape, bool(channels_first), model)
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
    if not early:
        check_layout(images.shape, bool(channels_first), clf)
    if clf.nb_classes < 2:
        raise InputError(f"the model has {clf.nb_classes} output(s): Neural Cleanse needs a "
                         "classifier with one score per class, at least 2 classes")
    if tuple(clf.input_shape) != tuple(images.shape[1:]):
        raise InputError(f"x has images of shape {images.shape[1:]} but the model expects "
                         f"{tuple(clf.input_shape)}")
    labels = None if y is None else as_label_vector(y, len(images), clf.nb_classes)
    check_output_kind(clf, images[:64])
    return clf, images, labels


def check_layout(shape: tuple[int, ...], channels_first: bool, model: Any = None) -> None:
    """Refuse a channel layout that the images' shape (or a PyTorch model) contradicts.

    With ``channels_first`` the channels are axis 1 of the batch, else its last axis. A layout
    is refused when the axis it names as channels has a size other than 1, 3 or 4 while the
    other end has one of them (e.g. ``(N, 1, 28, 28)`` read channels-last would be 28 channels
    of 1x28 images), and, for a PyTorch model whose first convolution takes ``C`` channels,
    when the named axis is not ``C`` but the other end is.

    Raises:
        InputError: Naming the layout to use.
    """
    if len(shape) != 4:
        return
    first, last = int(shape[1]), int(shape[-1])
    named, other = (first, last) if channels_first else (last, first)
    flag = "channels_first=True" if channels_first else "channels_first=False"
    where = "first" if channels_first else "last"
    fix = ("the images look channels-last: transpose them to (N, C, H, W) (x.transpose(0, 3, 1, "
           "2)), or pass channels_first=False if the model reads (N, H, W, C)" if channels_first
           else "the images look channels-first: transpose them to (N, H, W, C) (x.transpose(0, "
           "2, 3, 1)), or pass channels_first=True if the model reads (N, C, H, W)")
    if named not in CHANNEL_COUNTS and other in CHANNEL_COUNTS:
        raise InputError(f"{flag} contradicts images of shape {tuple(shape[1:])}: it reads "
                         f"{named} channels from the {where} axis, but the other end ({other}) "
                         f"looks like the channels; {fix}")
    expected = _first_conv_channels(model)
    if expected is not None and named != expected and other == expected:
        raise InputError(f"{flag} contradicts images of shape {tuple(shape[1:])}: the model's "
                         f"first convolution takes {expected} channels, which is the other "
                         f"end of the images, not the {where} axis ({named}); {fix}")


def _first_conv_channels(model: Any) -> int | None:
    """Input channels of a PyTorch model's first ``Conv2d`` (``None`` when there is none)."""
    torch = sys.modules.get("torch")
    module = getattr(model, "model", None) if isinstance(model, Classifier) else model
    if torch is None or not isinstance(module, torch.nn.Module):
        return None
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d) and int(m.in_channels) > 0:
            return int(m.in_channels)
    return None


def check_output_kind(clf: Classifier, sample: np.ndarray) -> None:
    """Check the outputs on clean images; warn when they contradict the declared kind.

    Raises:
        InputError: When the outputs are not one row of ``nb_classes`` scores per image, or
            hold NaN or infinite values.
    """
    out = np.asarray(clf.predict(sample))
    if out.ndim != 2 or out.shape[0] != len(sample):
        raise InputError(f"the model must return one row of class scores per image; got output "
                         f"shape {out.shape} for {len(sample)} images")
    if out.shape[1] != clf.nb_classes:
        raise InputError(f"the model returned {out.shape[1]} scores per image but nb_classes is "
                         f"{clf.nb_classes}")
    bad = int((~np.all(np.isfinite(out), axis=1)).sum())
    if bad:
        raise InputError(f"the model returned NaN/Inf for clean images ({bad} of the "
                         f"{len(sample)} checked): no trigger can be searched on such outputs; "
                         "check the model, its weights and the preprocessing")
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
    wanted = list(range(clf.nb_classes)) if labels is None else _label_list(labels,
                                                                            clf.nb_classes)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1 (got {restarts!r})")
    if restarts > 1 and done:
        raise InputError("resuming (done=...) is only supported with restarts=1")
    if cfg.seed + restarts - 1 > MAX_SEED:
        raise InputError(f"seed + restarts - 1 must be <= {MAX_SEED} (the seeds of the runs "
                         f"are seed, seed + 1, ...; got seed {cfg.seed}, restarts {restarts})")
    finished = {r.label: r for r in done if r.label in wanted}
    counts = class_counts(targets, clf.nb_classes)
    without_data = [t for t in wanted if counts[t] == 0]
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
        new, details = combine_restarts(runs, seeds, cfg.anomaly_threshold,
                                        labels_without_data=without_data)
        details["wall_seconds"] = [round(t, 3) for t in run_seconds]
    return ScanResult.from_labels(
        list(finished.values()) + new, nb_classes=clf.nb_classes, restarts=details,
        anomaly_threshold=cfg.anomaly_threshold, config=cfg.to_dict(),
        model_info=clf.describe(), labels_without_data=without_data,
        data_info={"n_images": int(len(images)), "class_counts": counts},
        versions=versions(), wall_seconds=time.perf_counter() - started)


def _label_list(labels: Any, nb_classes: int) -> list[int]:
    """The labels to scan, checked: label numbers in range, each once."""
    try:
        if isinstance(labels, (str, bytes, dict)) or not isinstance(labels, Iterable):
            raise TypeError
        given = list(labels)
    except TypeError:
        raise InputError(f"labels must be a sequence of label numbers (got {labels!r})"
                         ) from None
    wanted = []
    for t in given:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise InputError(f"labels must be whole label numbers (got {t!r})")
        wanted.append(int(t))
    bad = [t for t in wanted if not 0 <= t < nb_classes]
    if bad or not wanted:
        raise InputError(f"labels must be a non-empty subset of 0..{nb_classes - 1} "
                         f"(got {wanted})")
    repeated = sorted({t for t in wanted if wanted.count(t) > 1})
    if repeated:
        raise InputError(f"labels lists {repeated} more than once; give each label once")
    return wanted
