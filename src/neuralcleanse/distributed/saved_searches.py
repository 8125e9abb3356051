"""The label searches a finished model keeps, so that other verdict settings need no new search.

A model's searches are kept per seed in ``OUT/.scan-many/searches/<name>/seed-<s>/`` (one
:class:`~neuralcleanse.io.resume.PartialStore` each, keyed by the fingerprint of the model, data
and search settings): the first pass with the run's seed, and the confirmation's runs with the
further seeds. A later ``resume`` with other verdict settings grades the model again from them
and searches only what the new settings plan that was never searched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, one_line
from neuralcleanse.core.results import LabelResult
from neuralcleanse.distributed.tasks import searches_dir
from neuralcleanse.io.resume import PartialStore
from neuralcleanse.search.confirm import further_seeds


class SavedSearches:
    """One model's kept label searches, by seed.

    Args:
        out: The run's output folder.
        name: The model's name.
        key: The fingerprint of its model, data and search settings.
    """

    def __init__(self, out: str | Path, name: str, key: str) -> None:
        self.folder = searches_dir(out, name)
        self.key = key

    def store(self, seed: int) -> PartialStore:
        """The store of the searches with ``seed``."""
        return PartialStore(self.folder / f"seed-{seed}", self.key)

    def load(self, seed: int) -> dict[int, LabelResult]:
        """The searches with ``seed`` kept by an earlier run, by label.

        Searches kept for another model, data or search settings are stale: they are removed
        and none is returned.
        """
        store = self.store(seed)
        try:
            return {r.label: r for r in store.load()}
        except InputError:
            store.clear()
            return {}

    def save(self, seed: int, results: list[LabelResult]) -> str | None:
        """Keep ``results`` (searched with ``seed``); a warning when they cannot be kept."""
        store = self.store(seed)
        try:
            for r in results:
                store.save(r)
        except (InputError, OSError) as exc:
            return f"its searches were not kept for a later re-grading: {one_line(exc)}"
        return None

    def forget(self) -> None:
        """Remove every kept search of the model (a run without ``resume`` starts over)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def confirmations(self, cfg: ScanConfig, labels: list[int]
                      ) -> dict[int, list[LabelResult]]:
        """The further runs of ``labels`` kept by an earlier run, for labels that have them all.

        Each label's runs come in the order of
        :func:`~neuralcleanse.search.confirm.further_seeds`.
        """
        by_seed = [self.load(s) for s in further_seeds(cfg)]
        return {t: [runs[t] for runs in by_seed] for t in labels
                if all(t in runs for runs in by_seed)}

    def save_confirmations(self, cfg: ScanConfig, runs: dict[int, list[LabelResult]]
                           ) -> str | None:
        """Keep a confirmation's runs (each label's in further-seed order)."""
        for k, seed in enumerate(further_seeds(cfg)):
            warning = self.save(seed, [found[k] for found in runs.values() if k < len(found)])
            if warning:
                return warning
        return None
