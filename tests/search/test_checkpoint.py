"""Checkpointed trigger search: an interrupted search resumed from its last checkpoint ends with
exactly the result of an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralcleanse import ScanConfig
from neuralcleanse.backends import wrap_model
from neuralcleanse.core.errors import InputError
from neuralcleanse.search.reverse import reverse_engineer
from torch_models import digits, train

torch.set_num_threads(1)

LABELS = [0, 3, 5, 7, 9]
CONFIG = ScanConfig(steps=30, mini_batches=2, batch_size=16, patience=2, early_stop_patience=3,
                    label_batch=3, seed=4, progress=False)


@pytest.fixture(scope="module")
def setup():
    x, y = digits(upsample=1)
    model = train(x[:900], y[:900], seed=0, epochs=4)
    clf = wrap_model(model, output="logits", clip_values=(0.0, 1.0), input_shape=x.shape[1:])
    return clf, x[900:1100], y[900:1100]


@pytest.fixture(scope="module")
def reference(setup):
    clf, x, y = setup
    saved = []
    results = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, checkpoint=saved.append,
                               checkpoint_every_s=0)
    return results, len(saved)


def assert_same(a, b):
    assert [r.label for r in a] == [r.label for r in b]
    for ra, rb in zip(a, b):
        assert np.array_equal(ra.mask, rb.mask)
        assert np.array_equal(ra.pattern, rb.pattern)
        assert ra.norm == rb.norm
        assert ra.steps == rb.steps
        assert ra.converged == rb.converged
        assert ra.attack_success_rate == rb.attack_success_rate
        assert ra.final_cost == rb.final_cost


def interrupted_at(clf, x, y, k):
    """Run until the k-th checkpoint, raising KeyboardInterrupt there; return the last state."""
    saved = []

    def checkpoint(state):
        saved.append(state)
        if len(saved) == k:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reverse_engineer(clf, x, y, CONFIG, labels=LABELS, checkpoint=checkpoint,
                         checkpoint_every_s=0)
    return saved[-1]


def test_checkpointing_leaves_the_result_unchanged(setup, reference):
    clf, x, y = setup
    results, n_checkpoints = reference
    plain = reverse_engineer(clf, x, y, CONFIG, labels=LABELS)
    assert_same(plain, results)
    # early stopping happened for some label, and labels waited for a free slot
    assert any(r.steps < CONFIG.steps for r in results)
    assert n_checkpoints > CONFIG.steps


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_resumed_search_equals_the_uninterrupted_one(setup, reference, fraction):
    clf, x, y = setup
    results, n_checkpoints = reference
    k = max(1, int(fraction * (n_checkpoints - 1)))
    state = interrupted_at(clf, x, y, k)
    done_early = []
    resumed = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=state,
                               on_label_done=done_early.append)
    assert_same(resumed, results)
    # labels finished before the interruption are not reported again
    finished_before = {LABELS[int(p)] for p in state["search/done_index"]}
    assert finished_before.isdisjoint(r.label for r in done_early)
    assert finished_before | {r.label for r in done_early} == set(LABELS)


def test_resume_twice_in_a_row(setup, reference):
    clf, x, y = setup
    results, n_checkpoints = reference
    first = interrupted_at(clf, x, y, n_checkpoints // 4)
    saved = []

    def checkpoint(state):
        saved.append(state)
        if len(saved) == n_checkpoints // 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=first,
                         checkpoint=checkpoint, checkpoint_every_s=0)
    resumed = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=saved[-1])
    assert_same(resumed, results)


def test_interrupt_outside_a_checkpoint_saves_the_last_finished_step(setup, reference):
    clf, x, y = setup
    results, _ = reference
    saved = []
    steps = []

    def on_done(_result):
        steps.append(1)
        if len(steps) == 2:  # Ctrl-C in the middle of the bookkeeping of a step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reverse_engineer(clf, x, y, CONFIG, labels=LABELS, checkpoint=saved.append,
                         checkpoint_every_s=3600, on_label_done=on_done)
    assert len(saved) == 1  # only the one written at the interruption
    resumed = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=saved[0])
    assert_same(resumed, results)


def test_state_of_other_labels_is_refused(setup):
    clf, x, y = setup
    state = interrupted_at(clf, x, y, 3)
    with pytest.raises(InputError, match="labels"):
        reverse_engineer(clf, x, y, CONFIG, labels=LABELS[:-1], resume_state=state)
    del state["session/theta"]
    with pytest.raises(InputError, match="theta"):
        reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=state)


@pytest.fixture(scope="module")
def keras_setup():
    pytest.importorskip("tensorflow")
    from estimator_models import backdoored_keras
    from estimator_models import digits as keras_digits

    data = keras_digits()
    clf = wrap_model(backdoored_keras(), output="logits", clip_values=(0.0, 1.0))
    saved = []
    x, y = data["x_val"][:200], data["y_val"][:200]
    results = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, checkpoint=saved.append,
                               checkpoint_every_s=0)
    return clf, x, y, results, len(saved)


@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_tensorflow_resumed_search_equals_the_uninterrupted_one(keras_setup, fraction):
    clf, x, y, results, n_checkpoints = keras_setup
    assert any(r.steps < CONFIG.steps for r in results)
    assert_same(reverse_engineer(clf, x, y, CONFIG, labels=LABELS), results)
    state = interrupted_at(clf, x, y, max(1, int(fraction * n_checkpoints)))
    assert state["session/theta"].dtype == np.float32
    resumed = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=state)
    assert_same(resumed, results)


def test_checkpoint_file_survives_a_torn_write_and_resumes_exactly(setup, reference, tmp_path):
    from neuralcleanse.io.resume import PartialStore

    clf, x, y = setup
    results, n_checkpoints = reference
    store = PartialStore(tmp_path / "partial", "key-1")
    assert store.load_checkpoint() is None
    saved = []
    kept = {}

    def checkpoint(state):
        saved.append(state)
        if len(saved) == n_checkpoints // 3:
            store.save_checkpoint(state)
            kept.update(state)
        elif len(saved) == n_checkpoints // 3 + 1:
            # kill -9 while the next checkpoint is written: a temp file with half of it remains
            store.save_checkpoint(state)
            whole = store.checkpoint_path.read_bytes()
            store.save_checkpoint(kept)
            torn = store.folder / f".{store.CHECKPOINT}.4242.0123abcd.tmp"
            torn.write_bytes(whole[:len(whole) // 2])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reverse_engineer(clf, x, y, CONFIG, labels=LABELS, checkpoint=checkpoint,
                         checkpoint_every_s=0)
    state = store.load_checkpoint()
    assert state is not None and set(state) == set(kept)
    for k, v in kept.items():
        assert np.array_equal(state[k], v) and state[k].dtype == v.dtype, k
    resumed = reverse_engineer(clf, x, y, CONFIG, labels=LABELS, resume_state=state)
    assert_same(resumed, results)

    with pytest.raises(InputError, match="another model"):
        PartialStore(store.folder, "key-2").load_checkpoint()
    store.clear()
    assert not store.folder.exists()


def test_checkpoint_store_leaves_foreign_files_alone(tmp_path):
    from neuralcleanse.io.resume import PartialStore

    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "checkpoint.npz").write_bytes(b"not a checkpoint")
    (folder / "notes.txt").write_text("mine")
    store = PartialStore(folder, "key")
    assert store.load_checkpoint() is None
    with pytest.raises(InputError, match="not written by neuralcleanse"):
        store.save_checkpoint({"a": np.zeros(2)})
    np.savez(folder / "checkpoint.npz", a=np.zeros(3))  # an npz without the store's marker
    assert store.load_checkpoint() is None
    store.clear()
    assert (folder / "checkpoint.npz").exists() and (folder / "notes.txt").exists()


def test_scan_resumes_from_a_state_and_refuses_states_that_do_not_fit(setup, reference):
    import neuralcleanse as nc
    from neuralcleanse.core.errors import InputError

    clf, x, y = setup
    state = interrupted_at(clf, x, y, 4)
    reported = []
    result = nc.scan(clf, x, y, config=CONFIG, labels=LABELS, resume_state=state,
                     on_label_done=reported.append)
    assert_same(result.labels, reference[0])
    labels_reported = [r.label for r in reported]
    assert len(labels_reported) == len(set(labels_reported))  # each at most once
    assert set(labels_reported) <= set(LABELS)
    with pytest.raises(InputError, match="do not fit the labels"):
        nc.scan(clf, x, y, config=CONFIG, labels=[0, 3], resume_state=state)
    with pytest.raises(InputError, match="restarts=1"):
        nc.scan(clf, x, y, config=CONFIG, labels=LABELS, resume_state=state, restarts=2)
