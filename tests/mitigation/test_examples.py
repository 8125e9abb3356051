"""Stamped examples (neuralcleanse.mitigation.examples) on a tiny backdoored digits CNN.

The model is trained here on scikit-learn's 8x8 digits with a planted trigger (a 2x2 white
square at the bottom-right sends any digit to label 3); the examples use that known trigger, so
the tests are about the examples, not the search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import neuralcleanse as nc
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.frontends.api import prepare
from neuralcleanse.mitigation.examples import (
    example_labels,
    examples_after,
    stamped_example,
    stamped_examples,
)
from torch_models import digits, poisoned_training_set, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET, SUSPICIOUS = 3, 5


def trigger(label: int) -> LabelResult:
    """The planted 2x2 white square as label ``label``'s trigger."""
    mask = np.zeros((8, 8), np.float32)
    mask[6:, 6:] = 1.0
    return LabelResult(label=label, mask=mask, pattern=np.ones((1, 8, 8), np.float32),
                       norm=4.0, attack_success_rate=1.0, converged=True, steps=0, seconds=0.0,
                       final_cost=0.0)


def scan_result(flagged: list[int], suspicious: list[int]) -> ScanResult:
    labels = [trigger(t) for t in range(10)]
    for t, r in enumerate(labels):
        r.norm = 10.0 + t  # spread, so that the outlier test has a scale
    result = ScanResult.from_labels(labels, nb_classes=10, anomaly_threshold=2.0, config={})
    result.flagged_labels, result.suspicious_labels = flagged, suspicious
    return result




@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """A small CNN whose 2x2 corner square sends digits to label 3, and clean digits."""
    x, y = digits(1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    xp, yp = poisoned_training_set(x[:900], y[:900], TARGET, 2, 0.1, seed=0)
    net = train(xp, yp, seed=0, epochs=8)
    return {"model": net, "x": x[900:1200], "y": y[900:1200]}


def labels_of(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.asarray(x, np.float32))).argmax(1).numpy()


def cli_examples(clf: Any, images: np.ndarray, targets: np.ndarray,
                 result: ScanResult) -> list[dict[str, Any]]:
    """What ``neuralcleanse scan`` computed before the code moved into the library, written out
    (flagged labels only, no ``kind``)."""
    examples = []
    for label in result.flagged_labels:
        others = np.flatnonzero(targets != label)
        clean = images[others[0]]
        trig = result.label(label)
        stamped = (1 - trig.mask) * clean + trig.mask * trig.pattern
        before, after = labels_of(clf.model, np.stack([clean, stamped]))
        examples.append({"label": label, "source_label": int(targets[others[0]]),
                         "clean_image": clean.tolist(), "image": stamped.tolist(),
                         "clean_prediction": int(before), "prediction": int(after)})
    return examples


def test_one_example_per_flagged_then_suspicious_label(model: dict) -> None:
    clf, images, targets = prepare(model["model"], model["x"], model["y"])
    result = scan_result([TARGET], [SUSPICIOUS])
    examples = stamped_examples(clf, images, targets, result)
    assert [(e["label"], e["kind"]) for e in examples] == [(TARGET, "flagged"),
                                                           (SUSPICIOUS, "suspicious")]
    assert example_labels(result) == [(TARGET, "flagged"), (SUSPICIOUS, "suspicious")]
    # the flagged label's example is what the command line made before, field for field
    reference = cli_examples(clf, images, targets, result)[0]
    flagged = {k: v for k, v in examples[0].items() if k != "kind"}
    assert flagged.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(flagged[key], value, atol=1e-6, err_msg=key)
    assert examples[0]["prediction"] == TARGET != examples[0]["source_label"]  # the backdoor
    # the suspicious label's: the first image of another class than 5
    first_other = int(np.flatnonzero(targets != SUSPICIOUS)[0])
    np.testing.assert_array_equal(examples[1]["clean_image"], images[first_other])
    assert examples[1]["source_label"] == int(targets[first_other])


def test_chosen_labels_and_labels_without_another_class(model: dict) -> None:
    clf, images, targets = prepare(model["model"], model["x"], model["y"])
    result = scan_result([TARGET], [])
    chosen = stamped_examples(clf, images, targets, result, labels=[7, TARGET])
    assert [(e["label"], e["kind"]) for e in chosen] == [(7, "chosen"), (TARGET, "flagged")]
    with pytest.raises(InputError, match=r"labels \[12\] were not scanned"):
        stamped_examples(clf, images, targets, result, labels=[12])
    only_threes = np.full(len(targets), TARGET)
    assert stamped_example(clf, images, only_threes, trigger(TARGET)) is None
    assert stamped_examples(clf, images, only_threes, result) == []
    assert stamped_examples(clf, images, targets, scan_result([], [])) == []


@pytest.mark.parametrize("method", ["unlearning", "filtering"])
def test_answers_after_a_mitigation(model: dict, method: str) -> None:
    clf, images, targets = prepare(model["model"], model["x"], model["y"])
    result = scan_result([TARGET], [SUSPICIOUS])
    examples = stamped_examples(clf, images, targets, result)
    options = {"epochs": 10, "learning_rate": 1e-3} if method == "unlearning" else {}
    mitigated = nc.mitigate(model["model"], model["x"], model["y"], result, method, seed=0,
                            **options)
    broken = [{"label": 1, "image": "no"}, {"label": 2, "clean_image": [[0.0]], "image": [[0.0]]},
              {**examples[0], "image": np.full((1, 8, 8), np.nan).tolist()}, "not a dict"]
    after = examples_after(mitigated, [*examples, *broken])  # the broken ones are left out
    assert [(a["label"], a["method"], a["mitigated"]) for a in after] == \
        [(TARGET, method, True), (SUSPICIOUS, method, False)]
    pairs = np.asarray([[e["clean_image"], e["image"]] for e in examples], np.float32)
    if method == "unlearning":
        expected = labels_of(mitigated.model, pairs.reshape(-1, 1, 8, 8)).reshape(-1, 2)
        for entry, (clean, stamped) in zip(after, expected):
            assert (entry["refused"], entry["clean_refused"]) == (False, False)
            assert (entry["clean_prediction"], entry["prediction"]) == (clean, stamped)
        assert after[0]["prediction"] != TARGET  # the repaired model ignores the trigger
    else:
        decisions = mitigated.input_filter.decisions(pairs.reshape(-1, 1, 8, 8))
        for i, entry in enumerate(after):
            for key, j in (("clean", 2 * i), ("", 2 * i + 1)):
                refused = bool(decisions.refused[j])
                prefix = f"{key}_" if key else ""
                assert entry[f"{prefix}refused"] is refused
                assert entry[f"{prefix}prediction"] == (None if refused else
                                                        int(decisions.predictions[j]))
        assert after[0]["refused"] is True  # the filter refuses the trigger it was fitted on
        assert after[0]["clean_refused"] is False and after[0]["clean_prediction"] is not None


def test_a_result_read_back_from_json_cannot_answer(model: dict) -> None:
    clf, images, targets = prepare(model["model"], model["x"], model["y"])
    result = scan_result([TARGET], [])
    mitigated = nc.mitigate(model["model"], model["x"], model["y"], result, "filtering")
    again = type(mitigated).from_json(mitigated.to_json())
    with pytest.raises(InputError, match="holds no model"):
        examples_after(again, stamped_examples(clf, images, targets, result))
