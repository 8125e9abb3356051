"""Live progress display of a scan: a bar over labels and a table of the active labels.

The bar shows labels done and active, the step and the ETA; the table shows, per active label,
its step, cost, last norm, best norm and attack success rate. The search hands the display
numbers it already holds on the host after each step (:class:`LabelRows`) and the display keeps
a reference to them; rich's refresh thread draws them a few times per second, so a step never
waits for the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from rich import get_console
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

#: Rows of the per-label table (the labels with the smallest best norm); the other active
#: labels are counted in a "+N more" line.
MAX_ROWS = 12
#: Redraws per second (a redraw with a full table takes ~6 ms of one core: ~1 % at this rate).
REFRESH_PER_SECOND = 2
#: Shown for a value that does not exist yet (no trigger has reached the threshold).
MISSING = "–"


@dataclass(frozen=True)
class LabelRows:
    """The state of the active labels after a step: host arrays, one entry per active label.

    Attributes:
        labels: The labels.
        steps: Steps each label has run.
        cost: Each label's current cost (the weight of the norm in its loss).
        norm: Mean mask norm of each label's last step (NaN where not known yet).
        best_norm: Norm of each label's best trigger so far; infinite while no trigger has
            reached the attack success threshold.
        asr: Attack success rate of each label's last step.
    """

    labels: np.ndarray
    steps: np.ndarray
    cost: np.ndarray
    norm: np.ndarray
    best_norm: np.ndarray
    asr: np.ndarray


class ScanProgress:
    """A progress bar over labels with a table of the active labels.

    A no-op when disabled or when the console can show no live display (not a terminal and not
    a notebook).
    """

    def __init__(self, n_labels: int, enabled: bool = True,
                 description: str = "reversing triggers", console: Console | None = None,
                 max_rows: int = MAX_ROWS) -> None:
        self._n_labels = n_labels
        self._max_rows = max_rows
        # one attribute, replaced whole, so that the refresh thread never sees half an update
        self._state: tuple[int, LabelRows | None] = (0, None)
        self._drawn = False
        self._progress: _Display | None = None
        if not enabled:
            return
        console = get_console() if console is None else console
        if console.is_terminal or console.is_jupyter:
            self._progress = _Display(
                self, TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("labels · {task.fields[active]} active · step {task.fields[step]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                refresh_per_second=REFRESH_PER_SECOND)
            self._task = self._progress.add_task(description, total=n_labels, active=0, step=0)

    @property
    def shown(self) -> bool:
        """Whether anything is displayed (callers skip gathering label rows otherwise)."""
        return self._progress is not None

    def __enter__(self) -> ScanProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, active: int, step: int, rows: LabelRows | None = None) -> None:
        """Show ``done`` finished labels, ``active`` labels in the stack, the current step.

        Args:
            done: Labels finished.
            active: Labels in the stack.
            step: The furthest step of an active label.
            rows: The active labels' state for the table (kept by reference, not copied: pass
                arrays the search does not change afterwards); ``None`` leaves the table out.
        """
        if self._progress is None:
            return
        self._state = (done, rows)
        self._progress.update(self._task, completed=done, active=active, step=step)
        if not self._drawn:  # show the table at once; later redraws come from the refresh thread
            self._drawn = True
            self._progress.refresh()

    def label_table(self) -> RenderableType | None:
        """The table of the active labels (``None`` when there is none).

        At most ``max_rows`` rows: the labels with the smallest best norm, then those without a
        trigger yet by their last norm; a last line counts the labels not shown, the finished
        labels and the labels (if any) still waiting for a place in the stack.
        """
        done, rows = self._state
        if rows is None or len(rows.labels) == 0:
            return None
        last_norm = np.where(np.isnan(rows.norm), np.inf, rows.norm)
        order = np.lexsort((rows.labels, last_norm, rows.best_norm))
        shown = order[:self._max_rows]
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
        for name in ("label", "step", "cost", "norm", "best", "ASR"):
            table.add_column(name, justify="right")
        for i in shown:
            table.add_row(str(int(rows.labels[i])), str(int(rows.steps[i])),
                          _cost(rows.cost[i]), _norm(rows.norm[i]), _norm(rows.best_norm[i]),
                          _percent(rows.asr[i]))
        waiting = max(self._n_labels - done - len(rows.labels), 0)
        counts = [f"+{len(order) - len(shown)} more active"] if len(order) > len(shown) else []
        counts += [f"{done} done"] + ([f"{waiting} waiting"] if waiting else [])
        return Group(table, Text(" · ".join(counts), style="dim"))


class _Display(Progress):
    """rich's progress bar followed by the owner's label table."""

    def __init__(self, owner: ScanProgress, *columns: Any, **options: Any) -> None:
        self._owner = owner  # before rich's constructor, which renders once
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterable[RenderableType]:
        """The bar, then the label table."""
        yield from super().get_renderables()
        table = self._owner.label_table()
        if table is not None:
            yield table


def _cost(value: float) -> str:
    value = float(value)
    return "0" if value == 0 else f"{value:.3g}"


def _norm(value: float) -> str:
    value = float(value)
    if not np.isfinite(value):
        return MISSING
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _percent(value: float) -> str:
    value = float(value)
    return f"{value:.1%}" if np.isfinite(value) else MISSING
