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

from neuralcleanse.backends.base import Classifier, StepStats, to_raw
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.search.batch_plan import BatchPlan
from neuralcleanse.search.progress import ScanProgress
from neuralcleanse.search.schedule import CostSchedule

LabelCallback = Callable[[LabelResult], None]


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
                     on_label_done: LabelCallback | None = None) -> list[LabelResult]:
    """Search the smallest trigger of each label on clean data ``x, y``.

    Args:
        clf: The wrapped model.
        x: Clean raw images in the model's input layout (validated by the caller).
        y: Their integer labels.
        config: Search settings.
        labels: Labels to search (default: all outputs).
        on_label_done: Called with each label's result as soon as that label stops.

    Returns:
        One :class:`LabelResult` per label, in the order of ``labels``.
    """
    targets = np.arange(clf.nb_classes) if labels is None else np.asarray(labels, dtype=np.int64)
    n_images = len(x)
    if n_images < config.batch_size:
        raise InputError(f"{n_images} clean images are fewer than one batch "
                         f"(batch_size={config.batch_size}); give more images or a smaller "
                         "batch_size")
    mini_batches = config.mini_batches or math.ceil(n_images / config.batch_size)
    plan = BatchPlan(n_images, config.batch_size, mini_batches, config.seed)
    schedule = CostSchedule(len(targets), config)
    capacity = resolve_label_batch(clf, config, len(targets))

    best_mask: dict[int, np.ndarray] = {}
    best_pattern: dict[int, np.ndarray] = {}
    kept_asr = np.zeros(len(targets))
    last_asr = np.zeros(len(targets))
    seconds = np.zeros(len(targets))
    results: dict[int, LabelResult] = {}

    pending = deque(range(len(targets)))
    slots = np.zeros(0, dtype=np.int64)  # position in `targets` of each stacked label
    with clf.trigger_session(x, y, config) as session, \
            ScanProgress(len(targets), enabled=config.progress) as progress:
        while pending or session.size:
            if pending and session.size < capacity:
                new = [pending.popleft() for _ in range(min(capacity - session.size,
                                                            len(pending)))]
                inits = [initial_trigger(int(targets[p]), clf, config.seed) for p in new]
                session.add(targets[new], np.stack([m for m, _ in inits]),
                            np.stack([p for _, p in inits]))
                slots = np.concatenate([slots, np.asarray(new, dtype=np.int64)])

            started = time.perf_counter()
            stats = session.step(plan.indices(schedule.steps_run[slots]), schedule.cost[slots])
            _check_finite(stats, targets[slots], schedule.steps_run[slots], clf)
            keep, stop = schedule.update(slots, stats.attack_success_rate, stats.reg)
            last_asr[slots] = stats.attack_success_rate
            if keep.any():
                kept = np.flatnonzero(keep)
                masks, patterns = session.triggers(kept)
                for k, mask, pattern in zip(kept, masks, patterns):
                    best_mask[slots[k]], best_pattern[slots[k]] = mask, pattern
                    kept_asr[slots[k]] = stats.attack_success_rate[k]
            seconds[slots] += (time.perf_counter() - started) / len(slots)

            if stop.any():
                finished = np.flatnonzero(stop)
                last_masks, last_patterns = session.triggers(finished)
                for k, last_m, last_p in zip(finished, last_masks, last_patterns):
                    pos = int(slots[k])
                    converged = bool(schedule.converged[pos])
                    mask = best_mask.pop(pos, last_m) if converged else last_m
                    pattern = best_pattern.pop(pos, last_p) if converged else last_p
                    result = LabelResult(
                        label=int(targets[pos]), mask=mask, pattern=pattern,
                        norm=float(np.abs(mask).sum()),
                        attack_success_rate=float(kept_asr[pos] if converged else last_asr[pos]),
                        converged=converged, steps=int(schedule.steps_run[pos]),
                        seconds=float(seconds[pos]), final_cost=float(schedule.cost[pos]))
                    results[pos] = result
                    if on_label_done is not None:
                        on_label_done(result)
                session.remove(finished)
                slots = slots[~stop]
            progress.update(done=len(results), active=session.size,
                            step=int(schedule.steps_run[slots].max()) if len(slots) else 0)
    return [results[p] for p in range(len(targets))]


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
