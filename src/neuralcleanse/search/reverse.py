"""Reverse-engineering of the smallest trigger for every label, all labels at once.

The labels are independent optimisation problems. Their trigger parameters are stacked and one
forward/backward pass evaluates a mini-batch for every active label. Each label keeps its own
cost schedule, best trigger and early stop (:class:`~neuralcleanse.search.schedule.CostSchedule`); a
label that stops leaves the stack and, while labels are waiting, the next one takes its place.
``label_batch=1`` runs the same code with a stack of one: the classic one-label loop.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from neuralcleanse.backends.base import Classifier, StepStats, TriggerSession, to_raw
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.search.batch_plan import BatchPlan
from neuralcleanse.search.progress import LabelRows, ScanProgress
from neuralcleanse.search.schedule import CostSchedule

LabelCallback = Callable[[LabelResult], None]
#: Receives the whole search state (a flat dict of numpy arrays) to store it.
CheckpointCallback = Callable[[dict[str, np.ndarray]], None]
#: Default seconds between two checkpoints of a running search.
CHECKPOINT_EVERY_S = 300.0


def initial_trigger(label: int, clf: Classifier, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uniform initial mask and pattern of one label, in the raw ``tanh`` space.

    The draw depends on the seed and the label only, never on the labels searched before.
    """
    rng = np.random.default_rng([seed, int(label)])
    mask = rng.random(clf.image_shape)
    pattern = rng.random(clf.input_shape)
    return to_raw(mask), to_raw(pattern)


def resolve_label_batch(clf: Classifier, config: ScanConfig, n_labels: int) -> int:
    """How many labels to stack: ``config.label_batch`` or what the memory budget allows."""
    if config.label_batch is not None:
        return min(config.label_batch, n_labels)
    per_label = clf.activation_bytes_per_image() * config.batch_size
    fits = int(config.memory_budget_mb * 2**20 // max(per_label, 1))
    return max(1, min(n_labels, fits))


def reverse_engineer(clf: Classifier, x: np.ndarray, y: np.ndarray, config: ScanConfig,
                     labels: Sequence[int] | None = None,
                     on_label_done: LabelCallback | None = None,
                     checkpoint: CheckpointCallback | None = None,
                     resume_state: dict[str, np.ndarray] | None = None,
                     checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> list[LabelResult]:
    """Search the smallest trigger of each label on clean data ``x, y``.

    Args:
        clf: The wrapped model.
        x: Clean raw images in the model's input layout (validated by the caller).
        y: Their integer labels.
        config: Search settings.
        labels: Labels to search (default: all outputs).
        on_label_done: Called with each label's result as soon as that label stops.
        checkpoint: Called with the whole search state (between two steps) at most every
            ``checkpoint_every_s`` seconds, and with the state after the last finished step when
            the search is interrupted (``KeyboardInterrupt``) before the interruption goes on.
        resume_state: A state given to ``checkpoint`` by an earlier call with the same model,
            data, settings and labels: the search continues from it and ends with exactly the
            result of an uninterrupted search (labels finished before are not reported to
            ``on_label_done`` again).
        checkpoint_every_s: Seconds between two checkpoints (0: after every step).

    Returns:
        One :class:`LabelResult` per label, in the order of ``labels``.
    """
    targets = np.arange(clf.nb_classes) if labels is None else np.asarray(labels, dtype=np.int64)
    n_images = len(x)
    if n_images < config.batch_size:
        raise InputError(f"{n_images} clean images are fewer than one batch "
                         f"(batch_size={config.batch_size}); give more images or a smaller "
                         "batch_size")
    if not checkpoint_every_s >= 0:
        raise InputError(f"checkpoint_every_s={checkpoint_every_s} must be 0 or more seconds")
    mini_batches = config.mini_batches or math.ceil(n_images / config.batch_size)
    plan = BatchPlan(n_images, config.batch_size, mini_batches, config.seed)
    search = _SearchState(targets, CostSchedule(len(targets), config))
    schedule = search.schedule
    capacity = resolve_label_batch(clf, config, len(targets))

    last_reg = np.full(len(targets), np.nan)  # display only: each label's last step's norm
    with clf.trigger_session(x, y, config) as session, \
            ScanProgress(len(targets), enabled=config.progress,
                         description=f"reversing triggers (seed {config.seed})") as progress:
        if resume_state is not None:
            search.load(resume_state, session)
        last_saved = time.monotonic()
        boundary = search.state(session) if checkpoint is not None else None
        try:
            while search.pending or session.size:
                ran, stats = _search_step(clf, config, plan, search, session, capacity,
                                          on_label_done)
                slots = search.slots
                rows = None
                if progress.shown:
                    last_reg[ran] = stats.reg
                    rows = LabelRows(labels=targets[slots], steps=schedule.steps_run[slots],
                                     cost=schedule.cost[slots], norm=last_reg[slots],
                                     best_norm=schedule.best_reg[slots],
                                     asr=search.last_asr[slots])
                progress.update(done=len(search.results), active=session.size,
                                step=int(schedule.steps_run[slots].max()) if len(slots) else 0,
                                rows=rows)
                if checkpoint is not None and (search.pending or session.size):
                    boundary = search.state(session)
                    if time.monotonic() - last_saved >= checkpoint_every_s:
                        checkpoint(boundary)
                        last_saved = time.monotonic()
        except KeyboardInterrupt:
            if checkpoint is not None and boundary is not None:
                checkpoint(boundary)
            raise
    return [search.results[p] for p in range(len(targets))]


class _SearchState:
    """What the search loop keeps besides the session: everything a checkpoint must hold."""

    def __init__(self, targets: np.ndarray, schedule: CostSchedule) -> None:
        n = len(targets)
        self.targets = targets
        self.schedule = schedule
        self.best_mask: dict[int, np.ndarray] = {}
        self.best_pattern: dict[int, np.ndarray] = {}
        self.kept_asr = np.zeros(n)
        self.last_asr = np.zeros(n)
        self.seconds = np.zeros(n)
        self.results: dict[int, LabelResult] = {}
        self.pending = deque(range(n))
        self.slots = np.zeros(0, dtype=np.int64)  # position in `targets` of each stacked label

    def state(self, session: TriggerSession) -> dict[str, np.ndarray]:
        """A flat dict of arrays: the session's, the schedule's and the loop's own."""
        out = {f"session/{k}": v for k, v in session.state().items()}
        out.update({f"schedule/{k}": v for k, v in self.schedule.state().items()})
        best = np.asarray(sorted(self.best_mask), dtype=np.int64)
        done = np.asarray(sorted(self.results), dtype=np.int64)
        finished = [self.results[int(p)] for p in done]
        out.update({
            "search/targets": self.targets.astype(np.int64),
            "search/pending": np.asarray(self.pending, dtype=np.int64),
            "search/slots": self.slots.copy(),
            "search/kept_asr": self.kept_asr.copy(),
            "search/last_asr": self.last_asr.copy(),
            "search/seconds": self.seconds.copy(),
            "search/best_index": best,
            "search/best_mask": _stack([self.best_mask[int(p)] for p in best]),
            "search/best_pattern": _stack([self.best_pattern[int(p)] for p in best]),
            "search/done_index": done,
            "search/done_mask": _stack([r.mask for r in finished]),
            "search/done_pattern": _stack([r.pattern for r in finished]),
            "search/done_norm": np.asarray([r.norm for r in finished], dtype=np.float64),
            "search/done_asr": np.asarray([r.attack_success_rate for r in finished],
                                          dtype=np.float64),
            "search/done_converged": np.asarray([r.converged for r in finished], dtype=bool),
            "search/done_steps": np.asarray([r.steps for r in finished], dtype=np.int64),
            "search/done_seconds": np.asarray([r.seconds for r in finished], dtype=np.float64),
            "search/done_cost": np.asarray([r.final_cost for r in finished], dtype=np.float64),
        })
        return out

    def load(self, state: dict[str, np.ndarray], session: TriggerSession) -> None:
        """Continue from :meth:`state`'s output (checked against this search's labels)."""
        try:
            saved = np.asarray(state["search/targets"])
            if not np.array_equal(saved, self.targets):
                raise InputError(f"the saved search state is for labels {saved.tolist()}, not "
                                 f"{self.targets.tolist()}; resume with the same labels or "
                                 "start over")
            self.schedule.load_state({k.split("/", 1)[1]: v for k, v in state.items()
                                      if k.startswith("schedule/")})
            session.load_state({k.split("/", 1)[1]: v for k, v in state.items()
                                if k.startswith("session/")})
            self.pending = deque(int(p) for p in state["search/pending"])
            self.slots = np.asarray(state["search/slots"], dtype=np.int64).copy()
            for name in ("kept_asr", "last_asr", "seconds"):
                setattr(self, name, np.asarray(state[f"search/{name}"], dtype=np.float64).copy())
            for i, p in enumerate(state["search/best_index"]):
                self.best_mask[int(p)] = np.asarray(state["search/best_mask"][i])
                self.best_pattern[int(p)] = np.asarray(state["search/best_pattern"][i])
            for i, p in enumerate(state["search/done_index"]):
                self.results[int(p)] = LabelResult(
                    label=int(self.targets[int(p)]),
                    mask=np.asarray(state["search/done_mask"][i]),
                    pattern=np.asarray(state["search/done_pattern"][i]),
                    norm=float(state["search/done_norm"][i]),
                    attack_success_rate=float(state["search/done_asr"][i]),
                    converged=bool(state["search/done_converged"][i]),
                    steps=int(state["search/done_steps"][i]),
                    seconds=float(state["search/done_seconds"][i]),
                    final_cost=float(state["search/done_cost"][i]))
        except KeyError as exc:
            raise InputError(f"the saved search state lacks {exc}; it was not written by this "
                             "version's search, so start over") from None
        if session.size != len(self.slots):
            raise InputError(f"the saved search state holds {session.size} stacked labels for "
                             f"{len(self.slots)} slots; it is damaged, so start over")


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros((0,), dtype=np.float32)


def _search_step(clf: Classifier, config: ScanConfig, plan: BatchPlan, search: _SearchState,
                 session: TriggerSession, capacity: int,
                 on_label_done: LabelCallback | None) -> tuple[np.ndarray, StepStats]:
    """One step of the stacked search: fill the stack, step it, keep and retire triggers.

    Returns:
        The positions (in ``search.targets``) of the labels that ran the step, and the step's
        measurements for them.
    """
    schedule, targets = search.schedule, search.targets
    pending = search.pending
    if pending and session.size < capacity:
        new = [pending.popleft() for _ in range(min(capacity - session.size, len(pending)))]
        inits = [initial_trigger(int(targets[p]), clf, config.seed) for p in new]
        session.add(targets[new], np.stack([m for m, _ in inits]),
                    np.stack([p for _, p in inits]))
        search.slots = np.concatenate([search.slots, np.asarray(new, dtype=np.int64)])
    slots = search.slots

    started = time.perf_counter()
    stats = session.step(plan.indices(schedule.steps_run[slots]), schedule.cost[slots])
    _check_finite(stats, targets[slots], schedule.steps_run[slots], clf)
    keep, stop = schedule.update(slots, stats.attack_success_rate, stats.reg)
    search.last_asr[slots] = stats.attack_success_rate
    if keep.any():
        kept = np.flatnonzero(keep)
        masks, patterns = session.triggers(kept)
        for k, mask, pattern in zip(kept, masks, patterns):
            search.best_mask[slots[k]], search.best_pattern[slots[k]] = mask, pattern
            search.kept_asr[slots[k]] = stats.attack_success_rate[k]
    search.seconds[slots] += (time.perf_counter() - started) / len(slots)

    if stop.any():
        finished = np.flatnonzero(stop)
        last_masks, last_patterns = session.triggers(finished)
        for k, last_m, last_p in zip(finished, last_masks, last_patterns):
            pos = int(slots[k])
            converged = bool(schedule.converged[pos])
            mask = search.best_mask.pop(pos, last_m) if converged else last_m
            pattern = search.best_pattern.pop(pos, last_p) if converged else last_p
            result = LabelResult(
                label=int(targets[pos]), mask=mask, pattern=pattern,
                norm=float(np.abs(mask).sum()),
                attack_success_rate=float(search.kept_asr[pos] if converged
                                          else search.last_asr[pos]),
                converged=converged, steps=int(schedule.steps_run[pos]),
                seconds=float(search.seconds[pos]), final_cost=float(schedule.cost[pos]))
            search.results[pos] = result
            if on_label_done is not None:
                on_label_done(result)
        session.remove(finished)
        search.slots = slots[~stop]
    return slots, stats


def _check_finite(stats: StepStats, labels: np.ndarray, steps: np.ndarray,
                  clf: Classifier) -> None:
    """Stop the search at the first step whose loss or mask norm is NaN or infinite.

    Such a value means the model returned NaN/Inf for stamped images (or the trigger itself
    became NaN); every later step and the reported norms would be meaningless.
    """
    bad = ~(np.isfinite(stats.loss) & np.isfinite(stats.reg))
    if bad.any():
        which = [int(t) for t in labels[bad]]
        lo, hi = clf.clip_values
        raise InputError(f"the model returned NaN/Inf for images stamped with the trigger of "
                         f"label(s) {which} (step {int(steps[bad].min()) + 1} of the search), "
                         f"so no trigger norm can be measured; check that the model gives "
                         f"finite outputs for all inputs in clip_values [{lo:g}, {hi:g}]")
