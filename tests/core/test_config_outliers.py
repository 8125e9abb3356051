import math
import warnings

import numpy as np
import pytest

from neuralcleanse import ScanConfig, anomaly_indices


def test_defaults_are_the_papers():
    cfg = ScanConfig()
    assert (cfg.norm, cfg.steps, cfg.mini_batches, cfg.batch_size) == (1, 1000, 31, 32)
    assert (cfg.learning_rate, cfg.init_cost, cfg.attack_success_threshold) == (0.1, 1e-3, 0.99)
    assert (cfg.patience, cfg.cost_multiplier) == (5, 2.0)
    assert cfg.early_stop_threshold == 1.0
    assert (cfg.early_stop_patience, cfg.anomaly_threshold) == (25, 2)


def test_art_defaults():
    cfg = ScanConfig.art_defaults()
    assert (cfg.norm, cfg.cost_multiplier, cfg.early_stop_threshold) == (2, 1.5, 0.99)
    assert cfg.early_stop_patience == 10 and cfg.mini_batches is None


@pytest.mark.parametrize("spelling,value",
                         [(1, 1), ("l2", 2), (np.inf, math.inf), ("inf", math.inf)])
def test_norm_spellings(spelling, value):
    assert ScanConfig(norm=spelling).norm == value


@pytest.mark.parametrize("field,value", [
    ("steps", 0), ("steps", 1.5), ("mini_batches", 0), ("batch_size", -1), ("learning_rate", 0),
    ("init_cost", float("nan")), ("norm", 3), ("attack_success_threshold", 1.5),
    ("attack_success_threshold", 0), ("patience", 0), ("cost_multiplier", 1.0),
    ("early_stop", "yes"), ("early_stop_threshold", 0), ("early_stop_patience", 0),
    ("anomaly_threshold", -1), ("seed", -3), ("label_batch", 0), ("memory_budget_mb", 0),
])
def test_bad_values_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        ScanConfig(**{field: value})


def test_precision_is_fp32_by_default_and_checked():
    assert ScanConfig().precision == "fp32"
    assert ScanConfig(precision=" BF16 ").precision == "bf16"
    assert ScanConfig.from_dict(ScanConfig(precision="bf16").to_dict()).precision == "bf16"
    for bad in ("fp16", "bfloat16", 16, None):
        with pytest.raises(ValueError, match="precision must be one of 'fp32', 'bf16'"):
            ScanConfig(precision=bad)


def test_search_key_holds_what_shapes_a_label_search_only():
    base = ScanConfig(steps=7).search_key()
    # verdict settings and the progress display do not change a label's trigger
    assert ScanConfig(steps=7, verdict="paper", confirm_seeds=4, anomaly_threshold=3,
                      max_norm_ratio=0.5, progress=False).search_key() == base
    # fp32 searches as versions before the setting did: such keys (and resumes) stay valid
    assert "precision" not in base and "progress" not in base and "verdict" not in base
    assert ScanConfig(steps=7, precision="bf16").search_key() == {**base, "precision": "bf16"}
    assert ScanConfig(steps=8).search_key() != base


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown scan option.*stepz"):
        ScanConfig().replace(stepz=3)


def test_config_dict_round_trip():
    cfg = ScanConfig(norm="inf", steps=7, label_batch=3)
    assert ScanConfig.from_dict(cfg.to_dict()) == cfg


def test_mad_arithmetic_by_hand():
    norms = np.array([10.0, 12.0, 11.0, 13.0, 2.0, 12.0, 11.0])
    rep = anomaly_indices(norms)
    median = 11.0
    mad = 1.4826 * np.median(np.abs(norms - median))  # deviations 1,1,0,2,9,1,0 -> 1
    assert rep.median == median and rep.mad == pytest.approx(mad)
    np.testing.assert_allclose(rep.anomaly_index, (median - norms) / mad)
    assert rep.flagged == [4]


def test_only_small_norms_are_flagged_and_sorted_by_norm():
    norms = np.array([50.0, 1.0, 52.0, 49.0, 51.0, 500.0, 3.0, 50.5])
    rep = anomaly_indices(norms)
    assert rep.anomaly_index[5] < -2  # a huge trigger is not suspicious
    assert rep.flagged == [1, 6]


def test_mad_zero_flags_nothing_with_a_warning():
    with pytest.warns(RuntimeWarning, match="median absolute deviation"):
        rep = anomaly_indices(np.array([5.0, 5.0, 5.0, 1.0]))
    assert rep.flagged == [] and np.all(rep.anomaly_index == 0)


def test_ties_and_threshold_is_strict():
    norms = np.array([4.0, 4.0, 6.0, 6.0])  # median 5, MAD 1.4826
    rep = anomaly_indices(norms, threshold=1 / 1.4826)
    np.testing.assert_allclose(rep.anomaly_index, [1 / 1.4826] * 2 + [-1 / 1.4826] * 2)
    assert rep.flagged == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert anomaly_indices(norms, threshold=0.5).flagged == [0, 1]


@pytest.mark.parametrize("bad", [np.array([]), np.array([[1.0, 2.0]]), np.array([1.0, np.nan])])
def test_bad_norms(bad):
    with pytest.raises(ValueError):
        anomaly_indices(bad)


def test_presets_by_name():
    paper, fast, art = (ScanConfig.preset(n) for n in ("paper", "FAST", " art "))
    assert paper == ScanConfig()
    assert art == ScanConfig.art_defaults()
    assert (fast.mini_batches, fast.early_stop_patience) == (8, 10)
    # the fast preset changes only what it says and keeps everything else of the paper's
    differing = {k for k, v in fast.to_dict().items() if paper.to_dict()[k] != v}
    assert differing == {"mini_batches", "early_stop_patience"}
    assert ScanConfig.fast(seed=3, mini_batches=4).mini_batches == 4
    with pytest.raises(ValueError, match="unknown preset 'quick'"):
        ScanConfig.preset("quick")
