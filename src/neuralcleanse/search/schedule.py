"""Per-label cost schedule, best-trigger rule and early stop of the trigger search.

The state of every label lives in numpy arrays so that one call updates all active labels at
once. The rules are those of the Neural Cleanse authors' code (see DESIGN §2):

* the cost starts at 0; while it is 0, ``patience`` successful steps in a row switch it to
  ``init_cost`` and reset the counters;
* afterwards ``patience`` successes in a row multiply it by ``m`` and ``patience`` failures in a
  row divide it by ``m ** 1.5``;
* a trigger is kept when the step's attack success rate reaches the threshold and its norm beats
  the best so far;
* once a trigger was kept, steps without real improvement are counted; a label stops when its cost
  has gone both up and down and the count reaches ``early_stop_patience``.
"""

from __future__ import annotations

import numpy as np

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError

#: Highest cost the schedule reaches. A label whose trigger keeps succeeding at any cost (a model
#: that predicts the label for every input) would otherwise double its cost until it overflows to
#: infinity; far below this value the norm term already outweighs the classification loss.
MAX_COST = 1e15


class CostSchedule:
    """Vectorised schedule state for ``n_labels`` independent trigger searches."""

    def __init__(self, n_labels: int, config: ScanConfig) -> None:
        self.config = config
        self.cost = np.zeros(n_labels)
        self.best_reg = np.full(n_labels, np.inf)
        self.steps_run = np.zeros(n_labels, dtype=np.int64)
        self.stopped = np.zeros(n_labels, dtype=bool)
        self._set_counter = np.zeros(n_labels, dtype=np.int64)
        self._up_counter = np.zeros(n_labels, dtype=np.int64)
        self._down_counter = np.zeros(n_labels, dtype=np.int64)
        self.cost_went_up = np.zeros(n_labels, dtype=bool)
        self.cost_went_down = np.zeros(n_labels, dtype=bool)
        self._early_counter = np.zeros(n_labels, dtype=np.int64)
        self._early_best = np.full(n_labels, np.inf)

    #: The arrays that make up the schedule's state (see :meth:`state`).
    FIELDS = ("cost", "best_reg", "steps_run", "stopped", "_set_counter", "_up_counter",
              "_down_counter", "cost_went_up", "cost_went_down", "_early_counter", "_early_best")

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every per-label array, keyed by name without the leading underscore."""
        return {name.lstrip("_"): getattr(self, name).copy() for name in self.FIELDS}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore the arrays saved with :meth:`state` (same number of labels)."""
        for name in self.FIELDS:
            current = getattr(self, name)
            value = np.asarray(state[name.lstrip("_")], dtype=current.dtype)
            if value.shape != current.shape:
                raise InputError(f"schedule state {name.lstrip('_')!r} has shape "
                                 f"{value.shape}, expected {current.shape}: the checkpoint "
                                 "belongs to another scan")
            setattr(self, name, value.copy())

    @property
    def converged(self) -> np.ndarray:
        """Whether each label has kept a trigger that reached the attack success threshold."""
        return np.isfinite(self.best_reg)

    def update(self, labels: np.ndarray, asr: np.ndarray, reg: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Record one finished step for some labels.

        Args:
            labels: Indices (into this schedule) of the labels that ran the step.
            asr: Attack success rate of each label over the step.
            reg: Mean mask norm of each label over the step.

        Returns:
            ``(keep, stop)``: boolean arrays aligned with ``labels``; ``keep`` says that the
            label's current trigger is its new best, ``stop`` that the label is finished.
        """
        cfg = self.config
        idx = np.asarray(labels, dtype=np.int64)
        asr = np.asarray(asr, dtype=np.float64)
        reg = np.asarray(reg, dtype=np.float64)
        success = asr >= cfg.attack_success_threshold
        self.steps_run[idx] += 1

        keep = success & (reg < self.best_reg[idx])
        self.best_reg[idx] = np.where(keep, reg, self.best_reg[idx])

        stop = self.steps_run[idx] >= cfg.steps
        if cfg.early_stop:
            best = self.best_reg[idx]
            has_best = np.isfinite(best)
            no_gain = best >= cfg.early_stop_threshold * self._early_best[idx]
            counter = np.where(has_best, np.where(no_gain, self._early_counter[idx] + 1, 0),
                               self._early_counter[idx])
            self._early_counter[idx] = counter
            self._early_best[idx] = np.minimum(best, self._early_best[idx])
            stop |= (self.cost_went_up[idx] & self.cost_went_down[idx]
                     & (counter >= cfg.early_stop_patience))

        self._update_cost(idx, success)
        self.stopped[idx] |= stop
        return keep, stop

    def _update_cost(self, idx: np.ndarray, success: np.ndarray) -> None:
        cfg = self.config
        cost = self.cost[idx]
        off = cost == 0.0

        # Phase 1: the cost is still 0 and waits for `patience` successes in a row.
        set_counter = np.where(off & success, self._set_counter[idx] + 1, 0)
        switch_on = off & (set_counter >= cfg.patience)
        self._set_counter[idx] = np.where(switch_on, 0, set_counter)

        # Phase 2: the cost is on and moves up or down after `patience` steps in a row.
        on = ~off
        up = np.where(on & success, self._up_counter[idx] + 1, 0)
        down = np.where(on & ~success, self._down_counter[idx] + 1, 0)
        go_up = on & (up >= cfg.patience)
        go_down = on & ~go_up & (down >= cfg.patience)
        up = np.where(go_up, 0, up)
        down = np.where(go_down, 0, down)
        cost = np.where(go_up, np.minimum(cost * cfg.cost_multiplier, MAX_COST), cost)
        cost = np.where(go_down, cost / cfg.cost_multiplier ** 1.5, cost)
        cost = np.where(switch_on, cfg.init_cost, cost)

        self.cost[idx] = cost
        self._up_counter[idx] = up
        self._down_counter[idx] = down
        self.cost_went_up[idx] = np.where(switch_on, False, self.cost_went_up[idx] | go_up)
        self.cost_went_down[idx] = np.where(switch_on, False, self.cost_went_down[idx] | go_down)
