"""neuralcleanse: find and remove backdoors in trained image classifiers (Neural Cleanse)."""

from __future__ import annotations

__version__ = "0.1.0"

from neuralcleanse.core.config import ScanConfig  # noqa: E402
from neuralcleanse.core.outliers import anomaly_indices  # noqa: E402
from neuralcleanse.core.results import LabelResult, ScanResult  # noqa: E402
from neuralcleanse.frontends.api import mitigate, scan, scan_many  # noqa: E402
from neuralcleanse.mitigation import (  # noqa: E402
    FilteringReport,
    InputFilter,
    MitigationResult,
    PruningReport,
    UnlearningReport,
)

__all__ = ["FilteringReport", "InputFilter", "KerasNeuralCleanse", "LabelResult",
           "MitigationResult", "PruningReport", "PyTorchNeuralCleanse", "ScanConfig",
           "ScanResult", "UnlearningReport", "__version__", "anomaly_indices", "load_data",
           "load_filter", "load_model", "mitigate", "scan", "scan_many"]

#: Names loaded on first use, so that importing neuralcleanse imports no deep-learning framework.
#: load_model / load_data import no framework themselves (a file's loader imports its own), but
#: their modules are only needed by callers who read files.
_LAZY = {"KerasNeuralCleanse": "frontends.art", "PyTorchNeuralCleanse": "frontends.art",
         "load_model": "backends.loading", "load_data": "io.data_files",
         "load_filter": "io.filter_loading"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
