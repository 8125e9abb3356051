"""neuralcleanse: find and remove backdoors in trained image classifiers (Neural Cleanse)."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import scan  # noqa: E402
from .config import ScanConfig  # noqa: E402
from .outliers import anomaly_indices  # noqa: E402
from .results import LabelResult, ScanResult  # noqa: E402

__all__ = ["LabelResult", "ScanConfig", "ScanResult", "__version__", "anomaly_indices", "scan"]
