"""Reading inputs without labels (``require_labels=False``): what deployment data looks like.

Scan and mitigation data keep needing labels; inputs to filter may lack them. Every archive is
a few tiny arrays written here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuralcleanse.core.errors import LoadError
from neuralcleanse.io.data_files import load_data
from neuralcleanse.io.npz_files import read_npz

X = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4) / 80
Y = np.array([0, 1, 2, 1, 0])


def archive(tmp_path: Path, name: str, *args: np.ndarray, **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, *args, **arrays)
    return path


def test_an_archive_without_labels_gives_none(tmp_path: Path) -> None:
    path = archive(tmp_path, "inputs.npz", images=X)
    loaded = load_data(path, require_labels=False)
    np.testing.assert_array_equal(loaded.x, X)
    assert loaded.y is None
    assert loaded.info["x_key"] == "images" and loaded.info["y_key"] is None
    assert loaded.info["stored_shape"] == [5, 4, 4]


def test_labels_that_are_there_are_read_and_checked(tmp_path: Path) -> None:
    loaded = load_data(archive(tmp_path, "val.npz", x_test=X, y_test=Y), require_labels=False)
    np.testing.assert_array_equal(loaded.y, Y)
    assert loaded.info["y_key"] == "y_test"
    given = load_data(archive(tmp_path, "given.npz", x=X, classes=Y), y_key="classes",
                      require_labels=False)
    np.testing.assert_array_equal(given.y, Y)
    with pytest.raises(LoadError, match=r"'x' has 5 images but 'y' has 4 labels"):
        load_data(archive(tmp_path, "short.npz", x=X, y=Y[:4]), require_labels=False)


def test_a_label_key_given_must_exist(tmp_path: Path) -> None:
    path = archive(tmp_path, "inputs.npz", x=X)
    with pytest.raises(LoadError, match=r"no key 'labels' \(y_key=\); its keys are: x"):
        load_data(path, y_key="labels", require_labels=False)


def test_one_array_is_the_images_only_when_no_labels_are_needed(tmp_path: Path) -> None:
    path = archive(tmp_path, "saved.npz", X)  # numpy names it 'arr_0'
    x, y, info = read_npz(path, x_key=None, y_key=None, require_labels=False)
    np.testing.assert_array_equal(x, X)
    assert y is None and info["x_key"] == "arr_0"
    with pytest.raises(LoadError, match=r"which key of saved.npz holds the images .*x_key="):
        read_npz(path, x_key=None, y_key=None)
    two = archive(tmp_path, "two.npz", X, X)  # two unnamed arrays: which one?
    with pytest.raises(LoadError, match=r"holds the images \(keys: arr_0, arr_1\)"):
        read_npz(two, x_key=None, y_key=None, require_labels=False)


def test_labels_are_still_required_by_default(tmp_path: Path) -> None:
    path = archive(tmp_path, "inputs.npz", images=X)
    with pytest.raises(LoadError, match=r"^cannot tell which key of inputs.npz holds the labels "
                                        r"\(keys: images\); give y_key=$"):
        load_data(path)


def test_unsafe_arrays_are_refused_without_labels_too(tmp_path: Path) -> None:
    objects = archive(tmp_path, "objects.npz", x=np.array([{"a": 1}] * 3, dtype=object))
    with pytest.raises(LoadError, match="Python objects"):
        load_data(objects, require_labels=False)
    single = archive(tmp_path, "single.npz", x=np.float32(1.0))
    with pytest.raises(LoadError, match="holds a single value, not an array of images"):
        load_data(single, require_labels=False)
