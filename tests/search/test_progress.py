"""The live progress display: the active labels' table, its cap, and that it changes no result."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
from rich.console import Console

from neuralcleanse import ScanConfig
from neuralcleanse.backends import wrap_model
from neuralcleanse.search import reverse
from neuralcleanse.search.confirm import search_confirmations
from neuralcleanse.search.progress import LabelRows, ScanProgress
from torch_models import digits

torch.set_num_threads(1)

#: A table row: label, step, cost, norm, best, ASR.
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+%)\s*$")


def terminal() -> Console:
    return Console(record=True, force_terminal=True, width=120)


def table_rows(text: str) -> dict[int, tuple[str, ...]]:
    """The table rows in ``text`` by label (the display is drawn more than once)."""
    return {int(m.group(1)): m.groups()[1:]
            for m in map(ROW.match, text.splitlines()) if m is not None}


def rows(labels, steps, cost, norm, best, asr) -> LabelRows:
    return LabelRows(labels=np.asarray(labels), steps=np.asarray(steps),
                     cost=np.asarray(cost, dtype=float), norm=np.asarray(norm, dtype=float),
                     best_norm=np.asarray(best, dtype=float), asr=np.asarray(asr, dtype=float))


def shown(state: LabelRows, n_labels: int, done: int, **options) -> str:
    console = terminal()
    with ScanProgress(n_labels, console=console, **options) as progress:
        progress.update(done=done, active=len(state.labels), step=int(state.steps.max()),
                        rows=state)
    return console.export_text()


def test_table_shows_each_active_labels_step_cost_norms_and_asr():
    state = rows(labels=[4, 7, 9], steps=[12, 30, 3], cost=[0.004, 1.6e-5, 0.0],
                 norm=[25.5, 61.25, 140.0], best=[23.5, 58.75, np.inf], asr=[0.995, 1.0, 0.5])
    text = shown(state, n_labels=10, done=2)
    assert table_rows(text) == {
        4: ("12", "0.004", "25.5", "23.5", "99.5%"),
        7: ("30", "1.6e-05", "61.2", "58.8", "100.0%"),
        9: ("3", "0", "140.0", "–", "50.0%"),  # no trigger has reached the threshold yet
    }
    # smallest best norm first, labels without a trigger last
    order = [int(m.group(1)) for m in map(ROW.match, text.splitlines()) if m][:3]
    assert order == [4, 7, 9]
    assert "2/10" in text and "3 active" in text and "step 30" in text
    assert "2 done · 5 waiting" in text
    assert "more active" not in text


def test_small_norms_keep_three_decimals_and_unknown_norms_show_a_dash():
    state = rows(labels=[0, 1], steps=[5, 5], cost=[0.0, 0.0], norm=[0.4321, np.nan],
                 best=[0.3456, np.inf], asr=[1.0, 0.0])
    assert table_rows(shown(state, n_labels=2, done=0)) == {
        0: ("5", "0", "0.432", "0.346", "100.0%"),
        1: ("5", "0", "–", "–", "0.0%"),
    }


def test_table_is_capped_to_the_smallest_best_norms_then_counts_the_rest():
    rng = np.random.default_rng(3)
    labels = np.arange(43)
    best = rng.permutation(43).astype(float) + 10.0
    best[labels % 4 == 0] = np.inf  # 11 labels without a trigger yet
    norm = rng.uniform(10, 200, 43)
    state = rows(labels, np.full(43, 8), np.full(43, 1e-3), norm, best, np.full(43, 0.99))
    text = shown(state, n_labels=50, done=7)
    found = table_rows(text)
    with_trigger = labels[np.isfinite(best)]
    smallest = with_trigger[np.argsort(best[with_trigger])][:12]
    assert set(found) == set(smallest.tolist())
    assert "+31 more active · 7 done" in text
    # a cap larger than the labels without a trigger: those follow, by their last norm
    text = shown(state, n_labels=43, done=0, max_rows=40)
    found = table_rows(text)
    without = labels[~np.isfinite(best)]
    assert set(found) == set(with_trigger.tolist()) | set(without[np.argsort(norm[without])][:8])
    assert all(found[t][3] == "–" for t in without if t in found)
    assert "+3 more active · 0 done" in text
    assert "waiting" not in text


def test_nothing_is_drawn_when_progress_is_off_or_not_a_terminal():
    state = rows([1], [1], [0.0], [10.0], [np.inf], [0.2])
    for console, enabled in ((terminal(), False),
                             (Console(record=True, force_terminal=False, width=120), True)):
        with ScanProgress(5, enabled=enabled, console=console) as progress:
            assert not progress.shown
            progress.update(done=0, active=1, step=1, rows=state)
            progress.update(done=1, active=0, step=1)  # the caller without rows
        assert console.export_text() == ""


def test_update_without_rows_shows_the_bar_only():
    console = terminal()
    with ScanProgress(5, console=console) as progress:
        assert progress.shown
        progress.update(done=1, active=2, step=4)
    text = console.export_text()
    assert "1/5" in text and "2 active" in text and "step 4" in text
    assert table_rows(text) == {}


# -- a real search ------------------------------------------------------------------------------

LABELS = [0, 3, 5]
CONFIG = ScanConfig(steps=8, mini_batches=2, batch_size=16, patience=2, early_stop_patience=2,
                    label_batch=2, seed=5)


@pytest.fixture(scope="module")
def setup():
    x, y = digits(upsample=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    clf = wrap_model(model, output="logits", clip_values=(0.0, 1.0), input_shape=x.shape[1:])
    return clf, x[:96], y[:96]


@pytest.fixture
def recorded(monkeypatch):
    """Every display of the search draws on one recording terminal console."""
    console = terminal()
    monkeypatch.setattr(reverse, "ScanProgress", functools.partial(ScanProgress, console=console))
    return console


def test_a_real_search_draws_the_active_labels(setup, recorded):
    clf, x, y = setup
    results = reverse.reverse_engineer(clf, x, y, CONFIG, labels=LABELS)
    text = recorded.export_text()
    found = table_rows(text)
    assert found and set(found) <= set(LABELS)
    assert "reversing triggers (seed 5)" in text
    assert "1 waiting" in text  # two labels stacked, the third waits
    assert [r.label for r in results] == LABELS


def test_the_display_changes_no_number(setup, recorded):
    clf, x, y = setup
    on = reverse.reverse_engineer(clf, x, y, CONFIG, labels=LABELS)
    off = reverse.reverse_engineer(clf, x, y, CONFIG.replace(progress=False), labels=LABELS)
    assert table_rows(recorded.export_text())  # the first search was displayed
    for a, b in zip(on, off):
        assert a.norm == b.norm and a.steps == b.steps and a.final_cost == b.final_cost
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.pattern, b.pattern)
        assert a.attack_success_rate == b.attack_success_rate


def test_confirmation_runs_use_the_same_display(setup, recorded):
    clf, x, y = setup
    search_confirmations(clf, x, y, CONFIG.replace(steps=3), labels=[3])
    text = recorded.export_text()
    assert "reversing triggers (seed 6)" in text and "reversing triggers (seed 7)" in text
    assert set(table_rows(text)) == {3}
