"""Progress display of a scan (labels done, labels active, current step, ETA)."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ScanProgress:
    """A progress bar over labels; a no-op when disabled or when stderr is not a terminal."""

    def __init__(self, n_labels: int, enabled: bool = True,
                 description: str = "reversing triggers") -> None:
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("labels · {task.fields[active]} active · step {task.fields[step]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
            self._task = self._progress.add_task(description, total=n_labels, active=0, step=0)

    def __enter__(self) -> ScanProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, active: int, step: int) -> None:
        """Show ``done`` finished labels, ``active`` labels in the stack, the current step."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, active=active, step=step)
