"""Property-based tests of the data checks: every input either works faithfully or is refused.

Random shapes, dtypes (unsigned and signed integers, float16/32/64, bool, object, complex),
label encodings and values (NaN, infinities, out of range) go into ``as_images``,
``as_label_vector``, ``infer_clip_values``, ``balanced_subsample``, ``to_layout`` and
``load_data``. Each call either returns a result that is checked against an independent
expectation (shape, dtype, values preserved), or raises an :class:`InputError` whose message
is one line; any other exception fails the test.

The examples are derandomized (the same ones on every run, so CI is reproducible) and nothing
is written to a Hypothesis database. Set ``NEURALCLEANSE_HYPOTHESIS_RANDOM=1`` to explore new
random examples locally.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from neuralcleanse.core.checks import as_images, as_label_vector, infer_clip_values
from neuralcleanse.core.errors import InputError, LoadError
from neuralcleanse.io.data_files import CHANNEL_COUNTS, balanced_subsample, load_data, to_layout
from neuralcleanse.io.npz_files import IMAGE_KEYS, LABEL_KEYS

#: Numerical warnings (overflow in a cast, invalid values) mean sloppy handling: fail on them.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

#: Shared settings: fixed examples, no deadline (the first call of a test imports numpy paths),
#: no example database left in the working tree.
PROPERTY = settings(deadline=None, database=None,
                    derandomize=os.environ.get("NEURALCLEANSE_HYPOTHESIS_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])

#: How many examples each property runs (4,640 in all).
EXAMPLES = {"as_images": 800, "labels_structured": 1200, "labels_any": 600,
            "infer_clip_values": 600, "balanced_subsample": 600, "to_layout": 600,
            "load_npz": 200, "load_folder": 40}

NUMERIC = [np.uint8, np.uint16, np.uint64, np.int8, np.int32, np.int64, np.float16, np.float32,
           np.float64, np.bool_]
ODD = [np.complex64, np.complex128]


def refused(exc: InputError) -> None:
    """A refusal must be an InputError with a one-line message."""
    event("refused")
    text = str(exc)
    assert text and "\n" not in text, repr(text)


def shapes(min_dims: int = 0, max_dims: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    return st.one_of(hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=4),
                     hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0,
                                      max_side=3))


@st.composite
def any_arrays(draw: Any, shape: st.SearchStrategy[tuple[int, ...]] | None = None
               ) -> np.ndarray:
    """Arrays of any dtype we test, including object and complex, with any values."""
    size = draw(shape if shape is not None else shapes())
    kind = draw(st.sampled_from(["numeric"] * 6 + ["object", "complex"]))
    if kind == "object":
        values = draw(st.lists(st.one_of(st.integers(-5, 300), st.floats(), st.text(max_size=2),
                                         st.none()),
                               min_size=int(np.prod(size)), max_size=int(np.prod(size))))
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(size)
    dtype = draw(st.sampled_from(ODD if kind == "complex" else NUMERIC))
    return draw(hnp.arrays(dtype, size))


# -- as_images -------------------------------------------------------------------------------
def image_batch_is_valid(arr: np.ndarray) -> bool:
    """Independent statement of what as_images accepts."""
    if arr.dtype.kind not in "biuf" or arr.ndim not in (3, 4) or 0 in arr.shape:
        return False
    if arr.dtype.kind == "f":
        wide = arr.astype(np.float64)
        return bool(np.all(np.isfinite(wide)) and np.all(np.abs(wide) <= np.finfo(np.float32).max))
    return True


@settings(PROPERTY, max_examples=EXAMPLES["as_images"])
@given(any_arrays())
def test_as_images_keeps_values_or_refuses(arr: np.ndarray) -> None:
    try:
        out = as_images(arr)
    except InputError as exc:
        refused(exc)
        assert not image_batch_is_valid(arr)
        return
    assert image_batch_is_valid(arr)
    assert out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr.astype(np.float32))
    assert out is not arr and not np.shares_memory(out, arr)


# -- as_label_vector -------------------------------------------------------------------------
def expected_labels(y: np.ndarray, n: int, nb_classes: int | None) -> list[int] | None:
    """Independent reading of a label encoding (None: it must be refused)."""
    if y.dtype.kind not in "biuf":
        return None
    if y.ndim == 2 and y.shape[1] > 1:
        if y.shape[0] != n or (nb_classes is not None and y.shape[1] != nb_classes):
            return None
        labels = []
        for row in y.tolist():
            if any(v not in (0, 1) for v in row) or sum(v == 1 for v in row) != 1:
                return None
            labels.append([v == 1 for v in row].index(True))
        return labels
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n or y.dtype.kind == "b":
        return None
    labels = []
    for v in y.tolist():
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))
                                     or v != int(v)):
            return None
        value = int(v)
        if value < 0 or (nb_classes is not None and value >= nb_classes) or value > 2**62:
            return None
        labels.append(value)
    return labels


@st.composite
def label_encodings(draw: Any) -> tuple[np.ndarray, int, int | None]:
    """Label encodings as users give them, well-formed or slightly off."""
    nb = draw(st.one_of(st.none(), st.integers(2, 12)))
    n = draw(st.integers(0, 12))
    classes = nb or 10
    values = draw(st.lists(st.integers(-2, classes + 1), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["vector", "column", "one_hot", "soft", "float", "bool"]))
    dtype = draw(st.sampled_from(NUMERIC[:-1]))
    if kind in ("vector", "column"):
        y = np.asarray(values).astype(dtype) if values else np.zeros(0, dtype)
        y = y[:, None] if kind == "column" else y
    elif kind in ("one_hot", "soft"):
        width = draw(st.sampled_from([classes, classes, classes - 1, classes + 1, 1]))
        y = np.zeros((n, width), dtype=dtype)
        for i, v in enumerate(values):
            y[i, v % width] = 1
        if kind == "soft" and n:
            y = y.astype(np.float32)
            row, col = draw(st.integers(0, n - 1)), draw(st.integers(0, width - 1))
            y[row, col] = draw(st.sampled_from([0.5, -1.0, 2.0, np.nan, np.inf, 0.0, 1.0]))
    elif kind == "float":
        y = np.asarray(values, dtype=np.float64)
        if n:
            y[draw(st.integers(0, n - 1))] += draw(st.sampled_from([0.0, 0.5, np.nan, -np.inf]))
    else:
        y = np.asarray(values, dtype=np.int64) % 2 == 1
    given_n = draw(st.sampled_from([n, n, n, n + 1, max(n - 1, 0)]))
    return y, given_n, nb


def check_labels(y: np.ndarray, n: int, nb: int | None) -> None:
    expected = expected_labels(np.asarray(y), n, nb)
    try:
        out = as_label_vector(y, n, nb)
    except InputError as exc:
        refused(exc)
        assert expected is None, f"refused a valid encoding: {exc}"
        return
    assert expected is not None, f"accepted {y!r} as {out!r}"
    assert out.dtype == np.int64 and out.shape == (n,)
    assert out.tolist() == expected


@settings(PROPERTY, max_examples=EXAMPLES["labels_structured"])
@given(label_encodings())
def test_label_encodings_are_read_exactly_or_refused(case: tuple) -> None:
    check_labels(*case)


@settings(PROPERTY, max_examples=EXAMPLES["labels_any"])
@given(any_arrays(shapes(0, 3)), st.integers(0, 4), st.one_of(st.none(), st.integers(2, 5)))
def test_any_array_as_labels_is_read_exactly_or_refused(y: np.ndarray, n: int,
                                                        nb: int | None) -> None:
    check_labels(y, len(y) if y.ndim and n % 2 else n, nb)


# -- infer_clip_values -------------------------------------------------------------------------
@settings(PROPERTY, max_examples=EXAMPLES["infer_clip_values"])
@given(any_arrays(shapes(0, 3)))
def test_inferred_clip_values_cover_the_data(arr: np.ndarray) -> None:
    try:
        lo, hi = infer_clip_values(arr)
    except InputError as exc:
        refused(exc)
        assert (arr.dtype.kind not in "biuf" or arr.size == 0
                or not np.all(np.isfinite(arr.astype(np.float64)))
                or (arr.min() == arr.max() and not 0 <= float(arr.min()) <= 255))
        return
    values = arr.astype(np.float64)
    assert lo < hi and values.min() >= lo and values.max() <= hi
    if values.min() >= 0 and values.max() <= 1:
        assert (lo, hi) == (0.0, 1.0)
    elif values.min() >= 0 and values.max() <= 255:
        assert (lo, hi) == (0.0, 255.0)
    else:
        assert (lo, hi) == (float(arr.min()), float(arr.max()))


# -- balanced_subsample ------------------------------------------------------------------------
@settings(PROPERTY, max_examples=EXAMPLES["balanced_subsample"])
@given(st.one_of(any_arrays(shapes(0, 2)),
                 hnp.arrays(st.sampled_from(NUMERIC), st.integers(0, 40),
                            elements=st.integers(0, 1)),
                 hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(0, 4))),
       st.one_of(st.integers(1, 50), st.integers(1, 50), st.integers(-2, 0), st.booleans(),
                 st.floats(0, 10)),
       st.one_of(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(-3, -1),
                 st.booleans()))
def test_balanced_subsample_is_balanced_or_refuses(y: np.ndarray, n: Any, seed: Any) -> None:
    try:
        picked = balanced_subsample(y, n, seed)
    except InputError as exc:
        refused(exc)
        assert (not isinstance(n, int) or isinstance(n, bool) or n < 1
                or not isinstance(seed, int) or isinstance(seed, bool) or seed < 0
                or y.ndim != 1 or y.dtype.kind not in "biuf"
                or not np.all(np.isfinite(y.astype(np.float64))))
        return
    assert picked.ndim == 1 and len(picked) == min(n, len(y))
    assert np.all(np.diff(picked) > 0) and (len(picked) == 0 or 0 <= picked.min() <= picked.max()
                                            < len(y))
    np.testing.assert_array_equal(picked, balanced_subsample(y, n, seed))
    available = {c: int(np.sum(y == c)) for c in np.unique(y)}
    got = {c: int(np.sum(y[picked] == c)) for c in available}
    top = max(got.values(), default=0)
    for c, count in got.items():  # a class short of the most picked one gave all it has
        assert count == available[c] or count >= top - 1


# -- to_layout ---------------------------------------------------------------------------------
@settings(PROPERTY, max_examples=EXAMPLES["to_layout"])
@given(any_arrays(st.one_of(hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=5),
                            hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=3))),
       st.booleans(), st.sampled_from(["auto", "nhwc", "nchw", "NCHW", "chw", "", 4, None]))
def test_to_layout_only_moves_the_channel_axis(x: np.ndarray, channels_first: bool,
                                               layout: Any) -> None:
    try:
        out, note = to_layout(x, channels_first, layout)
    except InputError as exc:
        refused(exc)
        assert isinstance(exc, LoadError)
        name = layout.lower() if isinstance(layout, str) else None
        if name in ("auto", "nhwc", "nchw"):
            first, last = x.shape[1] in CHANNEL_COUNTS, x.shape[-1] in CHANNEL_COUNTS
            assert x.ndim == 4 and name != "auto" and first != last
        return
    assert isinstance(layout, str) and layout.lower() in ("auto", "nhwc", "nchw")
    moves = {None: (0, 1, 2, 3), "NHWC data moved to NCHW": (0, 3, 1, 2),
             "NCHW data moved to NHWC": (0, 2, 3, 1)}
    assert note in moves and (x.ndim == 4 or note is None)
    expected = x if note is None else x.transpose(moves[note])
    assert out.dtype == x.dtype and out.shape == expected.shape
    if x.dtype == object:  # the very same objects, moved
        assert all(a is b for a, b in zip(out.ravel(), expected.ravel()))
    else:
        assert np.array_equal(out, expected, equal_nan=x.dtype.kind in "fc")
    if note is not None:
        assert (note == "NHWC data moved to NCHW") == channels_first


# -- load_data: .npz ----------------------------------------------------------------------------
KEYS = ["x", "y", "images", "labels", "x_val", "y_val", "x_test", "data", "targets", "other"]


@st.composite
def paired_arrays(draw: Any) -> dict[str, np.ndarray]:
    """Images and labels of the same length under a known pair of keys (plus, maybe, more)."""
    n = draw(st.integers(1, 4))
    pair = draw(st.sampled_from([("x", "y"), ("images", "labels"), ("x_val", "y_val"),
                                 ("x_test", "targets"), ("data", "y")]))
    out = {pair[0]: draw(any_arrays(st.tuples(st.just(n), st.integers(1, 3), st.integers(1, 3)))),
           pair[1]: draw(any_arrays(st.sampled_from([(n,), (n, 3), (n + 1,)])))}
    if draw(st.booleans()):
        out["other"] = draw(any_arrays(shapes(0, 2)))
    return out


def chosen_keys(keys: list[str], x_key: str | None, y_key: str | None
                ) -> tuple[str, str] | None:
    """The documented key rule: given keys, else the first known name (x_val pairs y_val)."""
    xk = x_key if x_key is not None else next((k for k in IMAGE_KEYS if k in keys), None)
    if xk not in keys:
        return None
    if y_key is None and xk.startswith(("x_", "X_")) and "y_" + xk[2:] in keys:
        y_key = "y_" + xk[2:]
    yk = y_key if y_key is not None else next((k for k in LABEL_KEYS if k in keys), None)
    return (xk, yk) if yk in keys else None


@settings(PROPERTY, max_examples=EXAMPLES["load_npz"])
@given(st.one_of(st.dictionaries(st.sampled_from(KEYS), any_arrays(shapes(0, 4)), max_size=3),
                 paired_arrays()),
       st.one_of(st.none(), st.none(), st.sampled_from(KEYS)),
       st.one_of(st.none(), st.none(), st.sampled_from(KEYS)))
def test_load_npz_returns_the_stored_arrays_or_refuses(arrays: dict[str, np.ndarray],
                                                       x_key: str | None,
                                                       y_key: str | None) -> None:
    chosen = chosen_keys(list(arrays), x_key, y_key)
    readable = chosen is not None and all(
        arrays[k].dtype != object and arrays[k].ndim > 0 for k in chosen) and len(
        arrays[chosen[0]]) == len(arrays[chosen[1]])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npz"
        np.savez(path, **arrays)
        try:
            loaded = load_data(path, x_key=x_key, y_key=y_key)
        except InputError as exc:
            refused(exc)
            assert isinstance(exc, LoadError)
            assert not readable, f"refused a readable archive: {exc}"
            return
    assert readable and chosen == (loaded.info["x_key"], loaded.info["y_key"])
    for key, got in zip(chosen, (loaded.x, loaded.y)):
        stored = arrays[key]
        assert got.dtype == stored.dtype and got.shape == stored.shape
        assert np.array_equal(got, stored, equal_nan=stored.dtype.kind in "fc")
    assert loaded.info["stored_shape"] == list(arrays[chosen[0]].shape)


# -- load_data: image folders ---------------------------------------------------------------------
@settings(PROPERTY, max_examples=EXAMPLES["load_folder"])
@given(st.booleans(), st.lists(st.tuples(st.integers(0, 3), st.sampled_from([8, 16]),
                                         st.integers(0, 2**16 - 1)), min_size=1, max_size=6),
       st.integers(1, 4), st.integers(1, 4))
def test_image_folders_read_labels_and_values_faithfully(named: bool, images: list,
                                                         h: int, w: int) -> None:
    names = ["apple", "Banana", "cherry", "date"] if named else ["0", "1", "2", "10"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        from PIL import Image

        for i, (cls, depth, seed) in enumerate(images):
            rng = np.random.default_rng(seed)
            dtype = np.uint8 if depth == 8 else np.uint16
            pixels = rng.integers(0, np.iinfo(dtype).max, (h, w), endpoint=True, dtype=dtype)
            (root / names[cls]).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(root / names[cls] / f"{i:02d}.png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the numbering note, if any
            loaded = load_data(root)
    used = sorted({cls for cls, _, _ in images})
    if named:
        order = sorted(names[c] for c in used)
        assert loaded.info["class_names"] == order
        label_of = {n: order.index(n) for n in order}
    else:
        label_of = {names[c]: int(names[c]) for c in used}
    assert loaded.info["label_of"] == label_of
    # files are read class folder by class folder (sorted names), then by file name
    files = sorted(((names[c], i, depth, seed) for i, (c, depth, seed) in enumerate(images)))
    assert loaded.y.tolist() == [label_of[name] for name, _, _, _ in files]
    assert loaded.x.shape == (len(images), h, w, 1)
    for got, (_, _, depth, seed) in zip(loaded.x, files):
        dtype = np.uint8 if depth == 8 else np.uint16
        pixels = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, (h, w),
                                                      endpoint=True, dtype=dtype)
        expected = pixels if depth == 8 else pixels / 257.0
        np.testing.assert_allclose(got[..., 0], expected, rtol=1e-6)
    all_8bit = all(depth == 8 for _, depth, _ in images)
    assert loaded.x.dtype == (np.uint8 if all_8bit else np.float32)

