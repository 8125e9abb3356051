"""The driver of ``scan_many``: tasks scheduled on Ray (or in turn), results merged, reports.

Every model gets one task that looks at it (:func:`~neuralcleanse.distributed.tasks.inspect_model`)
and then one task per chunk of its labels (:func:`~neuralcleanse.distributed.tasks.scan_chunk`).
The driver merges a model's chunks with :meth:`ScanResult.from_labels` (the labels' searches are
independent, so the merge is the unsplit scan's first pass). Under the ``"confirmed"`` verdict
rule it then plans the confirmation of the borderline labels
(:func:`~neuralcleanse.search.confirm.plan_confirmation`) and, when there are some, submits one
more task that searches them with the further seeds
(:func:`~neuralcleanse.distributed.tasks.confirm_labels`); the graded result
(:func:`~neuralcleanse.search.confirm.apply_confirmation`) is what ``neuralcleanse scan`` gives.
The driver writes the model's report into ``OUT/models/<name>`` as ``neuralcleanse scan`` does,
with a stamped example per flagged and suspicious label
(:mod:`neuralcleanse.mitigation.examples`), and at the end the run's summary into ``OUT``. The
confirmation task stamps the examples of the labels it confirms, with each trigger it found;
the driver keeps those of the triggers the graded result picks. Flagged or suspicious labels
left without one (all of them under the ``"paper"`` rule, which confirms nothing) get a short
last task (:func:`~neuralcleanse.distributed.tasks.confirm_labels` with nothing to confirm,
named ``examples``). Like the first look at a model, its first attempt is not counted in the
model's ``attempts`` (its retries are); a failure of it only leaves the examples out of the
report, with a warning.

``OUT/.scan-many/`` holds the run's own state: the outcome of each finished model with the
fingerprint of its model, data and settings and its verdict settings (``resume`` skips a model
whose outcome matches both), one marker per task attempt (the ``attempts`` of the summary), and
each finished model's label searches, one folder per seed (``searches/<name>/seed-<s>/``, keyed
by the same fingerprint): resumed with other verdict settings, a model is graded again from its
saved first pass and further runs, and only the labels the new settings plan that lack a saved
run are searched (a run without ``resume`` removes them;
:mod:`~neuralcleanse.distributed.saved_searches`).
A model's first-pass labels stay in ``OUT/models/<name>/partial/`` until its report is written,
so a run interrupted during a confirmation resumes with the confirmation alone (run again from
its start: its searches are not saved as they go).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, one_line
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.core.strict_json import dumps, read_json_file
from neuralcleanse.core.summary import ModelOutcome, ScanManySummary
from neuralcleanse.distributed.engines import RayEngine, Sequential, make_engine
from neuralcleanse.distributed.manifest import ModelSpec, build_config, read_manifest
from neuralcleanse.distributed.saved_searches import SavedSearches
from neuralcleanse.distributed.tasks import (
    CONFIRM_TASK,
    EXAMPLES_TASK,
    PARTIAL_DIR,
    STATE_DIR,
    TEST_CRASH_ENV,
    ChunkDone,
    ConfirmDone,
    ModelFacts,
    RunContext,
    TaskFailure,
    attempts_dir,
    confirm_labels,
    count_attempts,
    inspect_model,
    model_dir,
    scan_chunk,
    settings_key,
    verdict_settings,
)
from neuralcleanse.io.report import STAMPED_EXAMPLES, atomic_write, write_report
from neuralcleanse.io.resume import PartialStore
from neuralcleanse.mitigation.examples import example_labels
from neuralcleanse.search.confirm import apply_confirmation, plan_confirmation

OUTCOME_KIND = "neuralcleanse scan-many outcome"
Progress = Callable[[dict[str, Any]], None]


# -- the driver -------------------------------------------------------------------------------
class ModelRun:
    """The driver's record of one model."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.state = "waiting"  # inspecting, scanning, confirming, stamping, done, failed
        self.facts: ModelFacts | None = None
        self.results: dict[int, LabelResult] = {}
        self.first: ScanResult | None = None  # the merged first pass, while it is confirmed
        self.confirming: list[int] = []  # the labels its confirmation searches again
        self.kept_first: set[int] = set()  # first-pass labels an earlier run kept
        self.saved_runs: dict[int, list[LabelResult]] = {}  # confirmation runs an earlier run saved
        self.graded: ScanResult | None = None  # the graded result, while its examples are made
        self.examples: dict[int, dict[str, Any]] = {}  # its stamped examples, by label
        self.confirm_searches = 0  # label searches of the confirmation (labels x seeds)
        self.label_steps = 0  # steps of the first pass and of the confirmation
        self.chunks_left = 0
        self.seconds = 0.0
        self.attempts = 0
        self.warnings: list[str] = []
        self.outcome: ModelOutcome | None = None

    def fraction(self) -> float:
        """How much of this model's work is done, 0 to 1."""
        if self.state in ("done", "failed"):
            return 1.0
        if self.facts is None or not self.facts.labels:
            return 0.0
        return len(self.results) / (len(self.facts.labels) + self.confirm_searches)


class Driver:
    """Submits the tasks, follows them, merges and writes each model's report."""

    def __init__(self, specs: list[ModelSpec], cfg: ScanConfig, ctx: RunContext,
                 engine: Sequential | RayEngine, *, resume: bool, labels_per_task: int | None,
                 max_retries: int, on_progress: Progress | None) -> None:
        self.models = [ModelRun(s) for s in specs]
        self.cfg, self.ctx, self.engine = cfg, ctx, engine
        self.resume, self.labels_per_task = resume, labels_per_task
        self.max_retries, self.on_progress = max_retries, on_progress
        self.out = Path(ctx.out)
        self.started = time.perf_counter()

    def run(self) -> None:
        """Run every model to its end (done or failed)."""
        for i, m in enumerate(self.models):
            shutil.rmtree(attempts_dir(self.out, m.spec.name), ignore_errors=True)
            m.state = "inspecting"
            self.engine.submit(("inspect", i, None), inspect_model, m.spec, self.cfg, self.ctx)
        self.emit("started", None)
        while self.engine.pending():
            (kind, i, task), value = self.engine.next()
            m = self.models[i]
            if isinstance(value, BaseException):  # Ray gave up on a task whose worker died
                tries = count_attempts(self.out, m.spec.name, task or "inspect")
                value = TaskFailure(error=f"the worker scanning it died ({type(value).__name__})"
                                    f" after {tries or self.max_retries + 1} attempt(s)",
                                    attempts=tries or self.max_retries + 1)
            m.seconds += value.seconds
            m.warnings += [w for w in value.warnings if w not in m.warnings]
            if kind == "inspect":
                m.attempts += value.attempts - 1  # retries of the look count, not the look
                self.inspected(m, value)
            elif kind == "confirm":
                m.attempts += value.attempts
                self.confirmed(m, value)
            elif kind == "examples":
                m.attempts += value.attempts - 1  # like the look: its retries count
                self.stamped(m, value)
            else:
                m.attempts += value.attempts
                self.chunk_done(m, value)
        shutil.rmtree(self.out / STATE_DIR / "attempts", ignore_errors=True)

    def inspected(self, m: ModelRun, value: ModelFacts | TaskFailure) -> None:
        """Plan a model's chunks once it has been looked at (or skip it, when resuming)."""
        if isinstance(value, TaskFailure):
            return self.fail(m, value.error)
        m.facts = facts = value
        if self.resume and self.finished_before(m, facts.key):
            return
        store = self.store(m)
        in_the_way = store.foreign(facts.labels)
        if in_the_way:
            return self.fail(m, f"{in_the_way[0]} was not written by neuralcleanse, but the "
                                "scan saves its finished labels under that name: move it away")
        done: list[LabelResult] = []
        if self.resume:
            try:
                done = store.load()
            except InputError as exc:
                m.warnings.append(f"started over: {exc}")
                store.clear()
            # a model finished before under other verdict settings: its first pass is kept
            kept = self.searches(m).load(self.cfg.seed)
            m.kept_first = set(kept)
            done = list({**kept, **{r.label: r for r in done}}.values())
        else:
            store.clear()
            self.outcome_path(m).unlink(missing_ok=True)  # an earlier run's, now stale
            self.searches(m).forget()
        m.results = {r.label: r for r in done if r.label in facts.labels}
        todo = [t for t in facts.labels if t not in m.results]
        size = self.labels_per_task or max(1, len(todo))
        chunks = [todo[j:j + size] for j in range(0, len(todo), size)]
        m.state, m.chunks_left = "scanning", len(chunks)
        i = self.models.index(m)
        for chunk in chunks:
            task = f"labels{chunk[0]}"
            self.engine.submit(("chunk", i, task), scan_chunk, m.spec, self.cfg, self.ctx, facts,
                               chunk, task)
        if not chunks:  # every label was saved by an earlier run
            return self.merge(m)
        self.emit("scanning", m)
        return None

    def chunk_done(self, m: ModelRun, value: ChunkDone | TaskFailure) -> None:
        """Take a chunk's labels; write the model's report when its last chunk is in."""
        m.chunks_left -= 1
        if m.state != "scanning":  # another chunk failed already
            return None
        if isinstance(value, TaskFailure):
            return self.fail(m, value.error)
        store = self.store(m)
        for r in value.labels:
            m.results[r.label] = r
            if not store.path(r.label).exists():  # a worker that does not share this disk
                store.save(r)
        if m.chunks_left == 0:
            return self.merge(m)
        self.emit("chunk", m)
        return None

    def store(self, m: ModelRun) -> PartialStore:
        """The model's resume store."""
        assert m.facts is not None
        return PartialStore(model_dir(self.out, m.spec.name) / PARTIAL_DIR, m.facts.key)

    def searches(self, m: ModelRun) -> SavedSearches:
        """The label searches the model keeps for a later re-grading."""
        assert m.facts is not None
        return SavedSearches(self.out, m.spec.name, m.facts.key)

    def warn(self, m: ModelRun, warning: str | None) -> None:
        """Add ``warning`` to the model's warnings (when there is one)."""
        if warning:
            m.warnings.append(warning)

    def outcome_path(self, m: ModelRun) -> Path:
        """Where a finished model's outcome is kept for ``resume``."""
        return self.out / STATE_DIR / "outcomes" / f"{m.spec.name}.json"

    def finished_before(self, m: ModelRun, key: str) -> bool:
        """Whether an earlier run finished this model with the same fingerprint (reused)."""
        path = self.outcome_path(m)
        if not path.is_file() or not (model_dir(self.out, m.spec.name) / "report.json").is_file():
            return False
        try:
            data = read_json_file(path)
            if not isinstance(data, dict) or data.get("kind") != OUTCOME_KIND \
                    or data.get("fingerprint") != key \
                    or data.get("verdict_settings") != verdict_settings(self.cfg):
                return False
            outcome = ModelOutcome.from_dict(data.get("outcome"))
        except (InputError, OSError):
            return False
        if outcome.status != "done" or outcome.name != m.spec.name:
            return False
        m.outcome, m.state = outcome, "done"
        self.emit("skipped", m)
        return True

    def merge(self, m: ModelRun) -> None:
        """Merge the chunks (the first pass); confirm its borderline labels, or finish."""
        facts = m.facts
        assert facts is not None
        first = self.recorded(m, lambda: ScanResult.from_labels(
            list(m.results.values()), nb_classes=facts.nb_classes,
            anomaly_threshold=self.cfg.anomaly_threshold, config=self.cfg.to_dict(),
            model_info=facts.model_info, data_info=facts.data_info,
            versions=facts.versions, wall_seconds=m.seconds, partial=False))
        m.label_steps = sum(r.steps for r in first.labels)
        labels = plan_confirmation(first, self.cfg)
        if not labels:  # the paper rule, or nothing to confirm
            return self.with_examples(m, self.recorded(
                m, lambda: apply_confirmation(first, {}, self.cfg, 0.0)), {})
        m.first, m.confirming, m.state = first, labels, "confirming"
        m.saved_runs = self.searches(m).confirmations(self.cfg, labels) if self.resume else {}
        todo = [t for t in labels if t not in m.saved_runs]
        if not todo:  # every run was saved by an earlier run: grade without a task
            return self.confirmed(m, ConfirmDone(runs={}))
        m.confirm_searches = len(todo) * self.cfg.confirm_seeds
        self.engine.submit(("confirm", self.models.index(m), CONFIRM_TASK), confirm_labels,
                           m.spec, self.cfg, self.ctx, facts, todo,
                           [first.label(t) for t in todo])
        self.emit("confirming", m)
        return None

    def confirmed(self, m: ModelRun, value: ConfirmDone | TaskFailure) -> None:
        """Grade the first pass with the confirmation's further runs; finish the model."""
        if m.state != "confirming":
            return None
        if isinstance(value, TaskFailure):
            return self.fail(m, value.error)
        first = m.first
        assert first is not None
        runs = {**m.saved_runs, **value.runs}
        m.label_steps += sum(r.steps for found in runs.values() for r in found)
        try:
            result = self.recorded(m, lambda: apply_confirmation(first, runs, self.cfg,
                                                                 value.seconds))
        except InputError as exc:  # runs that do not fit the plan: this model's, not the run's
            return self.fail(m, f"cannot grade its confirmation: {one_line(exc)}")
        self.warn(m, self.searches(m).save_confirmations(self.cfg, value.runs))
        m.first, m.saved_runs = None, {}
        return self.with_examples(m, result, picked_examples(result, first, value))

    def with_examples(self, m: ModelRun, result: ScanResult,
                      found: dict[int, dict[str, Any] | None]) -> None:
        """Finish the model; first, a last task stamps the examples ``found`` lacks.

        ``found``: the confirmation's example of each label it confirmed (``None`` for a label
        without an image of another class).
        """
        kinds = dict(example_labels(result))
        m.examples = {t: {**e, "kind": kinds[t]} for t, e in found.items()
                      if e is not None and t in kinds}
        missing = [t for t in kinds if t not in found]
        if not missing:
            return self.finish(m, result)
        m.graded, m.state = result, "stamping"
        self.engine.submit(("examples", self.models.index(m), EXAMPLES_TASK), confirm_labels,
                           m.spec, self.cfg, self.ctx, m.facts, [],
                           [result.label(t) for t in missing], EXAMPLES_TASK)
        self.emit("stamping", m)
        return None

    def stamped(self, m: ModelRun, value: ConfirmDone | TaskFailure) -> None:
        """Take the last task's examples and finish the model (without them if it failed)."""
        result = m.graded
        if m.state != "stamping" or result is None:
            return None
        m.graded = None
        if isinstance(value, TaskFailure):
            m.warnings.append(f"the report has no stamped examples: {value.error}")
        else:
            kinds = dict(example_labels(result))
            m.examples.update({t: {**found[0], "kind": kinds[t]}
                               for t, found in value.examples.items()
                               if t in kinds and found and found[0] is not None})
        return self.finish(m, result)

    @staticmethod
    def recorded(m: ModelRun, work: Callable[[], ScanResult]) -> ScanResult:
        """``work()``, its warnings (e.g. all norms equal) kept among the model's."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = work()
        m.warnings += [str(w.message) for w in caught if str(w.message) not in m.warnings]
        return result

    def finish(self, m: ModelRun, result: ScanResult) -> None:
        """Write the model's (graded) report, record its outcome."""
        facts = m.facts
        assert facts is not None
        folder = model_dir(self.out, m.spec.name)
        examples = [m.examples[t] for t, _ in example_labels(result) if t in m.examples]
        if examples:  # a new dict: the first pass shares the facts' one
            result.data_info = {**result.data_info, STAMPED_EXAMPLES: examples}
        m.examples = {}
        try:
            write_report(result, folder)
        except (InputError, OSError) as exc:
            return self.fail(m, f"cannot write the report into {str(folder)!r}: "
                                f"{one_line(exc)}")
        self.warn(m, self.searches(m).save(self.cfg.seed, [
            r for t, r in m.results.items() if t not in m.kept_first]))  # the new ones only
        self.store(m).clear()
        norms = [r.norm for r in result.labels]
        indices = [r.anomaly_index for r in result.labels]
        m.outcome = ModelOutcome(
            name=m.spec.name, model=m.spec.given, status="done",
            verdict=result.verdict, flagged_labels=[int(t) for t in result.flagged_labels],
            suspicious_labels=[int(t) for t in result.suspicious_labels],
            max_anomaly_index=_finite(max(indices)) if indices else None,
            min_norm=_finite(min(norms)) if norms else None,
            label_steps=int(m.label_steps),
            wall_seconds=round(m.seconds, 3), report=f"models/{m.spec.name}",
            attempts=m.attempts, warnings=list(m.warnings))
        try:
            self.outcome_path(m).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.outcome_path(m), dumps({
                "kind": OUTCOME_KIND, "fingerprint": facts.key,
                "verdict_settings": verdict_settings(self.cfg),
                "outcome": m.outcome.to_dict()}))
        except OSError as exc:  # only resume needs it
            m.warnings.append(f"resume will scan it again: {one_line(exc)}")
        m.state = "done"
        self.emit("done", m)
        return None

    def fail(self, m: ModelRun, error: str) -> None:
        """Record that a model stopped with an error of its own."""
        m.outcome = ModelOutcome(name=m.spec.name, model=m.spec.given, status="failed",
                                 error=error, wall_seconds=round(m.seconds, 3),
                                 attempts=max(m.attempts, 1), warnings=list(m.warnings))
        m.state = "failed"
        self.emit("failed", m)

    def emit(self, event: str, m: ModelRun | None) -> None:
        """Tell ``on_progress`` what changed (in this, the driver's, process)."""
        if m is not None and event in ("done", "failed"):
            for w in m.warnings:
                warnings.warn(f"{m.spec.name}: {w}", UserWarning, stacklevel=2)
        if self.on_progress is None:
            return
        elapsed = time.perf_counter() - self.started
        fraction = sum(x.fraction() for x in self.models) / len(self.models)
        info: dict[str, Any] = {
            "event": event, "model": m.spec.name if m else None,
            "done": sum(x.state == "done" for x in self.models),
            "failed": sum(x.state == "failed" for x in self.models),
            "running": sum(x.state in ("inspecting", "scanning", "confirming", "stamping")
                           for x in self.models),
            "total": len(self.models), "elapsed_seconds": elapsed,
            "eta_seconds": elapsed * (1 - fraction) / fraction if 0 < fraction else None}
        if m is not None:
            info["status"] = m.state
            if m.facts is not None:
                info["labels_done"], info["labels_total"] = len(m.results), len(m.facts.labels)
            if m.state == "confirming":
                info["confirm_labels"] = list(m.confirming)
            if m.outcome is not None:
                info.update(verdict=m.outcome.verdict, error=m.outcome.error,
                            flagged_labels=m.outcome.flagged_labels,
                            suspicious_labels=m.outcome.suspicious_labels)
        self.on_progress(info)

    def summary(self, *, settings: dict[str, Any], interrupted: bool) -> ScanManySummary:
        """The outcomes of the models that finished, in manifest order."""
        return ScanManySummary(models=[m.outcome for m in self.models if m.outcome is not None],
                               settings=settings, interrupted=interrupted,
                               wall_seconds=time.perf_counter() - self.started)


def picked_examples(result: ScanResult, first: ScanResult, done: ConfirmDone
                    ) -> dict[int, dict[str, Any] | None]:
    """The confirmation's example of each label it confirmed, for the trigger ``result`` kept.

    A label's examples are those of its first run's trigger and then of its further runs'
    (:class:`~neuralcleanse.distributed.tasks.ConfirmDone`); the graded result keeps one of
    those triggers, found here by its mask and pattern. A label whose trigger is not found
    is left out (a last task stamps it).
    """
    found: dict[int, dict[str, Any] | None] = {}
    kept = {r.label: r for r in result.labels}
    firsts = {r.label: r for r in first.labels}
    for label, examples in done.examples.items():
        chosen = kept.get(label)
        if chosen is None or label not in firsts:
            continue
        trials = [firsts[label], *done.runs.get(label, [])]
        for trial, example in zip(trials, examples):
            if np.array_equal(trial.mask, chosen.mask) \
                    and np.array_equal(trial.pattern, chosen.pattern):
                found[label] = example
                break
    return found


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _check_arguments(cpus: Any, gpus: Any, labels_per_task: Any, max_retries: Any,
                     resume: Any, parallel: Any, address: Any, on_progress: Any) -> None:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not number(cpus) or not 0 < cpus <= 4096:
        raise InputError(f"cpus_per_scan must be a number in (0, 4096] (got {cpus!r})")
    if not number(gpus) or not 0 <= gpus <= 1024:
        raise InputError(f"gpus_per_scan must be a number in [0, 1024] (got {gpus!r})")
    if labels_per_task is not None and (not isinstance(labels_per_task, int)
                                        or isinstance(labels_per_task, bool)
                                        or labels_per_task < 1):
        raise InputError(f"labels_per_task must be None or an integer >= 1 (got "
                         f"{labels_per_task!r})")
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) \
            or not 0 <= max_retries <= 100:
        raise InputError(f"max_retries must be an integer in [0, 100] (got {max_retries!r})")
    if not isinstance(resume, bool):
        raise InputError(f"resume must be True or False (got {resume!r})")
    if parallel is not None and not isinstance(parallel, bool):
        raise InputError(f"parallel must be None, True or False (got {parallel!r})")
    if address is not None and (not isinstance(address, str) or not address):
        raise InputError(f"address must be a Ray address such as 'auto' or "
                         f"'ray://host:10001' (got {address!r})")
    if address is not None and parallel is False:
        raise InputError("address= runs the scans on a Ray cluster; it cannot be combined "
                         "with parallel=False")
    if on_progress is not None and not callable(on_progress):
        raise InputError("on_progress must be a function taking one dict")


def _write_summary(summary: ScanManySummary, out: Path) -> None:
    try:
        from neuralcleanse.io.summary_files import write_summary
    except ImportError:  # the outputs module is optional for the runner
        atomic_write(out / "summary.json", dumps(summary.to_dict()))
        return
    write_summary(summary, out)


def run_many(manifest: Any, out: str | Path, *, config: Any = None, address: str | None = None,
             cpus_per_scan: float = 1.0, gpus_per_scan: float = 0.0,
             labels_per_task: int | None = None, max_retries: int = 3, resume: bool = False,
             parallel: bool | None = None, on_progress: Progress | None = None
             ) -> ScanManySummary:
    """Scan every model of a manifest; see :func:`neuralcleanse.scan_many`."""
    _check_arguments(cpus_per_scan, gpus_per_scan, labels_per_task, max_retries, resume,
                     parallel, address, on_progress)
    plan = read_manifest(manifest)
    cfg = build_config(plan.search, config).replace(progress=False)
    folder = Path(out).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"out {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder {str(folder)!r}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    engine = make_engine(parallel, address, cpus_per_scan, gpus_per_scan, max_retries)
    ctx = RunContext(out=str(folder), cpus=float(cpus_per_scan), gpus=float(gpus_per_scan),
                     worker=engine.worker, crash_once=os.environ.get(TEST_CRASH_ENV) or None)
    settings = {"config": settings_key(cfg) | verdict_settings(cfg),
                "labels_per_task": labels_per_task, "cpus_per_scan": cpus_per_scan,
                "gpus_per_scan": gpus_per_scan, "max_retries": max_retries, "resume": resume,
                "engine": engine.name, "manifest": plan.source}
    driver = Driver(plan.models, cfg, ctx, engine, resume=resume,
                    labels_per_task=labels_per_task, max_retries=max_retries,
                    on_progress=on_progress)
    try:
        driver.run()
    except BaseException:
        engine.cancel()  # KeyboardInterrupt included: stop the rest, keep what is done
        engine.close()
        with contextlib.suppress(InputError, OSError):  # the interruption matters more
            _write_summary(driver.summary(settings=settings, interrupted=True), folder)
        raise
    engine.close()
    summary = driver.summary(settings=settings, interrupted=False)
    _write_summary(summary, folder)
    return summary
