"""Unlearning in rounds: the update budget split, the flagged labels' triggers searched again.

``rounds`` > 1 spends the same optimiser updates as one round; before each later round the
trigger search runs again, with the scan's settings, on the model as the earlier rounds left
it, and that round stamps the new triggers beside the scan's. The default stays one round (the
zoo's numbers, docs/zoo.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from test_mitigation_defaults import (
    TARGET,
    count_training_passes,
    hand_made,
    hand_made_data,
    trigger,
)

import neuralcleanse as nc
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.frontends.api import prepare
from neuralcleanse.frontends.cli.cmd_mitigate import mitigation_options
from neuralcleanse.frontends.cli.messages import CliError
from neuralcleanse.frontends.cli.options import Method
from neuralcleanse.mitigation import unlearn, unlearning
from neuralcleanse.mitigation.unlearning import DEFAULT_ROUNDS, UnlearningReport

#: A short search: the hand-made model's triggers are found in a few dozen steps.
SEARCH = ScanConfig(steps=60, batch_size=16, mini_batches=2, progress=False)


class SearchSpy:
    """Records each search between rounds: the model's outputs then, the settings, the data.

    With ``run=False`` the search is not run: the planted trigger stands in for what it finds.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, run: bool = True) -> None:
        self.calls: list[dict[str, Any]] = []
        self._search = unlearning.reverse_engineer
        self._run = run
        monkeypatch.setattr(unlearning, "reverse_engineer", self)

    def __call__(self, clf: Any, x: np.ndarray, y: np.ndarray, config: ScanConfig,
                 labels: Any = None) -> Any:
        self.calls.append({"outputs": clf.predict(x[:16]).copy(), "config": config,
                           "labels": list(labels), "n": len(x)})
        if not self._run:
            return [trigger(label) for label in labels]
        return self._search(clf, x, y, config, labels=labels)


def wrapped(n: int = 60) -> tuple[Any, np.ndarray, np.ndarray, list[int]]:
    model = hand_made()
    calls = count_training_passes(model)
    x, y = hand_made_data(n, 0)
    clf, x, y = prepare(model, x, y, output="logits", clip_values=(0.0, 1.0))
    return clf, x, y, calls


def test_two_rounds_search_the_partly_repaired_model_and_keep_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clf, x, y, calls = wrapped()
    spy = SearchSpy(monkeypatch)
    given = clf.predict(x[:16]).copy()
    x_test, y_test = hand_made_data(20, 1)
    report = unlearn(clf, x, y, [trigger()], rounds=2, search_config=SEARCH, epochs=1,
                     min_updates=40, learning_rate=1e-2, x_test=x_test, y_test=y_test, seed=3)
    # one search, between the rounds: on the fitting images, for the flagged label, with the
    # given settings but round 1's seed and no progress bar
    assert len(spy.calls) == 1
    call = spy.calls[0]
    assert call["labels"] == [TARGET] and call["n"] == len(x)
    assert call["config"].steps == SEARCH.steps and call["config"].mini_batches == 2
    assert call["config"].seed == 3 + 1 and call["config"].progress is False
    # ...on the model as round 1 left it, not as it was given
    assert not np.allclose(call["outputs"], given)
    first, second = report.rounds
    assert first.norms == {} and first.success_found == {} and first.success_after == {}
    assert set(second.norms) == set(second.success_found) == set(second.success_after) == {1}
    assert second.norms[TARGET] > 0
    assert 0.0 <= second.success_found[TARGET] <= 1.0
    assert 0.0 <= second.success_after[TARGET] <= 1.0
    # the budget of one round (40 images, batch 32: 2 updates an epoch), split in two
    assert report.epochs == first.epochs + second.epochs == 20
    assert (first.epochs, second.epochs) == (10, 10)
    assert report.updates == first.updates + second.updates == 40 == calls[0]
    assert report.options["rounds"] == 2
    assert UnlearningReport.from_dict(report.to_dict()) == report


@pytest.mark.parametrize("rounds, min_updates, expected", [
    (2, 50, [13, 12]),  # 25 epochs: the first round gets the odd one
    (3, 6, [1, 1, 1]),
    (3, 2, [1]),  # never more rounds than epochs: one epoch, one round, no search
])
def test_rounds_split_the_epochs_of_one_round(monkeypatch: pytest.MonkeyPatch, rounds: int,
                                              min_updates: int, expected: list[int]) -> None:
    clf, x, y, calls = wrapped(50)
    spy = SearchSpy(monkeypatch)
    x_test, y_test = hand_made_data(20, 1)
    one = unlearn(clf.copy(), x[:40], y[:40], [trigger()], epochs=1, min_updates=min_updates,
                  learning_rate=1e-3, x_test=x_test, y_test=y_test)
    assert spy.calls == [] and len(one.rounds) == 1
    calls[0] = 0
    report = unlearn(clf, x[:40], y[:40], [trigger()], epochs=1, min_updates=min_updates,
                     rounds=rounds, search_config=SEARCH, learning_rate=1e-3, x_test=x_test,
                     y_test=y_test)
    assert [r.epochs for r in report.rounds] == expected
    assert report.epochs == one.epochs == sum(expected)
    assert report.updates == one.updates == calls[0] == sum(expected) * math.ceil(40 / 32)
    assert len(spy.calls) == len(expected) - 1


def test_one_round_is_the_default_and_searches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_ROUNDS == 1
    spy = SearchSpy(monkeypatch)
    x, y = hand_made_data(40, 0)
    result = nc.mitigate(hand_made(), x, y, [trigger()], "unlearning", output="logits",
                         clip_values=(0.0, 1.0), min_updates=10)
    assert spy.calls == []
    assert len(result.report.rounds) == 1 and result.report.rounds[0].norms == {}
    assert "rounds" not in result.summary()


def test_mitigate_searches_again_with_the_scans_settings(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    x, y = hand_made_data(60, 0)
    scan = nc.scan(hand_made(), x, y, config=SEARCH.replace(steps=40, seed=5),
                   output="logits", clip_values=(0.0, 1.0))
    spy = SearchSpy(monkeypatch)
    result = nc.mitigate(hand_made(), x, y, scan, "unlearning", labels=[TARGET],
                         output="logits", clip_values=(0.0, 1.0), rounds=2, min_updates=20,
                         seed=7)
    (call,) = spy.calls
    used = call["config"]
    assert used.steps == 40 and used.batch_size == 16 and used.mini_batches == 2
    assert used.seed == 7 + 1
    # the same through the scan's JSON
    spy.calls.clear()
    nc.mitigate(hand_made(), x, y, scan.to_json(), "unlearning", labels=[TARGET],
                output="logits", clip_values=(0.0, 1.0), rounds=2, min_updates=20, seed=7)
    assert spy.calls[0]["config"].steps == 40
    # a list of triggers has no scan settings: the defaults, with a batch the data can fill
    spy = SearchSpy(monkeypatch, run=False)
    nc.mitigate(hand_made(), x, y, [trigger()], "unlearning", output="logits",
                clip_values=(0.0, 1.0), rounds=2, min_updates=20, test_fraction=0.5)
    used = spy.calls[0]["config"]
    assert used.steps == ScanConfig().steps and used.batch_size == min(30, ScanConfig().batch_size)
    text = result.summary()
    assert "in 2 rounds" in text and f"trigger searched again before round 2: label {TARGET}" \
        in text


@pytest.mark.parametrize("options, error, message", [
    ({"rounds": 0}, InputError, r"rounds must be an integer in \[1, 20\] \(got 0\)"),
    ({"rounds": 21}, InputError, r"rounds must be an integer in \[1, 20\]"),
    ({"rounds": 2.0}, InputError, "rounds must be an integer"),
    ({"rounds": True}, InputError, "rounds must be an integer"),
])
def test_bad_rounds_are_refused(options: dict, error: type, message: str) -> None:
    x, y = hand_made_data(40, 0)
    with pytest.raises(error, match=message):
        nc.mitigate(hand_made(), x, y, [trigger()], "unlearning", output="logits",
                    clip_values=(0.0, 1.0), **options)


def test_search_config_must_be_a_scan_config() -> None:
    clf, x, y, _ = wrapped(40)
    with pytest.raises(TypeError, match="search_config must be a ScanConfig .got str"):
        unlearn(clf, x, y, [trigger()], rounds=2, search_config="fast")  # type: ignore[arg-type]


def test_cli_rounds_flag() -> None:
    assert mitigation_options(Method.unlearning, None, {"rounds": 2}) == {"rounds": 2}
    with pytest.raises(CliError, match=r"--rounds must be an integer in \[1, 20\]"):
        mitigation_options(Method.unlearning, None, {"rounds": 0})
    with pytest.raises(CliError, match="--rounds applies to --method unlearning, not pruning"):
        mitigation_options(Method.pruning, None, {"rounds": 2})


@pytest.mark.parametrize("rounds", [
    [{"epochs": 1, "updates": 2, "norms": [1.0]}],
    [{"epochs": "one", "updates": 2}],
    {"epochs": 1},
    [{"updates": 2}],
])
def test_malformed_rounds_in_a_result_file_are_refused(rounds: Any) -> None:
    x, y = hand_made_data(40, 0)
    result = nc.mitigate(hand_made(), x, y, [trigger()], "unlearning", output="logits",
                         clip_values=(0.0, 1.0), min_updates=4)
    data = result.to_dict()
    assert nc.MitigationResult.from_dict(data).report == result.report
    data["report"]["rounds"] = rounds
    with pytest.raises(InputError, match="a field has the wrong type|field 'epochs' is missing"):
        nc.MitigationResult.from_dict(data)


def test_one_round_does_not_read_the_scans_search_settings(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    x, y = hand_made_data(60, 0)
    scan = nc.scan(hand_made(), x, y, config=SEARCH.replace(steps=20), output="logits",
                   clip_values=(0.0, 1.0))
    scan.config["steps"] = 0  # a report edited by hand: a setting out of range
    spy = SearchSpy(monkeypatch, run=False)
    result = nc.mitigate(hand_made(), x, y, scan, "unlearning", labels=[TARGET],
                         output="logits", clip_values=(0.0, 1.0), min_updates=10)
    assert spy.calls == [] and len(result.report.rounds) == 1
    with pytest.raises(InputError, match="steps"):
        nc.mitigate(hand_made(), x, y, scan, "unlearning", labels=[TARGET], output="logits",
                    clip_values=(0.0, 1.0), min_updates=10, rounds=2)
