"""Scan results with a chosen verdict, graded by the library's own confirmation step.

The first run's norms and the further seeds' norms are given; the result is the one
:func:`neuralcleanse.search.confirm.apply_confirmation` makes of them, so the reports and the
command line are tested on results shaped exactly as a real scan's. The expected numbers are
worked out here from the inputs (median, MAD, anomaly index), independently of the library.
"""

from __future__ import annotations

import numpy as np

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.search.confirm import apply_confirmation, plan_confirmation

#: Side of the masks (the tiny CLI models take 8x8 one-channel images).
SIDE = 8
#: Optimisation steps of every label's search, first run and further runs alike.
STEPS = 40
#: First-run norms of ten labels: label 9 is far below the others, label 4 near the threshold.
FIRST_NORMS = [20.0, 21.0, 19.6, 20.5, 18.6, 21.5, 20.2, 19.8, 20.8, 6.0]
OUTLIER, BORDERLINE = 9, 4
#: Further-seed norms giving each verdict: label 9 stays small (backdoor, with label 4 crossing
#: in one further run only) or comes back to the crowd (suspicious), or nothing is small at all.
FURTHER = {
    "backdoor": {OUTLIER: [6.5, 5.5], BORDERLINE: [5.0, 19.2]},
    "suspicious": {OUTLIER: [20.0, 19.9], BORDERLINE: [19.0, 19.1]},
}
CLEAN_NORMS = [20.0, 21.0, 19.6, 20.5, 19.9, 21.5, 20.2, 19.8, 20.8, 20.4]
#: First-run norms that spread widely (like a small ResNet's): label 0's trigger is a fifth of
#: the median's, yet its anomaly index stays under 2; ``"spread"`` keeps it small in every run,
#: so it is flagged for its norm alone (``small_norm_ratio``).
SPREAD_NORMS = [4.1, 12.9, 15.2, 20.8, 22.3, 25.5, 30.0, 34.0, 40.0, 45.0]
SMALL = 0
FURTHER["spread"] = {SMALL: [4.4, 3.9]}
#: ``"mixed"``: label 0 crosses the index threshold (2.1), label 1 does not (1.6) but its trigger
#: is 28 % of the median norm: one label flagged by its index, one by its size.
MIXED_NORMS = [1.0, 5.6, 14.0, 15.0, 17.0, 23.0, 25.0, 26.0, 30.0, 35.0]
FURTHER["mixed"] = {0: [1.0, 1.0], 1: [5.6, 5.6]}


def first_norms(verdict: str) -> list[float]:
    """The first run's norms :func:`graded_result` starts from for ``verdict``."""
    return {"clean": CLEAN_NORMS, "spread": SPREAD_NORMS,
            "mixed": MIXED_NORMS}.get(verdict, FIRST_NORMS)


def label_result(label: int, norm: float, rng: np.random.Generator) -> LabelResult:
    """A label whose mask (one channel, ``SIDE`` x ``SIDE``) has L1 norm ``norm``."""
    mask = np.full((SIDE, SIDE), norm / SIDE**2, dtype=np.float32)
    return LabelResult(label=label, mask=mask,
                       pattern=rng.random((1, SIDE, SIDE)).astype(np.float32),
                       norm=float(norm), attack_success_rate=0.995, converged=True,
                       steps=STEPS, seconds=0.25, final_cost=1e-3)


def graded_result(verdict: str, cfg: ScanConfig | None = None,
                  extra_seconds: float = 2.5) -> ScanResult:
    """Ten labels graded by the library; ``verdict`` chooses the norms that give it
    (``"spread"``: a backdoor flagged for its small norm alone; ``"mixed"``: one label flagged
    by its index and one by its norm)."""
    cfg = cfg or ScanConfig()
    rng = np.random.default_rng(0)
    norms = first_norms(verdict)
    first = ScanResult.from_labels(
        [label_result(t, n, rng) for t, n in enumerate(norms)], nb_classes=len(norms),
        anomaly_threshold=cfg.anomaly_threshold, config=cfg.to_dict(),
        model_info={"framework": "pytorch", "path": "model.pt",
                    "input_shape": [1, SIDE, SIDE], "channels_first": True,
                    "clip_values": [0.0, 1.0], "output": "logits", "preprocessing": None},
        data_info={"n_images": 40, "class_counts": [4] * len(norms)},
        versions={"neuralcleanse": "test"}, wall_seconds=10.0)
    further = FURTHER.get(verdict, {})
    extra = {t: [label_result(t, further.get(t, [norms[t]] * cfg.confirm_seeds)[i], rng)
                 for i in range(cfg.confirm_seeds)]
             for t in plan_confirmation(first, cfg)}
    result = apply_confirmation(first, extra, cfg, extra_seconds)
    if cfg.verdict == "confirmed":
        expected = "backdoor" if verdict in ("spread", "mixed") else verdict
        assert result.verdict == expected, (verdict, result.verdict)
    return result


def anomaly_index(norms: list[float]) -> np.ndarray:
    """The paper's anomaly index of every norm, computed here: (median - norm) / MAD."""
    values = np.asarray(norms, dtype=np.float64)
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (median - values) / mad


def expected_runs(verdict: str, candidates: list[int]) -> dict[int, list[float]]:
    """The further-seed norms :func:`graded_result` gives each candidate."""
    norms = first_norms(verdict)
    further = FURTHER.get(verdict, {})
    return {t: list(further.get(t, [norms[t]] * 2)) for t in candidates}
