"""The modern entry points, side by side: ``prepare``, ``scan`` and ``mitigate``."""

from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse import __version__
from neuralcleanse.backends import Classifier, wrap_model
from neuralcleanse.backends.base import Preprocessing
from neuralcleanse.backends.data import DEFAULT_MAX_SAMPLES, dataset_arrays
from neuralcleanse.core.checks import (
    add_channel_axis,
    as_images,
    as_label_vector,
    check_clip_values,
    check_in_clip_range,
    class_counts,
    infer_clip_values,
    output_kind_mismatch,
)
from neuralcleanse.core.config import MAX_SEED, ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.core.summary import ScanManySummary
from neuralcleanse.io.data_files import CHANNEL_COUNTS
from neuralcleanse.mitigation import (
    METHODS,
    FilteringReport,
    InputFilter,
    MitigationResult,
    PruningReport,
    UnlearningReport,
    filter_inputs,
    prune,
    select_triggers,
    unlearn,
)
from neuralcleanse.mitigation.metrics import DEFAULT_TEST_FRACTION
from neuralcleanse.mitigation.unlearning import DEFAULT_ALL_SEEDS
from neuralcleanse.search.confirm import (
    apply_confirmation,
    plan_confirmation,
    search_confirmations,
)
from neuralcleanse.search.restarts import combine_restarts, other_restarts
from neuralcleanse.search.reverse import (
    CHECKPOINT_EVERY_S,
    CheckpointCallback,
    LabelCallback,
    reverse_engineer,
)


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
    from neuralcleanse.backends.base import keras_data_format, keras_module

    if keras_module(model) is not None:
        return keras_data_format(model)[0] == "channels_first"
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def prepare(model: Any, x: np.ndarray, y: np.ndarray | None = None, *,
            output: str | None = None, channels_first: bool | None = None,
            clip_values: tuple[float, float] | None = None,
            preprocessing: Preprocessing = None, device: Any = None,
            max_samples: int | None = None,
            ) -> tuple[Classifier, np.ndarray, np.ndarray | None]:
    """Validate the data and wrap the model; shared by scan and mitigation.

    A batch of single-channel images ``(N, H, W)`` gets its channel axis added where the model
    expects it. ``clip_values`` defaults to [0, 1] or [0, 255], whichever the data fits.
    ``x`` may also be a ``torch.utils.data.Dataset`` or ``DataLoader`` or a
    ``tf.data.Dataset`` of ``(image, label)`` items (or batches), with ``y`` left out: its
    first ``max_samples`` images (default
    :data:`~neuralcleanse.backends.data.DEFAULT_MAX_SAMPLES`) are read.

    Returns:
        ``(classifier, x as float32 in the model's layout, y as int64 labels or None)``.
    """
    x, y = _dataset_or_arrays(x, y, max_samples)
    images = as_images(x)
    if channels_first is None:
        channels_first = getattr(model, "channels_first", None)
        if channels_first is None:
            channels_first = _is_channels_first_model(model)
    images = add_channel_axis(images, bool(channels_first))
    torch = sys.modules.get("torch")
    # a layout the data contradicts is refused before a PyTorch model runs on it (its error
    # would not name the layout); an unsupported model type is reported first
    early = isinstance(model, Classifier) or (torch is not None
                                              and isinstance(model, torch.nn.Module))
    if early:
        check_layout(images.shape, bool(channels_first), model)
    if clip_values is None:
        clip_values = getattr(model, "clip_values", None) or infer_clip_values(images)
    lo, hi = check_clip_values(clip_values)
    check_in_clip_range(images, (lo, hi))
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


def _dataset_or_arrays(x: Any, y: Any, max_samples: int | None) -> tuple[Any, Any]:
    """``(x, y)`` as given, or read from the framework dataset given as ``x``."""
    if isinstance(x, np.ndarray):
        return x, y
    limit = DEFAULT_MAX_SAMPLES if max_samples is None else max_samples
    read = dataset_arrays(x, limit)
    if read is None:
        return x, y
    if y is not None:
        raise InputError(f"x= is a {type(x).__name__}, whose items hold the labels: leave y= "
                         "out")
    images, labels, more = read
    if more:
        warnings.warn(f"read the first {len(images)} images of the {type(x).__name__} given "
                      "as x=; pass max_samples= to read more", UserWarning, stacklevel=4)
    return images, labels


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
    mismatch = output_kind_mismatch(out, clf.output)
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=3)


def scan(model: Any, x: Any, y: Any = None, *, config: ScanConfig | None = None,
         output: str | None = None, channels_first: bool | None = None,
         clip_values: tuple[float, float] | None = None, preprocessing: Preprocessing = None,
         device: Any = None, labels: Sequence[int] | None = None,
         on_label_done: LabelCallback | None = None,
         done: Sequence[LabelResult] = (), restarts: int = 1,
         checkpoint: CheckpointCallback | None = None,
         resume_state: dict[str, np.ndarray] | None = None,
         checkpoint_every_s: float = CHECKPOINT_EVERY_S, **options: Any) -> ScanResult:
    """Scan a classifier for backdoors with Neural Cleanse.

    Every label's smallest trigger is searched (the first pass), then the verdict is decided.
    Under the default rule, ``verdict="confirmed"``, the borderline labels (anomaly index above
    ``anomaly_threshold - confirm_margin``) and the label with the smallest trigger are
    searched again with ``confirm_seeds`` further seeds (``seed + 1``, ...), each takes the
    median of its norms, and the outlier test is run again on those: ``result.verdict`` is
    ``"backdoor"`` when a label is still flagged, ``"suspicious"`` when a label crossed the
    threshold in a single run but the confirmation did not uphold it (listed in
    ``result.suspicious_labels``), else ``"clean"``. The extra cost is ``confirm_seeds``
    searches of the candidates only (usually one to a few labels); ``result.confirmation``
    reports them, their norms, the extra label-steps (also as a share of the first pass's)
    and seconds. ``verdict="paper"`` is the published rule exactly: the first pass's flags,
    no extra search, ``"backdoor"`` or ``"clean"``. With ``restarts > 1`` every label is
    searched with several seeds already and the medians decide (no extra pass); a scan of
    some labels only (``labels=``) gets the paper rule on those.

    Args:
        model: A ``torch.nn.Module`` or a Keras model (see
            :func:`~neuralcleanse.backends.wrap_model`).
        x: Clean raw images, ``(N, C, H, W)`` or ``(N, H, W, C)`` as the model takes them, or
            ``(N, H, W)`` for single-channel images; or a ``torch.utils.data.Dataset``,
            ``DataLoader`` or ``tf.data.Dataset`` of ``(image, label)`` items (or batches),
            of which the first 10,000 images are read.
        y: Their labels, integers ``(N,)`` or one-hot ``(N, classes)``; left out when ``x`` is
            a dataset.
        config: Search settings; defaults to the paper's (:class:`ScanConfig`).
        output: ``"logits"`` (default for PyTorch) or ``"probabilities"``.
        channels_first: Input layout; defaults to the model's own: ``True`` for PyTorch
            modules, the layers' data format for Keras models (on either Keras backend).
        clip_values: Raw input range; inferred from ``x`` as [0, 1] or [0, 255] when omitted.
        preprocessing: ``(subtrahend, divisor)`` or a callable, applied after stamping.
        device: Compute device for PyTorch models (default: where the model lives); another
            device scans a copy of the model moved there, the model itself stays put.
        labels: Scan only these labels (default: all).
        on_label_done: Called with each label's first-pass result as soon as it is finished
            (not for the confirmation's searches).
        done: Results of labels finished earlier (to resume an interrupted scan).
        restarts: Run the search with this many seeds (``seed``, ``seed + 1``, ...); each label
            then reports its median norm, the verdict is taken on the medians, and
            ``result.restarts`` says in how many runs each label was flagged.
        checkpoint: Called with the whole search state every ``checkpoint_every_s`` seconds
            and when the scan is interrupted (single runs only, first pass only; see
            :func:`~neuralcleanse.search.reverse.reverse_engineer`).
        resume_state: A state given to ``checkpoint`` by an interrupted scan of the same model,
            data and settings: the search continues mid-way and ends with exactly the result
            of an uninterrupted scan. Labels in ``done`` that the state still holds are
            searched from the state again (with the same result).
        checkpoint_every_s: Seconds between two checkpoints (0: after every step).
        **options: Any :class:`ScanConfig` field, overriding ``config`` (e.g.
            ``verdict="paper"``, ``confirm_seeds=``, ``confirm_margin=``).

    Returns:
        The :class:`ScanResult` with every label's trigger, norm and anomaly index (the
        confirmed ones for the labels searched again), the flagged labels, the verdict, the
        suspicious labels and the confirmation's record.
    """
    started = time.perf_counter()
    cfg = (config or ScanConfig()).replace(**options)
    clf, images, targets = prepare(model, x, y, output=output, channels_first=channels_first,
                                   clip_values=clip_values, preprocessing=preprocessing,
                                   device=device)
    if targets is None:
        raise InputError("scan needs the labels of the images: give y= (or a dataset whose "
                         "items are (image, label) pairs)")
    wanted = list(range(clf.nb_classes)) if labels is None else _label_list(labels,
                                                                            clf.nb_classes)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1 (got {restarts!r})")
    if restarts > 1 and done:
        raise InputError("resuming (done=...) is only supported with restarts=1")
    if cfg.seed + restarts - 1 > MAX_SEED:
        raise InputError(f"seed + restarts - 1 must be <= {MAX_SEED} (the seeds of the runs "
                         f"are seed, seed + 1, ...; got seed {cfg.seed}, restarts {restarts})")
    if restarts > 1 and (checkpoint is not None or resume_state is not None):
        raise InputError("checkpoint and resume_state work only for a single run (restarts=1)")
    finished = {r.label: r for r in done if r.label in wanted}
    counts = class_counts(targets, clf.nb_classes)
    without_data = [t for t in wanted if counts[t] == 0]
    todo = [t for t in wanted if t not in finished]
    if resume_state is not None:
        # the state's labels are searched from it; labels that finished after it was saved
        # are searched again from it and come out the same
        saved = [int(t) for t in np.asarray(resume_state.get("search/targets", []))]
        missing = [t for t in wanted if t not in saved and t not in finished]
        if not saved or any(t not in wanted for t in saved) or missing:
            raise InputError(f"the saved search state holds labels {saved}, which do not fit "
                             f"the labels asked for {wanted} (those not finished: {todo})")
        todo = saved
        redone = {t for t in finished if t in saved}
        finished = {t: r for t, r in finished.items() if t not in saved}
        if on_label_done is not None and redone:
            report_new = on_label_done

            def on_label_done(result: LabelResult) -> None:  # reported once, when first done
                if result.label not in redone:
                    report_new(result)
    details: dict[str, Any] = {}
    if restarts == 1:
        new = reverse_engineer(clf, images, targets, cfg, labels=todo,
                               on_label_done=on_label_done, checkpoint=checkpoint,
                               resume_state=resume_state,
                               checkpoint_every_s=checkpoint_every_s) if todo else []
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
    first = ScanResult.from_labels(
        list(finished.values()) + new, nb_classes=clf.nb_classes, restarts=details,
        anomaly_threshold=cfg.anomaly_threshold, config=cfg.to_dict(),
        model_info=clf.describe(), labels_without_data=without_data,
        data_info={"n_images": int(len(images)), "class_counts": counts},
        versions=versions(), wall_seconds=time.perf_counter() - started)
    # the borderline labels searched again (none under the paper rule, for a subset of the
    # labels or with restarts); no callbacks or checkpoints: those hold the first pass
    extra_started = time.perf_counter()
    candidates = plan_confirmation(first, cfg)
    extra = search_confirmations(clf, images, targets, cfg, candidates) if candidates else {}
    result = apply_confirmation(first, extra, cfg, time.perf_counter() - extra_started)
    if restarts > 1:  # the other restarts of the flagged and suspicious labels, for unlearning
        result.further_triggers = other_restarts(
            runs, set(result.flagged_labels) | set(result.suspicious_labels))
    return result


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


def mitigate(model: Any, x: np.ndarray, y: np.ndarray,
             scan_result: ScanResult | Sequence[LabelResult] | str | Path,
             method: str = "unlearning", *, x_test: np.ndarray | None = None,
             y_test: np.ndarray | None = None, layer: str | int | None = None,
             labels: Sequence[int] | None = None, output: str | None = None,
             channels_first: bool | None = None,
             clip_values: tuple[float, float] | None = None,
             preprocessing: Preprocessing = None, device: Any = None,
             test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
             **options: Any) -> MitigationResult:
    """Remove or neutralise the backdoor of the flagged labels, on a copy of the model.

    The reversed triggers of the flagged labels are stamped on clean images of the other
    classes, which keep their true labels. Every figure in the result is measured on held-out
    data: ``x_test, y_test`` when given, else a seeded, class-stratified ``test_fraction`` of
    ``x, y`` (the split is reported).

    Args:
        model: A ``torch.nn.Module``, a Keras model or a wrapped classifier; never modified.
        x: Clean raw images, as for :func:`~neuralcleanse.scan`.
        y: Their labels (integers or one-hot).
        scan_result: The scan's result (or its JSON), or a list of reversed triggers.
        method: ``"filtering"`` (refuse triggered inputs), ``"pruning"`` (silence the trigger's
            neurons) or ``"unlearning"`` (fine-tune with stamped images).
        x_test: Held-out clean images for the measurements.
        y_test: Their labels.
        layer: Layer for filtering and pruning: a name or index, or ``None`` for the input of
            the final classification layer.
        labels: Labels to mitigate (default: the scan's flagged labels).
        output: ``"logits"`` or ``"probabilities"``, as for :func:`~neuralcleanse.scan`.
        channels_first: Input layout (default: the model's own, as for :func:`scan`).
        clip_values: Raw input range (default: inferred from ``x``).
        preprocessing: ``(subtrahend, divisor)`` or a callable applied to raw inputs.
        device: Compute device for PyTorch models.
        test_fraction: Share of ``x`` held out when no test data is given, in (0, 1).
        seed: Seed of the split and of every random choice.
        **options: Options of the method. Filtering: ``score`` (``"fisher"``: the watched
            neurons weighted by Fisher's discriminant, threshold calibrated out of fold;
            ``"mean"``: their mean, the paper's filter), ``target_fpr`` (0.05) and
            ``fpr_confidence`` (0.8: the probability that new clean inputs are refused at no
            more than ``target_fpr``),
            ``top_fraction`` and ``max_neurons`` (the share and most of the layer's neurons
            kept per label; ``None``: all, at most 2048, for ``"fisher"``; 0.1 and 16 for
            ``"mean"``), ``ranking`` (``"target_z"``: how the neurons are ranked, see
            :func:`~neuralcleanse.mitigation.filtering.rank_trigger_neurons`). Pruning:
            ``max_fraction`` (0.3), ``target_asr`` (0.05), ``step_fraction`` (0.01). Unlearning:
            ``epochs`` (5), ``learning_rate`` (3e-3), ``stamped_fraction`` (0.2),
            ``min_updates`` (400: at least this many optimiser updates, more epochs on a small
            set), ``rounds`` (1; more: the budget split into rounds, the flagged labels'
            triggers searched again before each later one with the scan's settings, or the
            defaults when a list of triggers is given), ``all_seeds`` (True: a scan's
            :attr:`~neuralcleanse.core.results.ScanResult.further_triggers` of the labels,
            the triggers its confirmation (or its restarts) found with other seeds, are
            stamped beside the kept ones; False: the kept triggers only). All: ``batch_size``.

    Returns:
        A :class:`MitigationResult`: the repaired copy (``.model``) or, for filtering, the
        :class:`InputFilter` that wraps the unchanged model, plus the measurements.

    Raises:
        ValueError: On an unknown method or option, a bad option value, malformed data, an
            unknown layer, or when no label is flagged.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(map(repr, METHODS))} "
                         f"(got {method!r})")
    unknown = sorted(set(options) - set(METHODS[method]))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; it "
                         f"accepts: {', '.join(METHODS[method])}")
    if method == "unlearning" and layer is not None:
        raise InputError("layer is not used by unlearning (it fine-tunes the whole model)")
    if isinstance(scan_result, (str, Path)):
        scan_result = ScanResult.from_json(scan_result)
    triggers = select_triggers(scan_result, labels)
    if method == "unlearning":
        options = dict(options)
        all_seeds = options.pop("all_seeds", DEFAULT_ALL_SEEDS)
        options["further_triggers"] = further_triggers_of(scan_result, triggers, all_seeds)
    if method == "unlearning" and isinstance(scan_result, ScanResult) \
            and options.get("rounds", 1) != 1:
        # the search between rounds uses the scan's own settings (one round searches nothing)
        known = set(ScanConfig.field_names())
        options = {"search_config": ScanConfig.from_dict(
            {k: v for k, v in scan_result.config.items() if k in known}), **options}
    clf, images, targets = prepare(model, x, y, output=output, channels_first=channels_first,
                                   clip_values=clip_values, preprocessing=preprocessing,
                                   device=device)
    common: dict[str, Any] = dict(x_test=x_test, y_test=y_test, test_fraction=test_fraction,
                                  seed=seed)
    result_filter: InputFilter | None = None
    repaired = None
    report: FilteringReport | PruningReport | UnlearningReport
    if method == "filtering":
        result_filter = filter_inputs(clf, images, targets, triggers, layer=layer, **common,
                                      **options)
        assert result_filter.report is not None
        report = result_filter.report
    else:
        repaired = clf.copy()
        if method == "pruning":
            report = prune(repaired, images, targets, triggers, layer=layer, **common,
                           **options)
        else:
            report = unlearn(repaired, images, targets, triggers, **common, **options)
    return MitigationResult(method=method, labels=[t.label for t in triggers], report=report,
                            wall_seconds=time.perf_counter() - started,
                            model_info=clf.describe(), versions=versions(),
                            classifier=repaired, input_filter=result_filter)


def further_triggers_of(scan_result: ScanResult | Sequence[LabelResult],
                        triggers: Sequence[LabelResult], all_seeds: Any) -> list[LabelResult]:
    """The scan's further triggers of the labels being unlearned (none when ``all_seeds`` is off).

    Raises:
        InputError: When ``all_seeds`` is not a boolean.
    """
    if not isinstance(all_seeds, (bool, np.bool_)):
        raise InputError(f"all_seeds must be True or False (got {all_seeds!r})")
    if not all_seeds or not isinstance(scan_result, ScanResult):
        return []
    chosen = {t.label for t in triggers}
    return [r for r in scan_result.further_triggers if r.label in chosen]


def scan_many(manifest: Any, out: str | Path, *, config: Any = None,
              address: str | None = None, cpus_per_scan: float = 1.0,
              gpus_per_scan: float = 0.0, labels_per_task: int | None = None,
              max_retries: int = 3, resume: bool = False, parallel: bool | None = None,
              on_progress: Callable[[dict[str, Any]], None] | None = None
              ) -> ScanManySummary:
    """Scan every model of a manifest, in parallel on Ray, each with its own report.

    Each model is loaded and checked by one task, then scanned by one task per chunk of
    ``labels_per_task`` labels (all its labels in one task by default). The labels' searches
    are independent, so the merged chunks are exactly the unsplit scan. Each finished label is
    saved in ``out/models/<name>/partial/`` at once, so a retried task (its worker died) or a
    later ``resume`` takes it up. A model that fails for a reason of its own (a bad file, bad
    data, a bad option) is recorded with its one-line error; the others go on.

    Writes ``out/models/<name>/`` (``report.json``, ``report.html``, ``triggers/``, as
    :func:`scan` reports are written) for every model that finished, and the run's summary
    (``summary.json``, ``summary.csv``, ``index.html``) into ``out``, also when the run is
    interrupted (``KeyboardInterrupt`` cancels the remaining tasks, marks the summary as
    interrupted and is raised again).

    Args:
        manifest: A TOML or JSON manifest file, the same structure as a dict, or
            ``(folder_of_models, data_file)`` (optionally with a third item, a dict of
            options for every model): see :mod:`neuralcleanse.distributed.manifest`.
        out: The run's output folder (created if needed).
        config: Search settings over the manifest's ``[search]`` table: a dict of
            :class:`ScanConfig` fields (and ``preset``), or a :class:`ScanConfig` used as it
            is.
        address: A Ray cluster's address (e.g. ``"auto"`` or ``"ray://head:10001"``); its
            nodes must see ``out``, the models and the data at the same paths. Default: an
            embedded Ray on this machine, started and stopped here (or the Ray this process
            has already started).
        cpus_per_scan: CPUs of one task (fractions allowed); the framework runs with as many
            threads (rounded up).
        gpus_per_scan: GPUs of one task (fractions allowed); PyTorch models go to ``cuda``.
        labels_per_task: Labels scanned by one task (``None``: all of a model's labels).
        max_retries: How often Ray runs a task again when its worker dies. Errors of the
            model's own are never retried.
        resume: Skip the models an earlier run into ``out`` finished with the same model,
            data and settings, and the labels it saved; without it, those are done again.
        parallel: ``None``: on Ray when it is installed, else one task after another here
            (with a warning); ``True``: Ray is required; ``False``: never Ray.
        on_progress: Called in this process with a dict after every change: ``event``,
            ``model``, ``status``, ``done``, ``failed``, ``running``, ``total``,
            ``elapsed_seconds``, ``eta_seconds`` (``None`` until something is done), and for
            a model ``labels_done``/``labels_total``, ``verdict`` (backdoor, suspicious or
            clean), ``error``, ``flagged_labels`` and ``suspicious_labels`` when known; the
            ``confirming`` event (a model's borderline labels searched again, one more task
            per model under the confirmed verdict) carries ``confirm_labels``.

    Returns:
        The :class:`~neuralcleanse.core.summary.ScanManySummary`: one outcome per model, in
        manifest order.

    Raises:
        InputError: Before any work, on a bad manifest (unknown keys, wrong types, missing
            files, names that are not unique), bad settings or arguments, or a Ray that
            cannot be started or reached.
    """
    from neuralcleanse.distributed.runner import run_many

    return run_many(manifest, out, config=config, address=address,
                    cpus_per_scan=cpus_per_scan, gpus_per_scan=gpus_per_scan,
                    labels_per_task=labels_per_task, max_retries=max_retries, resume=resume,
                    parallel=parallel, on_progress=on_progress)
