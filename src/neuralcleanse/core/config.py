"""The validated settings of a trigger search and of the outlier test.

Every parameter of the reverse-engineering search lives in :class:`ScanConfig`. The defaults are
the Neural Cleanse authors' settings (the paper's code); :meth:`ScanConfig.art_defaults` gives the
defaults of ART's ``KerasNeuralCleanse`` for users switching from ART.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.verdict import RULES, VERDICT_SETTINGS

VALID_NORMS = (1, 2, math.inf)
#: Number formats of the model's forward and backward pass in the trigger search.
PRECISIONS = ("fp32", "bf16")

#: Allowed ranges of the numeric settings: ``(low, high, low_open)``. The upper bounds keep
#: every value finite and the work bounded (a typo such as ``steps=10**12`` or
#: ``cost_multiplier=1e308`` is refused up front instead of running for ever or overflowing).
#: Largest seed numpy and the frameworks accept everywhere.
MAX_SEED = 2**32 - 1

INT_RANGES: dict[str, tuple[int, int]] = {
    "steps": (1, 1_000_000),
    "mini_batches": (1, 100_000),
    "batch_size": (1, 65_536),
    "patience": (1, 1_000_000),
    "early_stop_patience": (1, 1_000_000),
    "seed": (0, MAX_SEED),
    "label_batch": (1, 100_000),
    "confirm_seeds": (1, 16),
}
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.0, 10.0, True),
    "init_cost": (0.0, 1e6, True),
    "attack_success_threshold": (0.0, 1.0, True),
    "cost_multiplier": (1.0, 1000.0, True),
    "early_stop_threshold": (0.0, 1.0, True),
    "anomaly_threshold": (0.0, 1e6, True),
    "memory_budget_mb": (0.0, 2.0**20, True),
    "confirm_margin": (0.0, 1e6, False),
    "max_norm_ratio": (0.0, 1.0, True),
    "small_norm_ratio": (0.0, 1.0, False),
}


def _normalise_norm(value: Any) -> float | int:
    """Map the accepted spellings of a norm onto 1, 2 or ``math.inf``."""
    if isinstance(value, str):
        key = value.strip().lower()
        table = {"1": 1, "l1": 1, "2": 2, "l2": 2, "inf": math.inf, "linf": math.inf,
                 "max": math.inf}
        if key in table:
            return table[key]
        raise InputError(f"norm must be one of 1, 2 or inf (got {_shown(value)})")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"norm must be one of 1, 2 or inf (got {_shown(value)})")
    if value == 1:
        return 1
    if value == 2:
        return 2
    if value == math.inf:  # a comparison, not math.isinf: an enormous int must not overflow
        return math.inf
    raise InputError(f"norm must be one of 1, 2 or inf (got {_shown(value)})")


#: Settings added after scans could first be resumed, with the value that searches as earlier
#: versions did: at that value they stay out of :meth:`ScanConfig.search_key`, so a scan or a
#: scan-many run started before they existed still resumes.
LATER_SETTINGS: dict[str, Any] = {"precision": "fp32"}

#: The settings in which the ``fast`` preset differs from the paper's.
FAST_PRESET: dict[str, Any] = {"mini_batches": 8, "early_stop_patience": 10}


@dataclass(frozen=True)
class ScanConfig:
    """Settings of the Neural Cleanse trigger search and outlier detection.

    Every value is checked when the object is built: a value of the wrong type, a non-finite
    number or one outside its range (given below; see also :data:`INT_RANGES` and
    :data:`FLOAT_RANGES`) raises :class:`~neuralcleanse.core.errors.InputError` naming the setting
    and the allowed range. Integer settings accept any integral type (e.g. numpy integers) and
    are stored as ``int``; number settings are stored as ``float``.

    Attributes:
        steps: Maximum number of optimisation steps per label, in [1, 1000000].
        mini_batches: Mini-batches per step, in [1, 100000]; ``None`` means one pass over the
            clean data.
        batch_size: Clean images per mini-batch, in [1, 65536].
        learning_rate: Adam learning rate, in (0, 10].
        init_cost: Cost of the mask norm once the cost is first switched on, in (0, 1e6].
        norm: Norm of the mask that is penalised: 1 (the paper), 2 or ``inf``.
        attack_success_threshold: Attack success rate a trigger must reach to be kept, in (0, 1].
        patience: Steps in a row that trigger a cost change, in [1, 1000000].
        cost_multiplier: Factor ``m``, in (1, 1000]: the cost is multiplied by ``m`` on the way
            up and divided by ``m ** 1.5`` on the way down.
        early_stop: Whether a label may stop before ``steps``.
        early_stop_threshold: A step counts as "no improvement" when the best norm is at least
            this fraction of the previous best, in (0, 1].
        early_stop_patience: Steps without improvement before a label stops, in [1, 1000000].
        anomaly_threshold: Labels whose anomaly index exceeds this are flagged, in (0, 1e6].
        seed: Seed of the trigger initialisation and of the mini-batch order, in
            [0, 2**32 - 1].
        label_batch: Labels optimised together in one forward pass, in [1, 100000]; ``None``
            picks as many as the memory budget allows, ``1`` is the classic one-label-at-a-time
            loop.
        memory_budget_mb: Memory the stacked labels' activations may use, in (0, 2**20] MB.
        progress: Show a progress bar while scanning (True or False).
        verdict: The rule that decides the verdict: ``"confirmed"`` (the default) re-searches
            the borderline labels with further seeds and grades the model ``"backdoor"``,
            ``"suspicious"`` or ``"clean"`` on their median norms; ``"paper"`` is the published
            rule exactly (one run, a label is flagged when its anomaly index exceeds
            ``anomaly_threshold``, no confirmation).
        confirm_seeds: Further seeds with which each borderline label is searched again under
            the ``"confirmed"`` rule, in [1, 16].
        confirm_margin: A label is borderline when its first-run anomaly index exceeds
            ``anomaly_threshold - confirm_margin``, in [0, 1e6]; the label with the smallest
            norm is always borderline too.
        max_norm_ratio: Under the ``"confirmed"`` rule a label is flagged only when its
            confirmed norm is also at most this share of the median norm, in (0, 1]; a label
            whose index crosses the threshold but whose trigger is not that much smaller is
            suspicious. ``1`` switches the condition off (a flagged norm is always below the
            median). The default, 0.7, comes from the model zoo (README, "How far to trust the
            verdict"): on its clean models the labels with the smallest natural triggers had
            norms of 0.6-0.9 of the median, its patch triggers mostly under 0.6.
        small_norm_ratio: Under the ``"confirmed"`` rule a label whose confirmed norm is at
            most this share of the median norm is flagged whatever its anomaly index, in
            [0, 1]; ``0`` switches this off. Where the labels' natural norms spread widely
            (small ResNets) a trigger a fifth of the median's size can have an index below 2;
            this catches it. Labels that small are always searched again. The default, 0.3,
            comes from the model zoo: no clean model's smallest label went under 0.32 of the
            median, while the missed ResNet backdoors lay at 0.12-0.28.
        precision: Number format of the model's forward and backward passes in the search:
            ``"fp32"`` (the default) or ``"bf16"`` (PyTorch models only: the model runs under
            bfloat16 autocast while the trigger, its optimiser and the loss stay in float32).
            bf16 pays off on CPUs with AVX512-BF16 or AMX units (1.1-2x measured, most on
            convolution-heavy models); ``docs/speed.md`` gives the measured speed and the
            verdicts next to fp32's.
    """

    steps: int = 1000
    mini_batches: int | None = 31
    batch_size: int = 32
    learning_rate: float = 0.1
    init_cost: float = 1e-3
    norm: float | int = 1
    attack_success_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 2.0
    early_stop: bool = True
    early_stop_threshold: float = 1.0
    early_stop_patience: int = 25
    anomaly_threshold: float = 2.0
    seed: int = 0
    label_batch: int | None = None
    memory_budget_mb: float = 2048.0
    progress: bool = field(default=True, compare=False)
    verdict: str = "confirmed"
    confirm_seeds: int = 2
    confirm_margin: float = 0.5
    max_norm_ratio: float = 0.7
    small_norm_ratio: float = 0.3
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _normalise_norm(self.norm))
        object.__setattr__(self, "precision", _check_choice("precision", self.precision,
                                                            PRECISIONS))
        object.__setattr__(self, "verdict", _check_choice("verdict", self.verdict, RULES))
        for name, (low, high) in INT_RANGES.items():
            if name in ("mini_batches", "label_batch") and getattr(self, name) is None:
                continue
            object.__setattr__(self, name, _check_int(name, getattr(self, name), low, high))
        for name, (low, high, low_open) in FLOAT_RANGES.items():
            object.__setattr__(self, name,
                               _check_range(name, getattr(self, name), low, high, low_open))
        for name in ("early_stop", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False (got "
                                 f"{_shown(getattr(self, name))})")

    @classmethod
    def art_defaults(cls, **overrides: Any) -> ScanConfig:
        """Return the defaults of ART's ``KerasNeuralCleanse`` (norm 2, multiplier 1.5, ...).

        One step is one pass over the clean data, and the verdict is the single run's (the
        ``"paper"`` rule), as in ART.
        """
        base = dict(norm=2, cost_multiplier=1.5, early_stop_threshold=0.99,
                    early_stop_patience=10, mini_batches=None, verdict="paper")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def fast(cls, **overrides: Any) -> ScanConfig:
        """Return the ``fast`` preset: the paper's search with fewer images per step.

        Each step sees 8 mini-batches (256 images) instead of 31, and a label stops after 10
        steps without improvement instead of 25; everything else is the paper's. On the
        benchmark models (``benchmarks/paper_detection.py``, README) it needs 3.5-9.5x fewer
        images and gave the paper preset's verdict on both MNIST models in every run, but on
        the GTSRB models borderline labels crossed the threshold differently (on the clean model's
        CPU run it flagged labels 12 and 10 where the paper preset flagged 12), so use it only
        as a quick first pass and confirm its flags with the paper's settings (the default) or
        with restarts.
        """
        base: dict[str, Any] = dict(FAST_PRESET)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ScanConfig:
        """Return a named preset: ``"paper"`` (the default), ``"fast"`` or ``"art"``."""
        makers = {"paper": cls, "fast": cls.fast, "art": cls.art_defaults}
        key = str(name).strip().lower()
        if key not in makers:
            raise InputError(f"unknown preset {name!r}; choose from {', '.join(makers)}")
        return makers[key](**overrides)

    def replace(self, **changes: Any) -> ScanConfig:
        """Return a copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"unknown scan option(s): {', '.join(sorted(unknown))}; "
                             f"valid options are {', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all settings, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    def search_key(self) -> dict[str, Any]:
        """The settings that shape each label's search, as resume fingerprints record them.

        ``progress`` and the verdict settings do not change a label's trigger and are left
        out, and so are the :data:`LATER_SETTINGS` at their earlier behaviour.
        """
        return {k: v for k, v in self.to_dict().items()
                if k != "progress" and k not in VERDICT_SETTINGS
                and not (k in LATER_SETTINGS and LATER_SETTINGS[k] == v)}

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-friendly values (``inf`` as the string ``"inf"``)."""
        out = dataclasses.asdict(self)
        out["norm"] = "inf" if math.isinf(self.norm) else int(self.norm)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanConfig:
        """Build a config from :meth:`to_dict` output (unknown keys are an error)."""
        return cls().replace(**data)


def _shown(value: Any, limit: int = 60) -> str:
    """A short, one-line ``repr`` of a user's value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # e.g. a list holding an integer too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` (any case, surrounding blanks ignored) if it is one of ``choices``."""
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))} "
                         f"(got {_shown(value)})")
    return str(key)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an ``int`` in ``[low, high]``, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}] (got {_shown(value)})")
    return int(value)


def _check_range(name: str, value: Any, low: float, high: float, low_open: bool) -> float:
    """Return ``value`` as a finite ``float`` in the range, or raise naming ``name``."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if ok:  # compared before float(): an enormous int must not overflow the conversion
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InputError(f"{name} must be a number in {bracket}{_bound(low)}, {_bound(high)}] "
                         f"(got {_shown(value)})")
    return float(value)


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
