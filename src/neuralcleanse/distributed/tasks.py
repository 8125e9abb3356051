"""The work of one task of ``scan_many``: look at a model, scan some labels, or confirm some.

The functions run in a Ray worker, or in the calling process when Ray is not used. They load
the model and the data themselves, through the library's framework-neutral entry points (the
same loading as ``neuralcleanse scan``), so a task needs only the manifest entry and the run's
settings. An error of the model's own (its file, its data, its options, or anything else that
goes wrong while scanning it) never escapes: it comes back as a :class:`TaskFailure` with its
one-line message, so the run goes on with the other models and Ray does not retry it. A worker
that dies is another matter: Ray runs the task again (``max_retries``), and the retry takes up
the labels the dead attempt had already saved in the model's ``partial/`` folder.

The confirmation task (:func:`confirm_labels`, the ``"confirmed"`` verdict rule) searches a
model's borderline labels again with the further seeds. Its results are not saved as they
come: a retried or resumed confirmation runs again from the start (the first pass's labels stay
in ``partial/`` until the model's report is written, so only the confirmation is redone). It
also stamps the report's examples (:mod:`neuralcleanse.mitigation.examples`) for the labels it
confirms; run with no labels to confirm, it is the short last task (:data:`EXAMPLES_TASK`) that
stamps those of the flagged or suspicious labels it did not (all of them under the ``"paper"``
rule).

Test hook: when the run's driver has the environment variable :data:`TEST_CRASH_ENV` set to a
model's name, the first attempt of each of that model's label-chunk tasks that runs in a Ray
worker ends its process (``os._exit(1)``) right after saving its first label, as a worker
killed mid-task would, and so does the first attempt of its confirmation task once its
searches are done. Only the tests set it.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, one_line
from neuralcleanse.core.results import LabelResult
from neuralcleanse.core.verdict import VERDICT_SETTINGS
from neuralcleanse.distributed.manifest import ModelSpec, library_wording

#: Environment variable of the test hook (see the module's docstring).
TEST_CRASH_ENV = "NEURALCLEANSE_SCAN_MANY_TEST_CRASH"
#: Layout of the run's output folder: one report folder per model, and the run's own state
#: (attempt markers, finished models' outcomes) in a hidden folder.
MODELS_DIR = "models"
PARTIAL_DIR = "partial"
STATE_DIR = ".scan-many"
#: Under :data:`STATE_DIR`: each finished model's label searches, one folder per seed (the first
#: pass's and the confirmation's), so that a resumed run with other verdict settings grades the
#: model again without searching what it searched before.
SEARCHES_DIR = "searches"
#: The name of a model's confirmation task (in the attempt markers and the driver's records).
CONFIRM_TASK = "confirm"
#: The name of a model's last task, which stamps the examples the confirmation did not
#: (:func:`confirm_labels` with no labels to confirm).
EXAMPLES_TASK = "examples"


@dataclass(frozen=True)
class RunContext:
    """What every task of a run needs to know besides its model.

    Attributes:
        out: The run's output folder.
        cpus: CPUs of one task; a worker runs its framework with ``ceil(cpus)`` threads.
        gpus: GPUs of one task; a PyTorch model goes to ``cuda`` when it has some (unless the
            manifest names a device).
        worker: Whether tasks run in Ray workers (threads are limited and the test hook
            honoured only there).
        crash_once: The test hook's model name (see the module's docstring).
    """

    out: str
    cpus: float = 1.0
    gpus: float = 0.0
    worker: bool = False
    crash_once: str | None = None


@dataclass
class ModelFacts:
    """What a look at a model found: enough to plan its label chunks and write its report."""

    nb_classes: int
    labels: list[int]
    key: str
    output: str
    channels_first: bool
    model_info: dict[str, Any]
    data_info: dict[str, Any]
    versions: dict[str, str]
    seconds: float = 0.0
    attempts: int = 1
    warnings: list[str] = field(default_factory=list)


@dataclass
class ChunkDone:
    """The results of one chunk of labels (those resumed from ``partial/`` included)."""

    labels: list[LabelResult]
    seconds: float = 0.0
    attempts: int = 1
    warnings: list[str] = field(default_factory=list)


@dataclass
class ConfirmDone:
    """The further runs of a model's borderline labels: per label, its results in seed order.

    ``examples``: per label given a trigger to stamp, the stamped example of each of its
    triggers, the one given first and then its further runs' (``None`` where the label has no
    image of another class).
    """

    runs: dict[int, list[LabelResult]]
    examples: dict[int, list[dict[str, Any] | None]] = field(default_factory=dict)
    seconds: float = 0.0
    attempts: int = 1
    warnings: list[str] = field(default_factory=list)


@dataclass
class TaskFailure:
    """An error of the model's own, as one line."""

    error: str
    seconds: float = 0.0
    attempts: int = 1
    warnings: list[str] = field(default_factory=list)


def model_dir(out: str | Path, name: str) -> Path:
    """The folder of one model's report."""
    return Path(out) / MODELS_DIR / name


def searches_dir(out: str | Path, name: str) -> Path:
    """The folder of a model's saved label searches (one subfolder per seed)."""
    return Path(out) / STATE_DIR / SEARCHES_DIR / name


def attempts_dir(out: str | Path, name: str) -> Path:
    """Where the attempts of one model's tasks are marked (one empty file per attempt)."""
    return Path(out) / STATE_DIR / "attempts" / name


def count_attempts(out: str | Path, name: str, task: str) -> int:
    """How many attempts of ``task`` of model ``name`` have started (0 when unknown)."""
    folder = attempts_dir(out, name)
    try:
        return sum(1 for f in folder.iterdir() if f.name.startswith(f"{task}."))
    except OSError:
        return 0


def _mark_attempt(ctx: RunContext, name: str, task: str) -> int:
    """Mark that an attempt of ``task`` starts; returns its number (1 for the first)."""
    folder = attempts_dir(ctx.out, name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f"{task}.{os.getpid()}.{secrets.token_hex(4)}"
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError:  # the count is a report, not a condition of the work
        return 1
    return max(1, count_attempts(ctx.out, name, task))


def settings_key(cfg: ScanConfig) -> dict[str, Any]:
    """The search settings that shape the labels' results (:meth:`ScanConfig.search_key`)."""
    return cfg.search_key()


def verdict_settings(cfg: ScanConfig) -> dict[str, Any]:
    """The :data:`VERDICT_SETTINGS` of ``cfg`` (what a finished model's verdict depends on)."""
    values = cfg.to_dict()
    return {k: values[k] for k in VERDICT_SETTINGS}


def _limit_threads(ctx: RunContext) -> None:
    """Give the frameworks of a worker as many threads as the task has CPUs (at least 1)."""
    if not ctx.worker:
        return
    count = max(1, math.ceil(ctx.cpus))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                 "TF_NUM_INTEROP_THREADS"):
        os.environ[name] = str(count)  # for a framework this worker has not loaded yet
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(count)
            tf.config.threading.set_inter_op_parallelism_threads(count)
        except (RuntimeError, AttributeError):  # fixed once TensorFlow has started
            pass


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _load(spec: ModelSpec, cfg: ScanConfig, ctx: RunContext, *, output: str | None = None,
          channels_first: bool | None = None) -> tuple[Any, Any, np.ndarray, np.ndarray, str]:
    """Load and check the model and its data as ``neuralcleanse scan`` does.

    Returns:
        ``(inputs, classifier, images, labels, fingerprint)``.
    """
    from neuralcleanse.backends.loading import KERAS_SUFFIXES
    from neuralcleanse.frontends import api
    from neuralcleanse.frontends.cli.inputs import load_inputs
    from neuralcleanse.frontends.cli.options import DataLayout, OutputKind
    from neuralcleanse.io.data_files import fingerprint

    arguments = spec.load_arguments()
    if channels_first is not None:
        arguments["channels_first"] = channels_first
    device = spec.options.get("device")
    if device is None and ctx.gpus > 0 and spec.model.suffix.lower() not in KERAS_SUFFIXES:
        device = "cuda"  # Keras places its work on the GPU by itself
    try:
        inputs = load_inputs(
            spec.model, spec.data, **arguments, device=device, seed=cfg.seed,
            output=OutputKind(output or spec.options.get("output", "auto")),
            data_layout=DataLayout(spec.options.get("data_layout", "auto")))
    except InputError as exc:  # the command line's wording: name the manifest's keys
        raise InputError(library_wording(str(exc))) from None
    _limit_threads(ctx)  # again, now that the model's framework is loaded
    clf, images, targets = api.prepare(inputs.model.model, inputs.x, inputs.y,
                                       **inputs.wrap_options())
    assert targets is not None
    key = fingerprint(inputs.model.path, images, targets, settings_key(cfg),
                      {k: _jsonable(v) for k, v in inputs.wrap_options().items()
                       if k != "device"})
    return inputs, clf, images, targets, key


def _load_unchanged(spec: ModelSpec, cfg: ScanConfig, ctx: RunContext, facts: ModelFacts
                    ) -> tuple[Any, np.ndarray, np.ndarray, str]:
    """Load the model and data as the inspection found them; refuse them if they changed."""
    _, clf, images, targets, key = _load(spec, cfg, ctx, output=facts.output,
                                         channels_first=facts.channels_first)
    if key != facts.key:
        raise InputError(f"the model file {str(spec.model)!r} or its data changed while it "
                         "was being scanned")
    return clf, images, targets, key


def _run(ctx: RunContext, name: str, task: str, work: Any) -> Any:
    """Run ``work()`` as one attempt of ``task``: its time, attempt count and warnings."""
    attempt = _mark_attempt(ctx, name, task)
    _limit_threads(ctx)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            outcome = work(attempt)
        except Exception as exc:  # an error of this model's own: the others go on
            message = one_line(exc)
            if not isinstance(exc, (InputError, OSError)):
                message = f"unexpected {type(exc).__name__}: {message}"
            outcome = TaskFailure(error=message)
    outcome.seconds = time.perf_counter() - started
    outcome.attempts = attempt
    seen: list[str] = []
    for w in caught:
        text = one_line(w.message) if isinstance(w.message, Warning) else str(w.message)
        if issubclass(w.category, (UserWarning, RuntimeWarning)) and text not in seen:
            seen.append(text)
    outcome.warnings = seen
    return outcome


def inspect_model(spec: ModelSpec, cfg: ScanConfig, ctx: RunContext
                  ) -> ModelFacts | TaskFailure:
    """Load a model and its data, check them, and say what its scan needs (first task).

    Returns:
        The model's :class:`ModelFacts`, or a :class:`TaskFailure` naming what is wrong.
    """
    from neuralcleanse.frontends import api

    def work(_attempt: int) -> ModelFacts:
        inputs, clf, images, targets, key = _load(spec, cfg, ctx)
        wanted = spec.options.get("labels")
        if wanted is not None:
            outside = [t for t in wanted if t >= clf.nb_classes]
            if outside:
                raise InputError(f"labels {outside} are not labels of the model: it has "
                                 f"{clf.nb_classes} outputs (labels 0..{clf.nb_classes - 1})")
        counts = np.bincount(targets, minlength=clf.nb_classes).tolist()
        return ModelFacts(
            nb_classes=int(clf.nb_classes),
            labels=list(wanted) if wanted is not None else list(range(clf.nb_classes)),
            key=key, output=str(clf.output), channels_first=bool(inputs.channels_first),
            model_info=inputs.model_info(clf.describe()),
            data_info={"n_images": int(len(images)), "class_counts": counts,
                       **inputs.data.info},
            versions=api.versions())

    return _run(ctx, spec.name, "inspect", work)


def scan_chunk(spec: ModelSpec, cfg: ScanConfig, ctx: RunContext, facts: ModelFacts,
               labels: list[int], task: str) -> ChunkDone | TaskFailure:
    """Scan some labels of a model, saving each label in ``partial/`` as it finishes.

    Labels an earlier attempt saved (same fingerprint) are taken up, not searched again.

    Args:
        spec: The model's manifest entry.
        cfg: The run's search settings (progress is never shown here).
        ctx: The run's context.
        facts: What :func:`inspect_model` found (output kind, layout, fingerprint).
        labels: The labels of this chunk.
        task: The chunk's name, for the attempt count.

    Returns:
        The chunk's label results, or a :class:`TaskFailure`.
    """
    from neuralcleanse.frontends import api
    from neuralcleanse.io.resume import PartialStore

    def work(attempt: int) -> ChunkDone:
        clf, images, targets, key = _load_unchanged(spec, cfg, ctx, facts)
        store = PartialStore(model_dir(ctx.out, spec.name) / PARTIAL_DIR, key)
        done = [r for r in store.load() if r.label in labels]
        crash = ctx.worker and ctx.crash_once == spec.name and attempt == 1

        def save(result: LabelResult) -> None:
            store.save(result)
            if crash:  # the test hook: a worker killed mid-task
                os._exit(1)

        with warnings.catch_warnings():
            # the outlier test over this chunk's labels alone is not the model's (the driver
            # runs it on all of them), so its warnings are not either
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    module=r"neuralcleanse\.core\.(results|outliers)")
            # the first pass only (the paper rule runs no confirmation): the driver confirms
            # the model's borderline labels once all its chunks are in
            result = api.scan(clf, images, targets,
                              config=cfg.replace(progress=False, verdict="paper"),
                              labels=labels, on_label_done=save, done=done)
        return ChunkDone(labels=[r for r in result.labels if r.label in labels])

    return _run(ctx, spec.name, task, work)


def confirm_labels(spec: ModelSpec, cfg: ScanConfig, ctx: RunContext, facts: ModelFacts,
                   labels: list[int], first: list[LabelResult] | None = None,
                   task: str = CONFIRM_TASK) -> ConfirmDone | TaskFailure:
    """Search a model's borderline labels again with the further seeds (the confirmation).

    The searches are :func:`neuralcleanse.search.confirm.search_confirmations`, as
    :func:`neuralcleanse.scan` runs them; nothing is saved while they run (a retried attempt
    starts over). Since the model is loaded here anyway, the task also stamps one clean image
    with each trigger a label may end up with in the report (its first run's and its further
    runs'): the driver keeps the example of the trigger the graded result picks, so the report
    of a model whose flagged and suspicious labels were all confirmed needs no further task.
    With no ``labels``, it only stamps the triggers given: the short last task
    (:data:`EXAMPLES_TASK`) for the flagged and suspicious labels the confirmation gave no
    example (all of them under the ``"paper"`` rule, which confirms nothing). Cheap: two images
    per trigger go through the model.

    Args:
        spec: The model's manifest entry.
        cfg: The run's search settings.
        ctx: The run's context.
        facts: What :func:`inspect_model` found (output kind, layout, fingerprint).
        labels: The labels to confirm (:func:`~neuralcleanse.search.confirm.plan_confirmation`
            of the first pass).
        first: The triggers to stamp: the first run's results of ``labels`` (each label is
            also stamped with its further runs' triggers), or with no ``labels`` the graded
            result's triggers of the labels left without an example; none without.
        task: The task's name, for the attempt count (:data:`CONFIRM_TASK` or
            :data:`EXAMPLES_TASK`).

    Returns:
        Per label its further runs and examples, or a :class:`TaskFailure`.
    """
    from neuralcleanse.mitigation.examples import stamped_example
    from neuralcleanse.search.confirm import search_confirmations

    def work(attempt: int) -> ConfirmDone:
        clf, images, targets, key = _load_unchanged(spec, cfg, ctx, facts)
        runs = search_confirmations(clf, images, targets, cfg.replace(progress=False),
                                    list(labels))
        examples = {r.label: [stamped_example(clf, images, targets, trial)
                              for trial in (r, *runs.get(r.label, []))]
                    for r in first or []}
        if ctx.worker and ctx.crash_once == spec.name and attempt == 1 \
                and task == CONFIRM_TASK:
            os._exit(1)  # the test hook: a worker killed before it could report
        return ConfirmDone(runs={int(t): list(r) for t, r in runs.items()},
                           examples={int(t): e for t, e in examples.items()})

    return _run(ctx, spec.name, task, work)
