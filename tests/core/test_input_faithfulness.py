"""Inputs that used to give a confident but wrong result are now read faithfully or refused.

Each test builds the input that was misread (label encodings, image folders, layouts, estimator
settings, repeated labels, classes without clean images, models that return NaN, oversized
archives) and checks the one-line error or the faithful reading.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import neuralcleanse as nc
from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.core.checks import as_label_vector
from neuralcleanse.core.errors import InputError, LoadError
from neuralcleanse.core.outliers import MAD_CONSISTENCY
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.frontends.api import prepare
from neuralcleanse.io import npz_files
from neuralcleanse.io.data_files import load_data, to_layout
from neuralcleanse.io.report import render_html
from neuralcleanse.search.restarts import combine_restarts

torch.set_num_threads(1)

QUICK = dict(steps=2, mini_batches=1, progress=False)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text.strip() == text and text
    return text


@pytest.fixture(scope="module")
def digits():
    """An untrained (seeded) small CNN on 16x16 digits: enough to exercise the checks."""
    from neuralcleanse.frontends.demo import load_digits_splits

    data = load_digits_splits(0)
    torch.manual_seed(0)
    model = small_cnn(image_size=16).eval()
    return model, data.x_clean[:200], data.y_clean[:200]


# -- 1. label encodings ----------------------------------------------------------------------
@pytest.mark.parametrize("make_y, message", [
    (lambda y: np.eye(9)[np.minimum(y, 8)], "width 9 but the model has 10 outputs"),
    (lambda y: np.eye(11)[y], "width 11 but the model has 10 outputs"),
    (lambda y: 0.9 * np.eye(10)[y] + 0.01, "not one-hot"),
    (lambda y: np.full((len(y), 10), 0.1), "not one-hot"),
    (lambda y: np.zeros((len(y), 10)), "not one-hot"),
    (lambda y: np.eye(10)[y] * 2, "not one-hot"),
    (lambda y: np.where(np.arange(len(y)) == 4, 10, y)[:, None], "labels must be < 10"),
    (lambda y: y == 3, "boolean"),
    (lambda y: y - 1, "labels must be >= 0"),
    (lambda y: y + 0.25, "whole-number"),
    (lambda y: y.astype(np.complex64), "dtype complex64"),
    (lambda y: y.astype(str), "dtype <U"),
    (lambda y: np.stack([y, y], axis=1)[..., None], "shape"),
])
def test_label_encodings_that_disagree_with_the_model_are_refused(digits, make_y, message):
    model, x, y = digits
    with pytest.raises(InputError, match=message) as excinfo:
        prepare(model, x, make_y(y))
    one_line_error(excinfo)


def test_label_encodings_read_faithfully():
    y = np.array([3, 0, 9, 9, 1])
    for encoded in (np.eye(10)[y], np.eye(10, dtype=bool)[y], np.eye(10, dtype=np.uint8)[y],
                    y[:, None], y.astype(np.float32), y.astype(np.uint8)):
        out = as_label_vector(encoded, len(y), 10)
        assert out.dtype == np.int64 and out.tolist() == y.tolist()
    # without a model to compare with, any width of strict one-hot rows is read
    assert as_label_vector(np.eye(4)[[1, 3]], 2).tolist() == [1, 3]
    with pytest.raises(InputError, match="not one-hot"):
        as_label_vector(np.array([[0.5, 0.5], [1.0, 0.0]]), 2)


def test_a_model_with_one_output_or_a_wrong_nb_classes_is_refused(digits):
    from neuralcleanse.backends.torch.classifier import TorchClassifier

    model, x, y = digits
    single = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1))
    with pytest.raises(InputError, match="at least 2 classes"):
        prepare(single, x, y)
    wrapped = TorchClassifier(model, (1, 16, 16), nb_classes=12)
    with pytest.raises(InputError, match="returned 10 scores per image but nb_classes is 12"):
        prepare(wrapped, x, y)


# -- 2. image folders --------------------------------------------------------------------------
def _save(folder: Path, name: str, image: Image.Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name)


def _grey(value: int, size: int = 4) -> Image.Image:
    return Image.fromarray(np.full((size, size), value, dtype=np.uint8))


def test_numbered_folders_keep_their_numbers(tmp_path):
    for label in (1, 2, 10):
        _save(tmp_path / str(label), "a.png", _grey(label))
    (tmp_path / ".cache").mkdir()  # hidden folders are not classes
    with pytest.warns(UserWarning, match="sorted order"):
        loaded = load_data(tmp_path)
    # each image's pixel value is its folder's number: the label must be that number
    assert loaded.y.tolist() == loaded.x[:, 0, 0, 0].astype(int).tolist()
    assert sorted(loaded.y.tolist()) == [1, 2, 10]
    assert loaded.info["label_of"] == {"1": 1, "2": 2, "10": 10}
    assert "class_names" not in loaded.info
    assert "label numbers" in loaded.info["label_rule"]


def test_numbered_folders_in_sorted_order_do_not_warn(tmp_path):
    for label in range(3):
        _save(tmp_path / f"0{label}", "a.png", _grey(label))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_data(tmp_path)
    assert loaded.y.tolist() == [0, 1, 2]


def test_mixed_or_clashing_folder_names_are_refused(tmp_path):
    for name in ("0", "1", "cat"):
        _save(tmp_path / "mixed" / name, "a.png", _grey(1))
    with pytest.raises(LoadError, match="mix label numbers") as excinfo:
        load_data(tmp_path / "mixed")
    one_line_error(excinfo)
    for name in ("1", "01"):
        _save(tmp_path / "clash" / name, "a.png", _grey(1))
    with pytest.raises(LoadError, match="both name label 1"):
        load_data(tmp_path / "clash")


def test_named_folders_record_the_mapping_and_empty_classes_keep_their_label(tmp_path):
    values = {"bird": 10, "cat": 20, "dog": 30}
    for name, value in values.items():
        _save(tmp_path / name, "a.png", _grey(value))
    (tmp_path / "ant").mkdir()  # empty, sorts first: must not shift the others
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "²").mkdir()  # a Unicode digit is a name, not a number
    with pytest.warns(UserWarning, match="hold no images"):
        loaded = load_data(tmp_path)
    names = sorted([*values, "ant", "²"])
    assert loaded.info["class_names"] == names
    assert loaded.info["label_of"] == {n: names.index(n) for n in names}
    assert loaded.info["empty_classes"] == ["ant", "²"]
    assert loaded.info["ignored_files"] == 1
    for image, label in zip(loaded.x, loaded.y):
        assert values[names[label]] == image[0, 0, 0]


def test_nested_or_loose_images_are_refused(tmp_path):
    _save(tmp_path / "nested" / "cat" / "more", "a.png", _grey(1))
    _save(tmp_path / "nested" / "dog", "b.png", _grey(2))
    with pytest.raises(LoadError, match="nested inside the class folder 'cat'") as excinfo:
        load_data(tmp_path / "nested")
    one_line_error(excinfo)
    _save(tmp_path / "loose" / "cat", "a.png", _grey(1))
    _save(tmp_path / "loose", "stray.png", _grey(1))
    with pytest.raises(LoadError, match="outside the class folders"):
        load_data(tmp_path / "loose")


def test_16_bit_images_keep_their_values(tmp_path):
    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    _save(tmp_path / "0", "deep.png", Image.fromarray(deep))
    eight = np.arange(16, dtype=np.uint8).reshape(4, 4) * 17
    _save(tmp_path / "1", "eight.png", Image.fromarray(eight))
    loaded = load_data(tmp_path)
    assert loaded.x.dtype == np.float32 and loaded.x.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(loaded.x[0, ..., 0], deep / 257.0, rtol=1e-6)
    np.testing.assert_array_equal(loaded.x[1, ..., 0], eight)  # 8-bit values as stored
    assert loaded.info["bit_depths"] == [8, 16] and "257" in loaded.info["value_scale"]
    assert loaded.x.max() == 255.0  # the 16-bit maximum is not clipped to a lower value


def test_32_bit_images_are_kept_alone_and_refused_when_mixed(tmp_path):
    values = np.linspace(-3.5, 1000.25, 16, dtype=np.float32).reshape(4, 4)
    _save(tmp_path / "float" / "0", "a.tif", Image.fromarray(values))
    loaded = load_data(tmp_path / "float")
    np.testing.assert_array_equal(loaded.x[0, ..., 0], values)
    assert loaded.info["value_scale"] == "32-bit values kept as stored"
    _save(tmp_path / "mixed" / "0", "a.tif", Image.fromarray(values))
    _save(tmp_path / "mixed" / "1", "b.png", _grey(3))
    with pytest.raises(LoadError, match="mixes 32-bit images"):
        load_data(tmp_path / "mixed")


def test_palette_and_transparent_images_are_read_through_their_colours(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0, 0, 0] * 254)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    _save(tmp_path / "a", "p.png", palette)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[1, 1, 3] = 0
    _save(tmp_path / "b", "rgba.png", Image.fromarray(rgba))
    with pytest.warns(UserWarning, match="transparent pixels"):
        loaded = load_data(tmp_path)
    assert loaded.x.shape == (2, 4, 4, 3) and loaded.x.dtype == np.uint8
    assert tuple(loaded.x[0, 1, 1]) == (200, 100, 50) and tuple(loaded.x[0, 0, 0]) == (0, 0, 0)
    assert tuple(loaded.x[1, 1, 1]) == (10, 20, 30)
    assert loaded.info["transparent_images"] == 2


# -- 3. layouts ------------------------------------------------------------------------------
def test_a_layout_the_data_contradicts_is_refused(digits):
    model, x, y = digits
    with pytest.raises(InputError, match="channels_first=False contradicts") as excinfo:
        prepare(model, x, y, channels_first=False)
    assert "transpose them to (N, H, W, C)" in one_line_error(excinfo)
    with pytest.raises(InputError, match="channels_first=True contradicts") as excinfo:
        prepare(model, x.transpose(0, 2, 3, 1), y)
    assert "transpose them to (N, C, H, W)" in one_line_error(excinfo)
    # the model's first convolution tells the channels where the shape alone cannot
    torch.manual_seed(0)
    rgb = small_cnn(in_channels=3, image_size=4).eval()
    tiny = np.random.default_rng(0).random((40, 4, 4, 3), dtype=np.float32)
    with pytest.raises(InputError, match="first convolution takes 3 channels"):
        prepare(rgb, tiny, np.arange(40) % 10)
    clf, images, _ = prepare(rgb, tiny.transpose(0, 3, 1, 2), np.arange(40) % 10)
    assert images.shape == (40, 3, 4, 4) and clf.channels_first


def test_to_layout_refuses_a_layout_the_shape_contradicts():
    nchw = np.zeros((2, 3, 8, 8), dtype=np.float32)
    with pytest.raises(LoadError, match="'nhwc' contradicts"):
        to_layout(nchw, channels_first=True, data_layout="nhwc")
    with pytest.raises(LoadError, match="'nchw' contradicts"):
        to_layout(nchw.transpose(0, 2, 3, 1), channels_first=False, data_layout="nchw")
    moved, note = to_layout(nchw, channels_first=False, data_layout="auto")
    assert moved.shape == (2, 8, 8, 3) and note == "NCHW data moved to NHWC"
    with pytest.raises(LoadError, match="data_layout must be"):
        to_layout(nchw, channels_first=True, data_layout="chw")


# -- 4. estimator settings -----------------------------------------------------------------------
def test_pytorch_estimator_refuses_an_nb_classes_the_model_contradicts(digits):
    model = digits[0]
    with pytest.raises(InputError, match="nb_classes=5 but the model returns 10") as excinfo:
        nc.PyTorchNeuralCleanse(model, input_shape=(1, 16, 16), nb_classes=5)
    one_line_error(excinfo)
    estimator = nc.PyTorchNeuralCleanse(model, input_shape=(1, 16, 16), nb_classes=10,
                                        use_logits=True)
    assert estimator.nb_classes == 10
    with pytest.raises(InputError, match="nb_classes=3"):
        estimator.set_params(nb_classes=3)
    assert estimator.nb_classes == 10 and estimator.get_params()["nb_classes"] == 10
    with pytest.raises(InputError, match="could not run on inputs of shape"):
        nc.PyTorchNeuralCleanse(model, input_shape=(1, 9, 9), nb_classes=10)


# -- 5. repeated labels ----------------------------------------------------------------------
@pytest.mark.parametrize("labels, message", [
    ([3, 3], r"lists \[3\] more than once"),
    (np.array([1, 2, 1]), r"lists \[1\] more than once"),
    ([2.5], "whole label numbers"),
    ([True], "whole label numbers"),
    (3, "sequence of label numbers"),
    ("3", "sequence of label numbers"),
    ([], "non-empty subset"),
])
def test_bad_label_lists_are_refused_before_any_search(digits, labels, message):
    model, x, y = digits
    with pytest.raises(InputError, match=message) as excinfo:
        nc.scan(model, x, y, labels=labels, **QUICK)
    one_line_error(excinfo)


# -- 6. classes with no clean images -----------------------------------------------------------
def _label(label: int, norm: float) -> LabelResult:
    return LabelResult(label=label, mask=np.full((2, 2), norm / 4), pattern=np.zeros((1, 2, 2)),
                       norm=norm, attack_success_rate=1.0, converged=True, steps=1, seconds=0.1,
                       final_cost=0.0)


def test_labels_without_data_are_left_out_of_the_median_and_mad():
    norms = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0, 4: 9.0, 5: 2.0, 6: 60.0}
    counts = [30, 30, 30, 30, 30, 0, 0]  # labels 5 and 6 have no clean images
    result = ScanResult.from_labels([_label(t, n) for t, n in norms.items()], nb_classes=7,
                                    anomaly_threshold=2.0, config={},
                                    data_info={"class_counts": counts})
    with_data = np.array([norms[t] for t in range(5)])
    median = float(np.median(with_data))
    mad = MAD_CONSISTENCY * float(np.median(np.abs(with_data - median)))
    assert result.labels_without_data == [5, 6]
    assert result.median_norm == pytest.approx(median) and result.mad == pytest.approx(mad)
    for t, n in norms.items():
        assert result.label(t).anomaly_index == pytest.approx((median - n) / mad)
    assert result.flagged_labels == [5]  # a label without data can still be flagged
    # kept in the JSON report, and absent in an older report reads as empty
    data = json.loads(result.to_json())
    assert data["labels_without_data"] == [5, 6]
    assert ScanResult.from_dict(data).labels_without_data == [5, 6]
    del data["labels_without_data"]
    assert ScanResult.from_dict(data).labels_without_data == []
    summary = result.summary().splitlines()
    assert len(summary) == 2 and "[5, 6] had no clean images" in summary[1]
    html = render_html(result)
    assert 'id="labels-without-data"' in html and "labels 5, 6" in html
    plain = dataclasses.replace(result, labels_without_data=[])
    assert 'id="labels-without-data"' not in render_html(plain)


def test_restarts_leave_labels_without_data_out_of_each_run():
    runs = [[_label(t, n + s) for t, n in enumerate([10.0, 12.0, 11.0, 3.0, 40.0])]
            for s in (0.0, 0.5)]
    _, details = combine_restarts(runs, [0, 1], 2.0, labels_without_data=[4])
    for run, index in zip(runs, details["anomaly_index"]):
        ref = np.array([r.norm for r in run[:4]])
        median = np.median(ref)
        mad = MAD_CONSISTENCY * np.median(np.abs(ref - median))
        np.testing.assert_allclose(index, [(median - r.norm) / mad for r in run], atol=1e-5)


def test_a_scan_with_a_class_missing_from_the_data(digits):
    model, x, y = digits
    keep = y != 3
    result = nc.scan(model, x[keep], y[keep], labels=[0, 1, 2, 3], **QUICK)
    assert result.labels_without_data == [3]
    assert result.data_info["class_counts"][3] == 0
    assert result.median_norm == pytest.approx(np.median(result.norms[:3]))
    assert np.isfinite(result.label(3).anomaly_index)
    restarted = nc.scan(model, x[keep], y[keep], labels=[0, 1, 2, 3], restarts=2, **QUICK)
    assert restarted.labels_without_data == [3]
    assert restarted.median_norm == pytest.approx(np.median(restarted.norms[:3]))


# -- 7. models that return NaN or Inf ---------------------------------------------------------
class _Shift(torch.nn.Module):
    """Adds a constant to the outputs."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


class _NanAbove(torch.nn.Module):
    """A digits classifier that returns NaN for any image with a pixel above ``limit``."""

    def __init__(self, base: torch.nn.Module, limit: float) -> None:
        super().__init__()
        self.base, self.limit = base, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        bright = (x.flatten(1).amax(dim=1) > self.limit)[:, None]
        return torch.where(bright, torch.full_like(out, float("nan")), out)


def test_a_model_returning_nan_on_clean_images_is_refused_at_once(digits):
    model, x, y = digits
    with pytest.raises(InputError, match="NaN/Inf for clean images") as excinfo:
        prepare(_NanAbove(model, 0.5).eval(), x, y)
    one_line_error(excinfo)
    with pytest.raises(InputError, match="NaN/Inf for clean images"):
        prepare(torch.nn.Sequential(model, _Shift(float("inf"))).eval(), x, y)


def test_a_model_returning_nan_on_stamped_images_stops_at_the_first_step(digits):
    model, x, y = digits
    dim = x * 0.5  # clean images stay below 0.6; stamped ones exceed it
    nan_model = _NanAbove(model, 0.6).eval()
    with pytest.raises(InputError, match=r"stamped with the trigger of label\(s\) \[0, 1\] "
                                         r"\(step 1 of the search\)") as excinfo:
        nc.scan(nan_model, dim, y, labels=[0, 1], clip_values=(0.0, 1.0), steps=50,
                mini_batches=1, label_batch=2, progress=False)
    one_line_error(excinfo)


# -- 8. oversized or unsafe archives ----------------------------------------------------------
def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_npz_declaring_huge_arrays_is_refused_before_reading(tmp_path):
    # a header that declares 10^12 float32 values over a few bytes of data
    header = _npy_bytes(np.zeros(3, dtype=np.float32))
    lie = header.replace(b"(3,)", b"(1000000000000,)")
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", lie)
        zf.writestr("y.npy", _npy_bytes(np.zeros(3, dtype=np.int64)))
    with pytest.raises(LoadError, match=r"declares arrays of [0-9.e+]+ GiB, more than") as excinfo:
        load_data(path)
    one_line_error(excinfo)


def test_a_compressed_npz_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((64, 32, 32), dtype=np.float32), y=np.zeros(64))
    assert path.stat().st_size < 10_000  # a small file, 256 KiB once read
    monkeypatch.setattr(npz_files, "MAX_NPZ_BYTES", 100_000)
    with pytest.raises(LoadError, match="GiB neuralcleanse reads from an .npz"):
        load_data(path)
    monkeypatch.setattr(npz_files, "_available_memory", lambda: 50_000)
    monkeypatch.setattr(npz_files, "MAX_NPZ_BYTES", 2**40)
    with pytest.raises(LoadError, match="of memory is available"):
        load_data(path)


def test_unsafe_or_mislabelled_npz_files_are_refused(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.zeros((2, 4, 4)), y=np.array([1, "a"], dtype=object))
    with pytest.raises(LoadError, match="holds Python objects"):
        load_data(objects)
    single = tmp_path / "single.npz"
    single.write_bytes(_npy_bytes(np.zeros((2, 4, 4))))
    with pytest.raises(LoadError, match="is not an .npz archive"):
        load_data(single)
    scalar = tmp_path / "scalar.npz"
    np.savez(scalar, x=np.float32(1.0), y=np.zeros(2))
    with pytest.raises(LoadError, match="holds a single value"):
        load_data(scalar)


def test_clip_values_and_preprocessing_beyond_float32_are_input_errors() -> None:
    from neuralcleanse.backends.differentiable import split_preprocessing
    from neuralcleanse.core.checks import check_clip_values
    from neuralcleanse.core.errors import InputError

    with pytest.raises(InputError, match="clip_values max must be a finite number within"):
        check_clip_values((0.0, 1e39))
    with pytest.raises(InputError, match="clip_values min must be a number"):
        check_clip_values((10**400, 1.0))
    assert check_clip_values((0, 255)) == (0.0, 255.0)
    with pytest.raises(InputError, match="preprocessing values must be numbers"):
        split_preprocessing((10**400, 1.0), (1, 8, 8))
